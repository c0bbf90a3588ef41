"""The nightly refinement's rows: one `night_runs` row per night (also the workflow's lock)
and one `night_steps` row per completed step (what a crashed night resumes from).

Two nights of the same workflow never interleave: `acquire` takes the workflow's lock in one
transaction, refusing (`NightBusy`) while another live process or flow run holds it. A
night whose holder died (killed, crashed) is taken over and resumed: same night id, same
budget, its completed steps read back instead of re-run.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from storage.warehouse import Warehouse, _now

#: Lock tokens of the nights running in this process (a holder with this pid is alive only
#: while its token is here; a crashed in-process night leaves its row behind).
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


class NightBusy(RuntimeError):
    """Another night of the same workflow is running; the message says which."""


@dataclass(frozen=True)
class Night:
    night_id: str
    workflow: str
    holder: str
    resumed: bool
    budget: dict[str, Any]
    active_version_id: str
    started_at: Any


def _alive(holder: str) -> bool:
    host, pid, token = (holder.split(":", 2) + ["", ""])[:3]
    if host != socket.gethostname():
        return True  # another machine's night: assumed alive (a human clears it)
    if int(pid or 0) == os.getpid():
        with _LIVE_LOCK:
            return token in _LIVE
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class NightStore:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    def acquire(self, workflow: str, *, budget: dict[str, Any],
                active_version_id: str) -> Night:
        """Lock `workflow` for a night: resume its unfinished night whose holder died, or
        start a new one; `NightBusy` while a live holder runs one."""
        token = uuid.uuid4().hex[:12]
        holder = f"{socket.gethostname()}:{os.getpid()}:{token}"
        with self.wh.transaction():
            rows = self.wh.rows(
                "SELECT night_id, holder, budget, active_version_id, started_at FROM "
                "night_runs WHERE workflow = ? AND status = 'running' ORDER BY started_at "
                "DESC LIMIT 1", [workflow])
            if rows and _alive(rows[0][1]):
                raise NightBusy(f"a night of {workflow!r} is running ({rows[0][0]}, held by "
                                f"{rows[0][1]}); wait for it to finish")
            if rows:
                night_id, _, stored_budget, active, started = rows[0]
                self.wh.con.execute("UPDATE night_runs SET holder = ? WHERE night_id = ?",
                                    [holder, night_id])
                night = Night(night_id, workflow, holder, True, json.loads(stored_budget),
                              active, started)
            else:
                now = _now()
                night_id = f"night-{now:%Y%m%dT%H%M%S}-{token[:6]}"
                self.wh.insert("night_runs", [{
                    "night_id": night_id, "workflow": workflow, "status": "running",
                    "step": None, "holder": holder, "active_version_id": active_version_id,
                    "budget": json.dumps(budget), "projection": None, "calls": 0,
                    "tokens": 0, "cost": 0.0, "decision": None, "summary": None,
                    "started_at": now, "ended_at": None}])
                night = Night(night_id, workflow, holder, False, budget, active_version_id,
                              now)
        with _LIVE_LOCK:
            _LIVE.add(token)
        return night

    def release(self, night: Night) -> None:
        """Forget this process's hold (the row stays: finished, or resumable)."""
        with _LIVE_LOCK:
            _LIVE.discard(night.holder.split(":", 2)[2])

    def last_started(self, workflow: str) -> Any:
        """When the last finished night of `workflow` started (None: never)."""
        [(at,)] = self.wh.rows("SELECT max(started_at) FROM night_runs WHERE workflow = ? AND "
                               "status = 'done'", [workflow])
        return at

    def previous_output(self, workflow: str, step: str, before: str) -> Any:
        """The `step` output of the workflow's last finished night other than `before`."""
        rows = self.wh.rows(
            "SELECT s.output FROM night_steps s JOIN night_runs n USING (night_id) WHERE "
            "n.workflow = ? AND n.status = 'done' AND s.step = ? AND n.night_id <> ? "
            "ORDER BY n.started_at DESC LIMIT 1", [workflow, step, before])
        return json.loads(rows[0][0]) if rows else None

    def steps(self, night_id: str) -> dict[str, Any]:
        """The completed steps of a night, with their outputs."""
        return {s: json.loads(o) for s, o in self.wh.rows(
            "SELECT step, output FROM night_steps WHERE night_id = ?", [night_id])}

    def complete(self, night_id: str, step: str, output: Any) -> None:
        with self.wh.transaction():
            self.wh.insert("night_steps", [{"night_id": night_id, "step": step,
                                            "output": json.dumps(output, default=str),
                                            "completed_at": _now()}], upsert=True)
            self.wh.con.execute("UPDATE night_runs SET step = ? WHERE night_id = ?",
                                [step, night_id])

    def update(self, night_id: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        self.wh.con.execute(f"UPDATE night_runs SET {cols} WHERE night_id = ?",
                            [*(json.dumps(v, default=str) if isinstance(v, dict) else v
                               for v in values.values()), night_id])

    def finish(self, night: Night, *, status: str, decision: str, summary: dict[str, Any],
               calls: int, tokens: int, cost: float) -> None:
        self.update(night.night_id, status=status, decision=decision, summary=summary,
                    calls=calls, tokens=tokens, cost=cost, ended_at=_now())
        self.release(night)
