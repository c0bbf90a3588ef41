"""The workflow registry: which workflows are refined nightly, every version of each, and
which version is active.

A registered workflow is a `workflows` row (name, evaluator spec, seed version); its
versions are `workflow_versions` rows linked by `parent_version_id` (the refinement loop
writes them too), so a version's lineage back to its seed is one recursive query. The
active version is the one named by the workflow's latest `deployments` row (by `seq`):
`register`, `promote` and `rollback` each append one row, so the table is the audit trail of
every change, by whom (`run_id`, NULL for a human) and why. Only a version whose latest
gate passed (`gate_results`, suite `cegraph_edit_gate`) is promoted, except by a human with
`force`; a night's promotion is a compare-and-swap on the version it started from.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cegraph.evaluator_spec import EvaluatorSpec
from cegraph.graph import Workflow
from cegraph.refine.gate import SUITE_NAME, GateVerdict
from storage.warehouse import Warehouse, _now


class RegistryError(ValueError):
    """A registry request that cannot be met; the message says what to do."""


class Stale(RegistryError):
    """A compare-and-swap promotion whose expected active version is no longer active."""


@dataclass(frozen=True)
class Registered:
    name: str
    evaluator: EvaluatorSpec
    seed_version_id: str
    active_version_id: str
    source: str | None
    registered_at: Any


class Registry:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    # --- lookups --------------------------------------------------------------------------
    def _row(self, name: str) -> tuple[str, str, str | None, Any]:
        rows = self.wh.rows("SELECT evaluator, seed_version_id, source, registered_at FROM "
                            "workflows WHERE name = ?", [name])
        if not rows:
            known = ", ".join(r[0] for r in self.wh.rows(
                "SELECT name FROM workflows ORDER BY name")) or "none yet"
            raise RegistryError(f"workflow {name!r} is not registered (registered: {known}); "
                                "add it with: cegraph register WORKFLOW_FILE --name NAME")
        return rows[0]

    def version_id(self, spec: str) -> str:
        """A stored version's full id from its id or a unique prefix (6+ characters)."""
        rows = self.wh.rows("SELECT version_id FROM workflow_versions WHERE version_id = ? OR "
                            "(length(?) >= 6 AND starts_with(version_id, ?)) LIMIT 2",
                            [spec, spec, spec])
        if len(rows) != 1:
            what = "ambiguous" if rows else "unknown"
            raise RegistryError(f"{what} version {spec!r}; list versions with: cegraph sql "
                                "\"SELECT version_id, workflow, created_by FROM "
                                "workflow_versions\"")
        return rows[0][0]

    def workflow(self, version_id: str) -> Workflow:
        """A stored version's graph."""
        [(spec,)] = self.wh.rows("SELECT spec FROM workflow_versions WHERE version_id = ?",
                                 [self.version_id(version_id)])
        return Workflow.model_validate_json(spec)

    def _deployments(self, name: str) -> list[tuple[str, str]]:
        return [(v, a) for v, a in self.wh.rows(
            "SELECT version_id, action FROM deployments WHERE workflow = ? AND seq IS NOT NULL "
            "ORDER BY seq", [name])]

    def _history(self, name: str) -> list[str]:
        """The stack of active versions: a promotion pushes, a rollback returns to an earlier
        entry (so rolling back twice walks back two promotions, not back and forth)."""
        stack: list[str] = []
        for version, action in self._deployments(name):
            if action == "rollback" and version in stack:
                del stack[stack.index(version) + 1:]
            else:
                stack.append(version)
        return stack

    def active(self, workflow_name: str) -> tuple[str, Workflow]:
        self._row(workflow_name)
        [(version_id, spec)] = self.wh.rows(
            "SELECT d.version_id, v.spec FROM deployments d JOIN workflow_versions v USING "
            "(version_id) WHERE d.workflow = ? AND d.seq IS NOT NULL ORDER BY d.seq DESC "
            "LIMIT 1", [workflow_name])
        return version_id, self._named(Workflow.model_validate_json(spec), workflow_name)

    def evaluator(self, workflow_name: str) -> EvaluatorSpec:
        return EvaluatorSpec.model_validate_json(self._row(workflow_name)[0])

    def registered(self) -> list[Registered]:
        names = [r[0] for r in self.wh.rows("SELECT name FROM workflows ORDER BY name")]
        out = []
        for name in names:
            evaluator, seed, source, at = self._row(name)
            out.append(Registered(name, EvaluatorSpec.model_validate_json(evaluator), seed,
                                  self.active(name)[0], source, at))
        return out

    def export(self, workflow_name: str) -> str:
        """The active version as the JSON a serving system loads (`Workflow.load`)."""
        _, wf = self.active(workflow_name)
        return json.dumps(wf.model_dump(exclude_defaults=True), indent=2) + "\n"

    def lineage(self, version_id: str) -> list[dict[str, Any]]:
        """The version, its parent, ... back to the seed (depth 0 = the version)."""
        table = self.wh.query(
            "WITH RECURSIVE chain(version_id, parent_version_id, workflow, created_by, "
            "created_at, depth) AS (SELECT version_id, parent_version_id, workflow, created_by, "
            "created_at, 0 FROM workflow_versions WHERE version_id = ? UNION ALL "
            "SELECT v.version_id, v.parent_version_id, v.workflow, v.created_by, v.created_at, "
            "c.depth + 1 FROM workflow_versions v JOIN chain c ON v.version_id = "
            "c.parent_version_id WHERE c.depth < 1000) "
            "SELECT * FROM chain ORDER BY depth", [self.version_id(version_id)])
        return table.to_pylist()

    # --- changes --------------------------------------------------------------------------
    def _named(self, wf: Workflow, name: str) -> Workflow:
        return wf if wf.name == name else wf.model_copy(update={"name": name})

    def _deploy(self, name: str, version_id: str, *, action: str, reason: str,
                previous: str | None, run_id: str | None = None, edit_id: str | None = None,
                forced: bool = False) -> str:
        deployment_id = uuid.uuid4().hex
        [(seq,)] = self.wh.rows("SELECT coalesce(max(seq), 0) + 1 FROM deployments")
        self.wh.insert("deployments", [{
            "deployment_id": deployment_id, "workflow": name, "version_id": version_id,
            "previous_version_id": previous, "edit_id": edit_id, "reason": reason,
            "deployed_at": _now(), "action": action, "run_id": run_id, "forced": forced,
            "seq": seq}])
        return deployment_id

    def register(self, workflow: Workflow, *, name: str | None = None,
                 evaluator: EvaluatorSpec, source: str | None = None) -> str:
        """Register a workflow with `workflow` as its seed (active) version; registering the
        same seed again under the same name changes nothing. Returns the seed version id."""
        name = name or workflow.name
        wf = self._named(workflow, name)
        known = self.wh.rows("SELECT seed_version_id FROM workflows WHERE name = ?", [name])
        if known:
            if known[0][0] == wf.version_id:
                return wf.version_id
            raise RegistryError(f"workflow {name!r} is registered already with seed "
                                f"{known[0][0]}; choose another --name")
        with self.wh.transaction():
            self.wh.record_version(wf, created_by="seed")
            self.wh.insert("workflows", [{
                "name": name, "evaluator": evaluator.model_dump_json(),
                "seed_version_id": wf.version_id, "source": source,
                "registered_at": _now()}])
            self._deploy(name, wf.version_id, action="register", reason="registered",
                         previous=None)
        return wf.version_id

    def add_version(self, workflow_name: str, workflow: Workflow, *, parent: str,
                    created_by: str) -> str:
        """Store a new version of a registered workflow (not active until promoted)."""
        self._row(workflow_name)
        parent = self.version_id(parent)
        wf = self._named(workflow, workflow_name)
        self.wh.record_version(wf, created_by=created_by, parent=parent)
        return wf.version_id

    def workflow_of(self, version_id: str) -> str:
        """The registered workflow a version descends from (its stored name may be another:
        a graph evaluated before it was registered under a new name)."""
        chain = [r["version_id"] for r in self.lineage(version_id)]
        names = sorted(n for (n,) in self.wh.rows(
            "SELECT name FROM workflows WHERE seed_version_id IN (SELECT unnest(?::VARCHAR[]))",
            [chain]))
        [(stored,)] = self.wh.rows("SELECT workflow FROM workflow_versions WHERE "
                                   "version_id = ?", [version_id])
        if stored in names or len(names) == 1:
            return stored if stored in names else names[0]
        if not names:
            raise RegistryError(f"version {version_id} descends from no registered workflow; "
                                "register its seed first: cegraph register WORKFLOW_FILE")
        raise RegistryError(f"version {version_id} descends from a seed graph registered "
                            f"under several names ({', '.join(names)}) and is stored under "
                            "none of them; promote it from the nightly run of one of them")

    def latest_gate(self, version_id: str) -> tuple[bool, list[str]] | None:
        """The latest gate verdict on an edit producing `version_id`: (passed, failing
        expectations), or None when it was never gated."""
        rows = self.wh.rows(
            "WITH latest AS (SELECT g.verification_id FROM gate_results g JOIN edits e USING "
            "(edit_id) WHERE e.candidate_version_id = ? AND g.suite = ? ORDER BY g.created_at "
            "DESC, g.gate_id LIMIT 1) SELECT expectation, success FROM gate_results WHERE "
            "verification_id = (SELECT verification_id FROM latest) AND suite = ? "
            "ORDER BY gate_id", [version_id, SUITE_NAME, SUITE_NAME])
        if not rows:
            return None
        return all(s for _, s in rows), [e for e, s in rows if not s]

    def promote(self, version_id: str, *, reason: str, run_id: str | None = None,
                edit_id: str | None = None, force: bool = False,
                expected_active: str | None = None) -> str:
        """Make a stored version of a registered workflow the active one, compare-and-swap:
        with `expected_active` (a night: the version it started from), refused (`Stale`)
        when another version became active meanwhile, so a night never clobbers a human's
        promotion. Only a version whose latest gate passed promotes; one never gated (a
        night's intermediate versions) or gated out needs `force` (a human's override,
        recorded). Promoting the active version changes nothing. Returns the version id."""
        version_id = self.version_id(version_id)
        name = self.workflow_of(version_id)
        with self.wh.transaction():  # the check and the swap in one transaction
            current, _ = self.active(name)
            if expected_active is not None and current != expected_active:
                raise Stale(f"{name}: the active version is {current}, not {expected_active} "
                            f"that {version_id} was gated against; it is not promoted")
            if current == version_id:
                return version_id
            gate = self.latest_gate(version_id)
            if (gate is None or not gate[0]) and not force:
                why = ("was never gated" if gate is None
                       else f"did not pass its gate ({'; '.join(gate[1])})")
                raise RegistryError(f"version {version_id} {why}; it is not promoted (a human "
                                    f"may: cegraph promote {version_id} --force --reason WHY)")
            self._deploy(name, version_id, action="promote", reason=reason, previous=current,
                         run_id=run_id, edit_id=edit_id, forced=not (gate and gate[0]))
        return version_id

    def rollback(self, workflow_name: str, *, to: str | None = None, reason: str,
                 run_id: str | None = None) -> str:
        """Make an earlier active version active again: the one before the current, or `to`
        (a version that was active before). Returns the version now active."""
        self._row(workflow_name)
        stack = self._history(workflow_name)
        if to is None:
            if len(stack) < 2:
                raise RegistryError(f"{workflow_name!r} has no earlier active version to roll "
                                    "back to")
            target = stack[-2]
        else:
            target = self.version_id(to)
            if target not in {v for v, _ in self._deployments(workflow_name)}:
                raise RegistryError(f"version {target} was never active for "
                                    f"{workflow_name!r}; make it active with: cegraph "
                                    f"promote {target}")
        with self.wh.transaction():
            self._deploy(workflow_name, target, action="rollback", reason=reason,
                         previous=stack[-1], run_id=run_id)
        return target

    # --- the promotion gate ---------------------------------------------------------------
    def record_gate(self, verdict: GateVerdict, *, verification_id: str,
                    edit_id: str) -> None:
        """Store a gate verdict (one `gate_results` row per expectation, its GX result in
        `details`); an edit that failed it becomes `gated_out` with the failing
        expectations; an undecided one keeps its status, with the reason (it is not
        promoted either: its latest gate did not pass)."""
        now = _now()
        with self.wh.transaction():
            self.wh.insert("gate_results", [{
                "gate_id": f"{verification_id}:{i}", "verification_id": verification_id,
                "edit_id": edit_id, "expectation": r["expectation"], "success": r["success"],
                "observed": r["observed"], "details": json.dumps(r["details"], default=str),
                "created_at": now, "batch_id": None, "suite": verdict.suite}
                for i, r in enumerate(verdict.results)], upsert=True)
            if verdict.decision == "failed":
                self.wh.con.execute(
                    "UPDATE edits SET status = 'gated_out', reject_reason = ? WHERE "
                    "edit_id = ?", ["gate failed: " + "; ".join(verdict.failing), edit_id])
            elif verdict.decision == "undecided":
                self.wh.con.execute(
                    "UPDATE edits SET reject_reason = ? WHERE edit_id = ?",
                    ["gate undecided: " + "; ".join(verdict.failing), edit_id])
