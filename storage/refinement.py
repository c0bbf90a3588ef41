"""The warehouse side of a refinement: its journal rows (`refinements`, `input_roles`,
`edits`, `verifications`, `workflow_versions`) and its runs, each written as the step completes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cegraph.graph import Workflow
from cegraph.refine.memory import NOT_CHOSEN
from cegraph.storage.warehouse import Warehouse, _now
from cegraph.trace import Trace


class RefinementJournal:
    """`cegraph.refine.journal.Journal` over a warehouse; runs keyed on (workflow, model,
    dataset) like every other pool."""

    def __init__(self, wh: Warehouse, *, dataset: str, model: str) -> None:
        self.wh = wh
        self.dataset = dataset
        self.model = model
        self.refine_id = ""

    def start(self, refine_id: str, spec: dict[str, Any]) -> float:
        self.refine_id = refine_id
        rows = self.wh.rows("SELECT epoch(started_at) FROM refinements WHERE refine_id = ?",
                            [refine_id])
        if rows:
            self.wh.con.execute("UPDATE refinements SET status = 'running' WHERE refine_id = ?",
                                [refine_id])
            return float(rows[0][0])
        now = _now()
        self.wh.insert("refinements", [{
            "refine_id": refine_id, "workflow": spec["workflow"],
            "seed_version_id": spec["seed_version_id"], "version_id": None,
            "method": spec["method"], "spec": json.dumps(spec, default=str),
            "status": "running", "summary": None, "started_at": now, "ended_at": None}])
        return now.replace(tzinfo=dt.UTC).timestamp()

    def record_roles(self, scope_id: str, roles: Mapping[str, str], seed: int) -> None:
        now = _now()
        self.wh.insert("input_roles", [{"scope_id": scope_id, "task_id": task_id, "role": role,
                                        "seed": seed, "recorded_at": now}
                                       for task_id, role in sorted(roles.items())], upsert=True)

    def record_version(self, wf: Workflow, *, parent: str | None, created_by: str) -> None:
        self.wh.record_version(wf, created_by=created_by, parent=parent)

    def record_edits(self, rows: Sequence[dict[str, Any]]) -> None:
        now = _now()
        self.wh.insert("edits", [{"created_at": now, **r} for r in rows], upsert=True)

    def record_verification(self, row: dict[str, Any]) -> None:
        self.wh.insert("verifications", [{"created_at": _now(), **row}], upsert=True)

    def record_traces(self, traces: Sequence[Trace], *, source: str) -> None:
        self.wh.record_traces(traces, night_id=self.refine_id, source=source,
                              dataset=self.dataset, model=self.model)

    def finish(self, refine_id: str, row: dict[str, Any]) -> None:
        self.wh.con.execute(
            "UPDATE refinements SET version_id = ?, status = ?, summary = ?, ended_at = ? "
            "WHERE refine_id = ?", [row["version"], row["status"], json.dumps(row, default=str),
                                    _now(), refine_id])

    def rejected_edits(self, workflow: str, *, exclude: str) -> list[dict[str, Any]]:
        rows = self.wh.rows(
            "SELECT edit_key, target_mode_id, mode_state FROM edits WHERE workflow = ? AND "
            "night_id <> ? AND status = 'rejected' AND edit_key IS NOT NULL AND "
            "coalesce(reject_reason, '') NOT LIKE ?", [workflow, exclude, NOT_CHOSEN + "%"])
        return [{"edit_key": k, "target_mode_id": m, "mode_state": st} for k, m, st in rows]

    def version(self, version_id: str) -> Workflow | None:
        """A stored workflow version by id (a prefix of 6+ characters is enough)."""
        rows = self.wh.rows("SELECT spec FROM workflow_versions WHERE version_id LIKE ? "
                            "ORDER BY created_at LIMIT 2", [version_id + "%"])
        return Workflow.model_validate_json(rows[0][0]) if len(rows) == 1 else None
