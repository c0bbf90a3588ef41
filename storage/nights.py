"""The nightly refinement's rows: one `night_runs` row per night (also the workflow's lock)
and one `night_steps` row per completed step (what a crashed night resumes from).

Two nights of the same workflow never interleave: `acquire` takes the workflow's lock in one
transaction, refusing (`NightBusy`) while another live holder has it. The lock is a lease:
its holder renews it (`heartbeat`, every third of `lease_s` while it holds it, `holding`),
and a lease that ended means a dead holder, on this host or any other. A night whose holder
died (killed, crashed, its machine gone) is taken over and resumed: same night id, same
budget, its completed steps read back instead of re-run. `cegraph nights --clear-stale`
ends a lease by hand. A night that finds the catalog held by another job (an ingest) waits
for it, bounded (`open_catalog`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cegraph.storage.warehouse import CatalogLocked, Warehouse, _now

#: Lock tokens of the nights running in this process (a holder with this pid is alive only
#: while its token is here; a crashed in-process night leaves its row behind).
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()
LEASE_S = 600.0  # a holder silent this long is dead (its heartbeat renews every third)


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


@dataclass(frozen=True)
class Lock:
    """A running night as a lock: who holds it, until when, and whether it is stale."""

    night_id: str
    workflow: str
    holder: str
    step: str | None
    heartbeat_at: Any
    lease_expires_at: Any
    stale: bool


def _alive(holder: str, lease_expires_at: Any, now: dt.datetime) -> bool:
    """Whether a lock's holder still runs: its lease has not ended and, on this host, its
    process (and, in this process, its night) is live. Another host's holder is trusted
    until its lease ends (a lock written before leases existed: until a human clears it)."""
    if lease_expires_at is not None and lease_expires_at <= now:
        return False
    host, pid, token = (holder.split(":", 2) + ["", ""])[:3]
    if host != socket.gethostname():
        return True
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


def open_catalog(home: str | Path | None, *, wait_s: float, poll_s: float = 2.0,
                 on_wait: Callable[[str], None] | None = None) -> Warehouse:
    """The warehouse for writing, waiting up to `wait_s` while another job (an ingest) holds
    the catalog; `CatalogLocked` after that, saying how long it waited."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return Warehouse(home)
        except CatalogLocked as exc:
            if time.monotonic() >= deadline:
                raise CatalogLocked(f"{str(exc).splitlines()[0]} (waited {wait_s:g} s; "
                                    "raise --catalog-wait-s)") from None
            if on_wait is not None and not said:
                on_wait(f"the catalog is held by another job (an ingest?): waiting up to "
                        f"{wait_s:g} s for it")
                said = True
            time.sleep(poll_s)


