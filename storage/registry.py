"""The workflow registry: which workflows are refined nightly, every version of each, and
which version is active.

A registered workflow is a `workflows` row (name, evaluator spec, seed version); its
versions are `workflow_versions` rows linked by `parent_version_id` (the refinement loop
writes them too), so a version's lineage back to its seed is one recursive query. The
active version is the one named by the workflow's latest `deployments` row (by `seq`):
`register`, `promote` and `rollback` each append one row, so the table is the audit trail of
every change, by whom (`run_id`, NULL for a human) and why. Only a version whose latest
gate passed (`gate_results`, suite `cegraph_edit_gate`) is promoted, except by a human with
`force`; a promotion is a compare-and-swap on the active version its gate compared against
(a night's: the version it started from).

A human's edit is a version like a night's candidate: `add_human_version` stores it with the
active version as its parent and an `edits` row (source `human`, its node diff) that its gates
(`cegraph gate`, `flows/gate.py`) are recorded against.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cegraph.evaluator_spec import EvaluatorSpec
from cegraph.graph import Workflow
from cegraph.refine.gate import SUITE_NAME, GateVerdict
from cegraph.storage.warehouse import Warehouse, _now


class RegistryError(ValueError):
    """A registry request that cannot be met; the message says what to do."""


class Stale(RegistryError):
    """A compare-and-swap promotion whose expected active version is no longer active."""


#: `edits.source` and `workflow_versions.created_by` of a version a human wrote
HUMAN = "human"


@dataclass(frozen=True)
class Gate:
    """A version's latest gate: whether it passed, its failing expectations, and the active
    version it was compared against (None: not recorded)."""

    passed: bool
    failing: list[str]
    against: str | None


@dataclass(frozen=True)
class VersionInfo:
    version_id: str
    workflow: str
    parent_version_id: str | None
    created_by: str
    edit_id: str | None
    status: str | None  # the latest edit producing it: edits.status
    gate: Gate | None
    active: bool


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

    def another_graph(self, workflow_name: str, workflow: Workflow) -> bool:
        """Whether `workflow_name` is registered already with a seed other than `workflow`
        (registering it again is then a human's edit, `add_human_version`)."""
        rows = self.wh.rows("SELECT seed_version_id FROM workflows WHERE name = ?",
                            [workflow_name])
        return bool(rows) and rows[0][0] != self._named(workflow, workflow_name).version_id

    def add_human_version(self, workflow_name: str, workflow: Workflow, *,
                          reason: str = "edited by hand", source: str | None = None
                          ) -> tuple[str, str, list[str]]:
        """Store a human's edit of a registered workflow: a version whose parent is the active
        one, and an `edits` row (source `human`) its gates are recorded against. Not active
        until it passes a gate and is promoted. The same graph again adds nothing. Returns
        (version id, parent, node diff from the active version)."""
        active_id, active = self.active(workflow_name)
        wf = self._named(workflow, workflow_name)
        if wf.version_id == active_id:
            raise RegistryError(f"{source or 'this graph'} is {workflow_name}'s active version "
                                f"{active_id} already: nothing to add")
        diff = active.diff(wf)
        with self.wh.transaction():
            self.wh.record_version(wf, created_by=HUMAN, parent=active_id)
            [(parent,)] = self.wh.rows("SELECT parent_version_id FROM workflow_versions WHERE "
                                       "version_id = ?", [wf.version_id])
            if self._edit_of(wf.version_id) is None:
                self._human_edit(workflow_name, wf.version_id, parent or active_id, diff,
                                 rationale=reason,
                                 payload=json.dumps({"source": source}) if source else None)
        return wf.version_id, parent or active_id, diff

    def _edit_of(self, version_id: str) -> tuple[str, str] | None:
        """The latest edit producing `version_id`: (edit id, status)."""
        rows = self.wh.rows("SELECT edit_id, status FROM edits WHERE candidate_version_id = ? "
                            "ORDER BY created_at DESC NULLS LAST, edit_id DESC LIMIT 1",
                            [version_id])
        return (rows[0][0], rows[0][1]) if rows else None

    def _human_edit(self, name: str, version_id: str, base: str | None, diff: list[str], *,
                    rationale: str, payload: str | None = None) -> str:
        edit_id = f"{HUMAN}-{version_id[:12]}"
        self.wh.insert("edits", [{
            "edit_id": edit_id, "night_id": None, "workflow": name, "base_version_id": base,
            "candidate_version_id": version_id, "target_mode_id": None,
            "operation": "human_edit", "payload": payload, "rationale": rationale,
            "status": "proposed", "reject_reason": None, "created_at": _now(), "round": None,
            "source": HUMAN, "diff": "\n".join(diff)}])
        return edit_id

    def gate_edit(self, version_id: str) -> str:
        """The edit a gate of `version_id` is recorded against: the latest producing it (a
        night's candidate, a human's edit), else a new human edit from its parent."""
        version_id = self.version_id(version_id)
        found = self._edit_of(version_id)
        if found is not None:
            return found[0]
        name = self.workflow_of(version_id)
        [(parent,)] = self.wh.rows("SELECT parent_version_id FROM workflow_versions WHERE "
                                   "version_id = ?", [version_id])
        diff = self.workflow(parent).diff(self.workflow(version_id)) if parent else []
        return self._human_edit(name, version_id, parent, diff, rationale="gated by hand")

    def info(self, version_id: str) -> VersionInfo:
        """A stored version: its workflow, parent, the edit producing it with that edit's
        status, its latest gate, and whether it is active."""
        version_id = self.version_id(version_id)
        name = self.workflow_of(version_id)
        [(parent, created_by)] = self.wh.rows(
            "SELECT parent_version_id, created_by FROM workflow_versions WHERE version_id = ?",
            [version_id])
        edit = self._edit_of(version_id)
        return VersionInfo(version_id, name, parent, created_by, edit and edit[0],
                           edit and edit[1], self.latest_gate(version_id),
                           self.active(name)[0] == version_id)

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

    def latest_gate(self, version_id: str) -> Gate | None:
        """The latest gate verdict on an edit producing `version_id`, or None when it was
        never gated. The version it was compared against is its night's (`night_runs`: a
        night's gate is `NIGHT-gate`, a gate by hand is a night_runs row of its own)."""
        rows = self.wh.rows(
            "WITH latest AS (SELECT g.verification_id FROM gate_results g JOIN edits e USING "
            "(edit_id) WHERE e.candidate_version_id = ? AND g.suite = ? ORDER BY g.created_at "
            "DESC, g.gate_id LIMIT 1) SELECT expectation, success, (SELECT any_value("
            "active_version_id) FROM night_runs WHERE night_id || '-gate' = g.verification_id)"
            " FROM gate_results g WHERE verification_id = (SELECT verification_id FROM latest) "
            "AND suite = ? ORDER BY gate_id", [version_id, SUITE_NAME, SUITE_NAME])
        if not rows:
            return None
        return Gate(all(s for _, s, _ in rows), [e for e, s, _ in rows if not s], rows[0][2])

    def promote(self, version_id: str, *, reason: str, run_id: str | None = None,
                edit_id: str | None = None, force: bool = False,
                expected_active: str | None = None) -> str:
        """Make a stored version of a registered workflow the active one, compare-and-swap:
        refused (`Stale`) when the active version is not `expected_active` (a night: the
        version it started from) or, without it, not the version the passing gate compared
        it against, so neither a night nor a human promotes over a promotion made since.
        Only a version whose latest gate passed promotes; one never gated (a night's
        intermediate versions) or gated out needs `force` (a human's override, recorded).
        Promoting the active version changes nothing. Returns the version id."""
        version_id = self.version_id(version_id)
        name = self.workflow_of(version_id)
        with self.wh.transaction():  # the check and the swap in one transaction
            current, _ = self.active(name)
            gate = self.latest_gate(version_id)
            passed = gate is not None and gate.passed
            if expected_active is None and passed and not force:
                expected_active = gate.against
            if expected_active is not None and current != expected_active:
                raise Stale(f"{name}: the active version is {current}, not {expected_active} "
                            f"that {version_id} was gated against; it is not promoted (gate "
                            f"it again: cegraph gate {version_id})")
            if current == version_id:
                return version_id
            if not passed and not force:
                why = ("was never gated" if gate is None
                       else f"did not pass its gate ({'; '.join(gate.failing)})")
                raise RegistryError(f"version {version_id} {why}; it is not promoted (gate it: "
                                    f"cegraph gate {version_id}; or a human may: cegraph "
                                    f"promote {version_id} --force --reason WHY)")
            edit_id = edit_id or (self._edit_of(version_id) or (None,))[0]
            self._deploy(name, version_id, action="promote", reason=reason, previous=current,
                         run_id=run_id, edit_id=edit_id, forced=not passed)
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
        promoted either: its latest gate did not pass); one that passes it becomes
        `verified`, unless the refinement accepted it (a night's: its verdict stays)."""
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
            elif verdict.decision == "passed":
                self.wh.con.execute(
                    "UPDATE edits SET status = 'verified', reject_reason = NULL WHERE "
                    "edit_id = ? AND status IN ('proposed', 'rejected', 'undecided', "
                    "'gated_out')", [edit_id])
            elif verdict.decision == "undecided":
                self.wh.con.execute(
                    "UPDATE edits SET reject_reason = ? WHERE edit_id = ?",
                    ["gate undecided: " + "; ".join(verdict.failing), edit_id])
