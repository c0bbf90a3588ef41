"""Where a refinement writes each step as it happens, and how a resumed run pays exactly
what an uninterrupted one would.

A refinement is identified by what it does (`refine_id`: seed version, models, inputs,
method, budget, settings), so running the same command again resumes it. Resuming
re-executes the loop from the start, but every call the killed attempt made is answered by
the call store: the loop is deterministic given its calls, so it walks the same steps to the
same final version. `ChargingStore` makes the budget agree: a stored call that this job
itself made (created since the job first started) is charged to the meter the first time
the job needs it, replayed or not, and never again, so the meter reads the same at every
step as in an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cegraph.graph import Workflow
from cegraph.llm import CallStore, Completion, Meter
from cegraph.refine.memory import rejected_on_evidence
from cegraph.trace import Trace


class Journal(Protocol):
    """Durable record of a refinement. Contract: every `record_*` is idempotent on its row
    id (a resumed run writes the same rows again without duplicates) and durable when it
    returns; `start` returns the time the job first started (now, for a new job)."""

    def start(self, refine_id: str, spec: dict[str, Any]) -> float: ...

    def record_roles(self, scope_id: str, roles: Mapping[str, str], seed: int) -> None:
        """Each input's role (task id -> shown | verification | holdout) in `scope_id`."""

    def record_version(self, wf: Workflow, *, parent: str | None, created_by: str) -> None: ...

    def record_edits(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def record_verification(self, row: dict[str, Any]) -> None: ...

    def record_traces(self, traces: Sequence[Trace], *, source: str) -> None: ...

    def finish(self, refine_id: str, row: dict[str, Any]) -> None: ...

    def rejected_edits(self, workflow: str, *, exclude: str) -> list[dict[str, Any]]:
        """The edits of `workflow` rejected on evidence by refinements other than `exclude`:
        rows with edit_key, target_mode_id and mode_state (see `memory.py`)."""


@dataclass
class MemoryJournal:
    """A journal in memory (notebooks, tests); `cegraph.storage.RefinementJournal` persists."""

    started: dict[str, float] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)
    verifications: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # scope -> task -> role
    traces: int = 0

    def start(self, refine_id: str, spec: dict[str, Any]) -> float:
        import time

        return self.started.setdefault(refine_id, time.time())

    def record_roles(self, scope_id: str, roles: Mapping[str, str], seed: int) -> None:
        self.roles.setdefault(scope_id, {}).update(roles)

    def record_version(self, wf: Workflow, *, parent: str | None, created_by: str) -> None:
        self.versions.setdefault(wf.version_id, {"workflow": wf, "parent": parent,
                                                 "created_by": created_by})

    def record_edits(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.edits[row["edit_id"]] = row

    def record_verification(self, row: dict[str, Any]) -> None:
        self.verifications[row["verification_id"]] = row

    def record_traces(self, traces: Sequence[Trace], *, source: str) -> None:
        self.traces += len(traces)

    def finish(self, refine_id: str, row: dict[str, Any]) -> None:
        self.finished[refine_id] = row

    def rejected_edits(self, workflow: str, *, exclude: str) -> list[dict[str, Any]]:
        return [r for r in self.edits.values() if r.get("edit_key")
                and r["workflow"] == workflow and r["night_id"] != exclude
                and rejected_on_evidence(r)]


class ChargingStore:
    """A call store that charges `meter` for calls this job made before (see module doc)."""

    def __init__(self, store: CallStore, meter: Meter, since: float) -> None:
        self.store = store
        self.meter = meter
        self.since = since
        self.seen: set[str] = set()
        self.charged = 0  # calls of an earlier attempt charged on replay

    def get(self, key: str) -> Completion | None:
        record = self.store.get(key)
        if record is None or key in self.seen or record.created_at < self.since:
            return record
        self.meter.charge(1, record.tokens_in, record.tokens_out, record.cost, within=True)
        self.seen.add(key)
        self.charged += 1
        return record

    def put(self, record: Completion) -> None:
        self.seen.add(record.key)
        self.store.put(record)