class NightStore:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    def acquire(self, workflow: str, *, budget: dict[str, Any], active_version_id: str,
                lease_s: float = LEASE_S) -> Night:
        """Lock `workflow` for a night: resume its unfinished night whose holder died (or
        whose lease ended), or start a new one; `NightBusy` while a live holder runs one."""
        token = uuid.uuid4().hex[:12]
        holder = f"{socket.gethostname()}:{os.getpid()}:{token}"
        now = _now()
        lease = {"holder": holder, "heartbeat_at": now,
                 "lease_expires_at": now + dt.timedelta(seconds=lease_s)}
        with self.wh.transaction():
            rows = self.wh.rows(
                "SELECT night_id, holder, budget, active_version_id, started_at, "
                "lease_expires_at FROM night_runs WHERE workflow = ? AND status = 'running' "
                "ORDER BY started_at DESC LIMIT 1", [workflow])
            if rows and _alive(rows[0][1], rows[0][5], now):
                raise NightBusy(f"a night of {workflow!r} is running ({rows[0][0]}, held by "
                                f"{rows[0][1]} until {rows[0][5]}); wait for it to finish, "
                                f"or if its holder died: cegraph nights --clear-stale "
                                f"{workflow}")
            if rows:
                night_id, _, stored_budget, active, started, _ = rows[0]
                self.update(night_id, **lease)
                night = Night(night_id, workflow, holder, True, json.loads(stored_budget),
                              active, started)
            else:
                night_id = f"night-{now:%Y%m%dT%H%M%S}-{token[:6]}"
                self.wh.insert("night_runs", [{
                    "night_id": night_id, "workflow": workflow, "status": "running",
                    "step": None, "active_version_id": active_version_id,
                    "budget": json.dumps(budget), "projection": None, "calls": 0,
                    "tokens": 0, "cost": 0.0, "decision": None, "summary": None,
                    "started_at": now, "ended_at": None, "reason": None, **lease}])
                night = Night(night_id, workflow, holder, False, budget, active_version_id,
                              now)
        with _LIVE_LOCK:
            _LIVE.add(token)
        return night

    def heartbeat(self, night: Night, lease_s: float = LEASE_S, *, con: Any = None) -> None:
        """Renew the night's lease (only while this holder still holds it); `con`: a cursor
        of the catalog, for a thread other than the one using the warehouse's connection."""
        now = _now()
        with self.wh._lock:  # serialized with the flow's own statements on night_runs
            (con or self.wh.con).execute(
                "UPDATE night_runs SET heartbeat_at = ?, lease_expires_at = ? WHERE "
                "night_id = ? AND holder = ? AND status = 'running'",
                [now, now + dt.timedelta(seconds=lease_s), night.night_id, night.holder])

    @contextlib.contextmanager
    def holding(self, night: Night, lease_s: float = LEASE_S) -> Iterator[None]:
        """Renew the lease every third of `lease_s` while the body runs (a thread with its
        own cursor: a step may run for minutes without returning to the flow)."""
        stop = threading.Event()
        with self.wh._lock:
            cursor = self.wh.con.cursor()

        def beat() -> None:
            while not stop.wait(lease_s / 3):
                with contextlib.suppress(Exception):  # a missed beat: the next one renews
                    self.heartbeat(night, lease_s, con=cursor)

        thread = threading.Thread(target=beat, name=f"lease-{night.night_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            cursor.close()

    def locks(self) -> list[Lock]:
        """The running nights (each a workflow's lock), with whether each is stale."""
        now = _now()
        return [Lock(*r, stale=not _alive(r[2], r[5], now)) for r in self.wh.rows(
            "SELECT night_id, workflow, holder, step, heartbeat_at, lease_expires_at FROM "
            "night_runs WHERE status = 'running' ORDER BY started_at")]

    def clear_stale(self, workflow: str) -> Lock:
        """End the lease of `workflow`'s running night, whose holder a human knows is dead
        (another host's holder cannot be checked from here); the next night resumes it.
        Refused while its holder runs on this host."""
        found = [lk for lk in self.locks() if lk.workflow == workflow]
        if not found:
            raise LookupError(f"no running night of {workflow!r} holds a lock")
        lock = found[-1]
        host, pid = (lock.holder.split(":", 2) + [""])[:2]
        if not lock.stale and host == socket.gethostname():
            raise NightBusy(f"{lock.night_id} is held by process {pid} on this host, which "
                            "is alive; stop it first")
        self.update(lock.night_id, lease_expires_at=_now())
        return lock

    def release(self, night: Night) -> None:
        """Forget this process's hold (the row stays: finished, or resumable)."""
        with _LIVE_LOCK:
            _LIVE.discard(night.holder.split(":", 2)[2])

    def last_started(self, workflow: str) -> Any:
        """When the last finished night of `workflow` that gathered its inputs started
        (None: never); a night that stopped before gathering (stale) consumed no logs."""
        [(at,)] = self.wh.rows("SELECT max(started_at) FROM night_runs WHERE workflow = ? AND "
                               "status = 'done' AND night_id IN (SELECT night_id FROM "
                               "night_steps WHERE step = 'gather')", [workflow])
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
            self.update(night_id, step=step)

    def update(self, night_id: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        self.wh.rows(f"UPDATE night_runs SET {cols} WHERE night_id = ?",
                     [*(json.dumps(v, default=str) if isinstance(v, dict) else v
                        for v in values.values()), night_id])

    def finish(self, night: Night, *, status: str, decision: str, summary: dict[str, Any],
               calls: int, tokens: int, cost: float, reason: str | None = None) -> None:
        self.update(night.night_id, status=status, decision=decision, summary=summary,
                    calls=calls, tokens=tokens, cost=cost, ended_at=_now(), reason=reason)
        self.release(night)
