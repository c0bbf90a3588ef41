"""`cegraph nights`: the nightly runs and the workflows' night locks (leases); clears a
stale lock by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, Home
from cegraph.cli.refining import fail, open_home, read_home


def nights(clear_stale: Annotated[str | None, typer.Option(
               "--clear-stale", metavar="WORKFLOW",
               help="end the lease of WORKFLOW's running night, whose holder is dead; the "
                    "next night resumes it")] = None,
           limit: Annotated[int, typer.Option(help="latest nights shown")] = 20,
           home: Home = Path(SETTINGS.home)) -> None:
    """The latest nights (decision, why, spend) and the night locks (holder, heartbeat,
    lease; a stale one's holder died)."""
    from cegraph.storage.nights import NightBusy, NightStore

    # listing only reads (a snapshot while a night writes); clearing a lease writes
    with (open_home if clear_stale is not None else read_home)(home) as wh:
        store = NightStore(wh)
        if clear_stale is not None:
            try:
                lock = store.clear_stale(clear_stale)
            except (LookupError, NightBusy) as exc:
                fail(str(exc))
            render.console.print(f"{clear_stale}: the lease of {lock.night_id} (held by "
                                 f"{lock.holder}) has ended; the next night resumes it")
        rows = wh.rows("SELECT night_id, workflow, status, decision, step, calls, reason, "
                       "started_at FROM night_runs ORDER BY started_at DESC LIMIT ?", [limit])
        locks = store.locks()
    render.grid(["night", "workflow", "status", "decision", "step", "calls", "reason",
                 "started_at"], [list(r) for r in rows], title="nights")
    render.grid(["workflow", "night", "holder", "step", "heartbeat_at", "lease_expires_at",
                 "state"],
                [[lk.workflow, lk.night_id, lk.holder, lk.step, lk.heartbeat_at,
                  lk.lease_expires_at, "stale" if lk.stale else "held"] for lk in locks],
                title="locks")
