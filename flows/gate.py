"""The `gate-version` flow (`cegraph gate VERSION`): gate a stored version (a human's edit, or
a night's candidate) against the active one with the nightly gate's own machinery.

Its evidence is fresh in both senses a night's is: the inputs are logged production inputs no
refinement of the workflow ever ran (`cegraph.flows.nightly.touched`), at most `max_inputs`, split
between failing and passing ones by the holdout's seeded hash (`cegraph.refine.holdout`);
the candidate runs on them with new calls only, the active version may replay stored ones
(`cegraph.flows.nightly.verify_step`). The verdict is the Great Expectations edit gate
(`cegraph.refine.gate`), stored like a night's: one `gate_results` row per expectation
(`verification_id` = GATE-gate), the inputs in `input_roles` (`scope_id` = GATE, role
`holdout`), the re-runs in `runs` (`night_id` = GATE) and one `night_runs` row whose
`decision` is in the night's words (proposed: passed, gated_out, undecided) with the active
version it compared against, which a promotion then requires to be still active.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from cegraph.evaluator_spec import gradeable
from cegraph.flows.nightly import NightSettings, evidence, logged_runs, touched, verify_step
from cegraph.refine import gate, holdout
from cegraph.refine.cost import CostBounds
from cegraph.refine.loop import Budget
from cegraph.storage.nights import Night, open_catalog
from cegraph.storage.registry import Registry, RegistryError
from cegraph.storage.warehouse import _now

#: a gate's verdict in the night's decision words (`night_runs.decision`)
DECISION = {"passed": "proposed", "failed": "gated_out", "undecided": "undecided"}


def pick(task_ids: Sequence[str], *, failing: set[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of `task_ids`, half failing and half passing where both have enough
    (the rest from the other), each in the holdout's seeded-hash order; sorted."""
    strata = [sorted((t for t in task_ids if (t in failing) == f),
                     key=lambda t: holdout.rank(t, seed)) for f in (True, False)]
    half = limit // 2
    take = [min(len(strata[0]), max(half, limit - len(strata[1])))]
    take.append(min(len(strata[1]), limit - take[0]))
    return sorted(strata[0][:take[0]] + strata[1][:take[1]])


@flow(name="gate-version", log_prints=True)
def gate_version(version: str, home: str | None = None, model: str = "qwen2.5-coder-1.5b",
                 budget_calls: int | None = 300, budget_tokens: int | None = None,
                 budget_dollars: float | None = None, max_inputs: int = 60,
                 include_marked: bool = False, min_failing: int = 3, min_passing: int = 3,
                 max_break_rate: float = 0.05,
                 max_calls_ratio: float | None = CostBounds.max_calls_ratio,
                 max_tokens_ratio: float | None = CostBounds.max_tokens_ratio,
                 max_dollars_ratio: float | None = CostBounds.max_dollars_ratio,
                 max_latency_ratio: float | None = CostBounds.max_latency_ratio,
                 concurrency: int | None = None, seed: int = 0,
                 catalog_wait_s: float = 600.0) -> dict[str, Any]:
    """Gate `version` (an id or a 6+ character prefix) against its workflow's active version
    on fresh logged inputs, within one hard budget; returns the gate's summary. Promotes
    nothing (`cegraph promote` does, once the gate passed)."""
    bounds = gate.GateBounds(max_break_rate, min_failing, min_passing, CostBounds(
        max_calls_ratio, max_tokens_ratio, max_dollars_ratio, max_latency_ratio))
    budget = Budget(budget_calls, budget_tokens, budget_dollars)
    s = NightSettings(model=model, budget=budget, concurrency=concurrency, seed=seed,
                      bounds=bounds, include_marked=include_marked)
    log = get_run_logger()
    with open_catalog(home, wait_s=catalog_wait_s, on_wait=log.warning) as wh:
        reg = Registry(wh)
        version_id = reg.version_id(version)
        name = reg.workflow_of(version_id)
        active_id, active = reg.active(name)
        if version_id == active_id:
            raise RegistryError(f"{version_id} is {name}'s active version: nothing to gate")
        candidate = reg.workflow(version_id)
        edit_id = reg.gate_edit(version_id)
        logged = logged_runs(wh, name, since=None, include_marked=include_marked)
        tasks, excluded = gradeable(logged, reg.evaluator(name))
        failing = {r.task_id for r in logged if r.passed is False}
        ran = touched(wh, name)
        held = set(pick([t.id for t in tasks if t.id not in ran], failing=failing,
                        limit=max_inputs, seed=seed))
        started = _now()
        gate_id = f"gate-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        wh.insert("input_roles", [{"scope_id": gate_id, "task_id": t, "role": "holdout",
                                   "seed": seed, "recorded_at": started} for t in sorted(held)])
        night = Night(gate_id, name, "", False, asdict(budget), active_id, started)
        log.info("%s: %s against %s on %d fresh inputs", gate_id, version_id, active_id,
                 len(held))
        verified = verify_step(wh, night, {"candidate": candidate.model_dump_json()}, active,
                               [t for t in tasks if t.id in held], budget, s)
        verdict = gate.check(evidence(wh, night, verified, failing & held), bounds)
        reg.record_gate(verdict, verification_id=f"{gate_id}-gate", edit_id=edit_id)
        summary = {"kind": "gate", "gate_id": gate_id, "workflow": name,
                   "version_id": version_id, "active_version_id": active_id,
                   "edit_id": edit_id, "verdict": verdict.decision,
                   "decision": DECISION[verdict.decision], "passed": verdict.passed,
                   "failing": verdict.failing, "holdout": len(held),
                   "holdout_failing": len(failing & held), "excluded": excluded,
                   "budget_ran_out": verified["exhausted"],
                   "cost": {"calls": verified["calls"], "tokens": verified["tokens"],
                            "dollars": verified["cost"]}}
        wh.insert("night_runs", [{
            "night_id": gate_id, "workflow": name, "status": "done", "step": "gate",
            "holder": f"{socket.gethostname()}:gate", "active_version_id": active_id,
            "budget": json.dumps(asdict(budget)), "projection": None,
            "calls": verified["calls"], "tokens": verified["tokens"],
            "cost": verified["cost"], "decision": summary["decision"],
            "summary": json.dumps(summary, default=str), "started_at": started,
            "ended_at": _now(), "reason": "; ".join(verdict.failing) or None,
            "heartbeat_at": None, "lease_expires_at": None}])
        wh.snapshot()
    log.info("%s: %s %s", gate_id, version_id, verdict.decision)
    return summary
