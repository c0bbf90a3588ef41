"""A night's `NightSummary` rebuilt from the warehouse alone (`cegraph report --night ID`):
its modes and their trend (`nights`, `failure_modes`), the 2-D map of its failures (vectors
from LanceDB), and the edits of its refinement with their verifications, gate results and
deployments. The nightly flow may pass what only it knows (the budget, the decision in its
own words) as `overrides`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cegraph.report.projection import project
from cegraph.report.summary import (
    Cost,
    Edit,
    Gate,
    GateCheck,
    Mass,
    Mode,
    NightSummary,
    Point,
    TrendPoint,
    Verification,
    describe,
)
from cegraph.storage.vectors import VectorIndex
from cegraph.storage.warehouse import Warehouse


class NightNotFound(LookupError):
    pass


def latest_night(wh: Warehouse, workflow: str | None = None) -> str:
    rows = wh.rows("SELECT night_id FROM nights WHERE (?::VARCHAR IS NULL OR workflow = ?) "
                   "ORDER BY computed_at DESC LIMIT 1", [workflow, workflow])
    if not rows:
        raise NightNotFound("no night stored yet: run `cegraph demo` or `cegraph nightly` "
                            "first (or check --home)")
    return rows[0][0]


def mode_table_ids(wh: Warehouse, refine_id: str, night_id: str) -> dict[str, str]:
    """The mode of a night's mode table (`failure_modes.mode_id`) each mode a refinement aimed
    at stands for. A refinement finds modes among its own shown failures and names each after
    its seed, the smallest member failure id (`cegraph.fss.modes._mode_id`); it stands for
    the night's mode that most production failures of the seed's input belong to. Targets
    that stand for none (noise groups, an input the mapping never saw) are left out."""
    rows = wh.rows(
        "WITH targets AS (SELECT DISTINCT target_mode_id AS target FROM edits WHERE "
        "night_id = ? AND target_mode_id LIKE 'm-%'), seeds AS (SELECT t.target, f.task_id "
        "FROM failures f JOIN runs r USING (run_id) JOIN targets t ON "
        "'m-' || left(sha256(f.failure_id), 10) = t.target WHERE r.night_id = ?) "
        "SELECT s.target, mm.mode_id, count(*) AS n FROM seeds s JOIN failures f ON "
        "f.task_id = s.task_id JOIN failure_mode_members mm ON mm.failure_id = f.failure_id "
        "WHERE mm.night_id = ? AND mm.mode_id <> 'noise' GROUP BY ALL "
        "ORDER BY s.target, n DESC, mm.mode_id", [refine_id, refine_id, night_id])
    out: dict[str, str] = {}
    for target, mode, _ in rows:
        out.setdefault(target, mode)
    return out


def to_mode_table(wh: Warehouse, refine_id: str, workflow: str) -> dict[str, str]:
    """Rename the refinement's targets in `edits` to the mode table's ids of the workflow's
    latest mapping (`mode_table_ids`), so SQL, the report and the night's summary name a mode
    one way; returns the renaming."""
    try:
        night_id = latest_night(wh, workflow)
    except NightNotFound:
        return {}
    ids = mode_table_ids(wh, refine_id, night_id)
    for old, new in ids.items():
        wh.rows("UPDATE edits SET target_mode_id = ? WHERE night_id = ? AND "
                "target_mode_id = ?", [new, refine_id, old])
    return ids


def summarize(wh: Warehouse, night_id: str | None = None, *, workflow: str | None = None,
              refine_id: str | None = None, **overrides: Any) -> NightSummary:
    """The summary of `night_id` (default: the latest night). `refine_id` names the
    refinement whose edits the night made (default: edits with `night_id` as theirs)."""
    night_id = night_id or latest_night(wh, workflow)
    found = wh.rows(
        "SELECT workflow, version_id, computed_at, runs, failures, noise, model, dataset "
        "FROM nights WHERE night_id = ? AND (?::VARCHAR IS NULL OR workflow = ?) LIMIT 1",
        [night_id, workflow, workflow])
    if not found:
        raise NightNotFound(f"no night {night_id!r}; list them with: cegraph sql \"SELECT "
                            "night_id, workflow, computed_at FROM nights ORDER BY 3 DESC\"")
    wf, version, computed_at, runs, failures, noise, model, dataset = found[0]
    refine_id = refine_id or night_id
    fields: dict[str, Any] = {
        "night_id": night_id, "workflow": wf, "model": model or "", "dataset": dataset or "",
        "refine_id": refine_id, "active_before": version, "active_after": version,
        "mass_before": Mass.of(failures, runs),
        "modes": _modes(wh, night_id, wf, runs, noise),
        "trend": _trend(wh, wf, model, dataset, computed_at),
        "edits": _in_mode_table(_edits(wh, refine_id),
                                mode_table_ids(wh, refine_id, night_id))}
    fields["projection"], fields["points"] = _points(wh, night_id)
    fields.update(_outcome(wh, refine_id, fields["edits"], version, runs))
    fields.update(overrides)
    return NightSummary.model_validate(fields)


def _modes(wh: Warehouse, night_id: str, workflow: str, runs: int, noise: int) -> list[Mode]:
    modes = [Mode(mode_id=m, label=label or "", size=size, mass=mass, lo=lo, hi=hi,
                  status=status or "", locus=f"{node} ({op})" if node else "")
             for m, label, size, mass, lo, hi, status, node, op in wh.rows(
                 "SELECT mode_id, label, size, mass, mass_lo, mass_hi, status, locus_node, "
                 "locus_operator FROM failure_modes WHERE night_id = ? AND workflow = ? "
                 "ORDER BY rank NULLS LAST", [night_id, workflow])]
    if noise:
        m = Mass.of(noise, runs)
        modes.append(Mode(mode_id="noise", label="failures in no dense mode", size=noise,
                          mass=m.mass, lo=m.lo, hi=m.hi))
    return modes


def _trend(wh: Warehouse, workflow: str, model: str | None, dataset: str | None,
           until: Any) -> list[TrendPoint]:
    rows = wh.rows(
        "SELECT f.night_id, n.computed_at, f.mode_id, f.label, f.mass, f.mass_lo, f.mass_hi "
        "FROM failure_modes f JOIN nights n USING (night_id, workflow) WHERE workflow = ? "
        "AND n.model IS NOT DISTINCT FROM ? AND n.dataset IS NOT DISTINCT FROM ? "
        "AND n.computed_at <= ? ORDER BY n.computed_at, f.rank",
        [workflow, model, dataset, until])
    return [TrendPoint(night_id=n, computed_at=t, mode_id=m, label=label or "", mass=mass,
                       lo=lo, hi=hi) for n, t, m, label, mass, lo, hi in rows]


def _points(wh: Warehouse, night_id: str) -> tuple[str, list[Point]]:
    members = wh.rows(
        "SELECT m.failure_id, m.mode_id, coalesce(f.message, '') FROM failure_mode_members m "
        "LEFT JOIN failures f USING (failure_id) WHERE m.night_id = ? ORDER BY m.failure_id",
        [night_id])
    index = VectorIndex.open(wh.vectors_path) if wh.vectors_path.exists() else None
    vectors = index.vectors_of([m[0] for m in members]) if index else {}
    placed = [m for m in members if m[0] in vectors]
    if not placed:
        return "no signature vectors stored", []
    proj = project(np.stack([vectors[m[0]] for m in placed]))
    return proj.method, [Point(failure_id=f, mode_id=mode, x=float(x), y=float(y),
                               message=msg)
                         for (f, mode, msg), (x, y) in zip(placed, proj.xy, strict=True)]


def _edits(wh: Warehouse, refine_id: str) -> list[Edit]:
    verifications = {
        r[0]: Verification(counterexamples=r[1] or 0, regression=r[2] or 0, others=r[3] or 0,
                           fixed=r[4] or 0, broken=r[5] or 0, p_value=r[6], accepted=r[7],
                           reason=r[8] or "", mass_before=r[9], mass_after=r[10],
                           calls_made=r[11] or 0, calls_replayed=r[12] or 0)
        for r in wh.rows(
            "SELECT edit_id, counterexamples, regression, others, fixed, broken, p_value, "
            "accepted, reason, mass_before, mass_after, calls_made, calls_replayed "
            "FROM verifications WHERE edit_id IN (SELECT edit_id FROM edits WHERE night_id = ?)"
            " QUALIFY row_number() OVER (PARTITION BY edit_id ORDER BY created_at DESC) = 1",
            [refine_id])}
    gates: dict[str, list[GateCheck]] = {}
    for edit_id, expectation, success, observed in wh.rows(
            "SELECT edit_id, expectation, success, observed FROM gate_results WHERE edit_id IN "
            "(SELECT edit_id FROM edits WHERE night_id = ?) AND batch_id IS NULL "
            "ORDER BY created_at, expectation", [refine_id]):
        gates.setdefault(edit_id, []).append(
            GateCheck(expectation=expectation, success=bool(success), observed=observed or ""))
    return [Edit(edit_id=e, operation=op, edit=describe(op or "", _payload(payload)),
                 target_mode_id=target or "", status=status or "",
                 source=source or "", rationale=rationale or "", reject_reason=reason or "",
                 candidate_version_id=cand or "", diff=(diff or "").splitlines(),
                 verification=verifications.get(e),
                 gate=Gate(passed=all(c.success for c in gates[e]), checks=gates[e])
                 if e in gates else None)
            for e, op, target, status, source, rationale, reason, cand, diff, payload
            in wh.rows(
                "SELECT edit_id, operation, target_mode_id, status, source, rationale, "
                "reject_reason, candidate_version_id, diff, payload FROM edits WHERE "
                "night_id = ? "
                "ORDER BY round NULLS FIRST, created_at, edit_id", [refine_id])]


def _in_mode_table(edits: list[Edit], ids: dict[str, str]) -> list[Edit]:
    return [e.model_copy(update={"target_mode_id": ids.get(e.target_mode_id,
                                                           e.target_mode_id)})
            for e in edits]


def _payload(text: str | None) -> dict[str, Any]:
    try:
        found = json.loads(text) if text else {}
    except ValueError:  # an invalid proposal's raw text
        return {}
    return found if isinstance(found, dict) else {}


def _outcome(wh: Warehouse, refine_id: str, edits: list[Edit], version: str,
             runs: int) -> dict[str, Any]:
    """Decision, version after, mass after and cost, from the refinement and deployments."""
    out: dict[str, Any] = {}
    refined = wh.rows("SELECT spec, summary FROM refinements WHERE refine_id = ?", [refine_id])
    spec, summary = (json.loads(refined[0][0] or "{}"), json.loads(refined[0][1] or "{}")
                     ) if refined else ({}, {})
    budget = spec.get("budget") or {}
    out["cost"] = Cost(llm_calls=summary.get("llm_calls", 0), tokens=summary.get("tokens", 0),
                       dollars=summary.get("cost", 0.0), wall_s=summary.get("wall_s", 0.0),
                       calls_replayed=sum(e.verification.calls_replayed for e in edits
                                          if e.verification),
                       budget_calls=budget.get("calls"), budget_tokens=budget.get("tokens"),
                       budget_dollars=budget.get("dollars"))
    ids = [e.edit_id for e in edits]
    deployed = wh.rows("SELECT version_id, edit_id, reason FROM deployments WHERE edit_id IN "
                       "(SELECT unnest(?::VARCHAR[])) ORDER BY deployed_at DESC LIMIT 1",
                       [ids]) if ids else []
    accepted = [e for e in edits if e.verification and e.verification.accepted]
    best = accepted[-1] if accepted else None
    if best is not None and best.verification.mass_after is not None and runs:
        # the candidate's estimated mass, its interval at the night's number of runs
        out["mass_after"] = Mass.of(round(best.verification.mass_after * runs), runs)
    if deployed:
        out.update(decision="promoted", active_after=deployed[0][0],
                   decision_reason=deployed[0][2] or "verified and gated")
    elif any(e.status == "gated_out" for e in edits):
        failing = sorted({f for e in edits if e.gate for f in e.gate.failing})
        out.update(decision="gated_out",
                   decision_reason="the gate failed: " + ", ".join(failing))
    elif best is not None:
        out.update(decision="proposed", decision_reason=f"{best.operation} verified and "
                   "accepted, not promoted (propose-only)")
    elif edits:
        out.update(decision="no_edit", decision_reason=summary.get("stop_reason") or
                   "no candidate fixed more than it broke")
    else:
        out.update(decision="no_edit", decision_reason=summary.get("stop_reason") or
                   "no edit was proposed")
    out.setdefault("active_after", version)
    return out
