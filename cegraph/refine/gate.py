"""The Great Expectations gate on a verified edit, before it may be promoted.

Input is plain data about the candidate's verification against the active version
(`GateEvidence`) and the configured bounds (`GateBounds`); the suite lives beside this module
(`gate_suite.json`, bounds as suite parameters). It checks that:

- breaks on the regression sample stay at or under `max_break_rate`;
- no verification run of the candidate left a null (or empty) output;
- the pass rate on the target mode's counterexamples is strictly above the active version's;
- cost and latency per run stay within `max_cost_ratio` / `max_latency_ratio` of the active
  version's (a free active version allows only a free candidate);
- every active failure mode is represented in the regression sample, so no mode goes
  unwatched.

The frame GX sees has one row per verification run of the candidate (its `output`), with the
summary figures (`break_rate`, `target_gain`, `cost_ratio`, `latency_ratio`, `modes_missing`)
repeated on each row so that each check is one column expectation whose observed value is the
figure itself. The verdict's rows go to `gate_results` (`storage.registry.Registry
.record_gate`); a failed gate makes the edit `gated_out`, and the registry refuses to promote
it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from cegraph import expectations
from cegraph.refine.verify import Plan, Verification
from cegraph.trace import INFRASTRUCTURE, Trace

SUITE = "gate_suite.json"
SUITE_NAME = "cegraph_edit_gate"


@dataclass(frozen=True)
class GateBounds:
    max_break_rate: float = 0.05
    max_cost_ratio: float = 1.5
    max_latency_ratio: float = 1.5


@dataclass(frozen=True)
class GateEvidence:
    """What verification found, candidate vs the active version."""

    outputs: Sequence[str | None]  # the candidate's output on each verification run
    regression: int  # regression-sample inputs re-run
    broken: int  # of which the candidate failed (the active version passed them)
    target: int  # target-mode counterexamples re-run
    candidate_target_passed: int
    active_target_passed: int
    candidate_cost_per_run: float
    active_cost_per_run: float
    candidate_latency_s: float  # per run
    active_latency_s: float
    active_modes: Collection[str]  # live failure modes of the active version
    sampled_modes: Collection[str]  # modes represented in the regression sample

    @classmethod
    def from_verification(cls, v: Verification, plan: Plan, *, active: Sequence[Trace],
                          active_modes: Collection[str], sampled_modes: Collection[str]
                          ) -> GateEvidence:
        """The evidence of a verification: its graded re-runs (infrastructure and
        ungradeable ones left out), the base's verdicts from the plan, and cost and latency
        per run of the candidate's re-runs vs `active` (the active version's runs)."""
        graded = [t for t in v.traces
                  if t.outcome is not None and t.outcome.failure_class != INFRASTRUCTURE]
        target_ids = {t.id for t in plan.strata.get("target", ())}
        target = [t for t in graded if t.task_id in target_ids]
        cost, latency = per_run(graded)
        active_cost, active_latency = per_run(active)
        regression = v.counts["regression"]
        return cls(outputs=[t.output for t in graded], regression=regression.run,
                   broken=regression.broken, target=len(target),
                   candidate_target_passed=sum(1 for t in target if t.outcome.passed),
                   active_target_passed=sum(1 for t in target if plan.base_passed[t.task_id]),
                   candidate_cost_per_run=cost, active_cost_per_run=active_cost,
                   candidate_latency_s=latency, active_latency_s=active_latency,
                   active_modes=active_modes, sampled_modes=sampled_modes)

    @property
    def missing_modes(self) -> list[str]:
        return sorted(set(self.active_modes) - set(self.sampled_modes))


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    failing: list[str]  # the failing expectations
    results: list[dict[str, Any]]  # expectation, success, observed, details (gate_results)
    validation: dict[str, Any]  # GX's validation result as JSON
    suite: str = SUITE_NAME


def per_run(traces: Sequence[Trace]) -> tuple[float, float]:
    """Cost and model latency per run, counting replayed calls at what they cost when first
    made (a re-run answered from the call store is not cheaper or faster than the version it
    is compared with)."""
    calls = [c for t in traces for s in t.spans for c in s.calls]
    n = max(1, len(traces))
    return sum(c.cost for c in calls) / n, sum(c.latency_s for c in calls) / n


def _ratio(candidate: float, active: float) -> float:
    if active > 0:
        return candidate / active
    return 1.0 if candidate <= 0 else math.inf


def frame(e: GateEvidence) -> Any:
    """The evidence as GX sees it (see the module docstring)."""
    import pandas as pd

    rate = (e.candidate_target_passed - e.active_target_passed) / e.target if e.target else 0.0
    summary = {"break_rate": e.broken / e.regression if e.regression else 0.0,
               "target_gain": rate,
               "cost_ratio": _ratio(e.candidate_cost_per_run, e.active_cost_per_run),
               "latency_ratio": _ratio(e.candidate_latency_s, e.active_latency_s),
               "modes_missing": len(e.missing_modes)}
    outputs = list(e.outputs) or [None]  # no run at all is no output
    return pd.DataFrame([{"output": o if (o or "").strip() else None, **summary}
                         for o in outputs])


def check(evidence: GateEvidence, bounds: GateBounds | None = None) -> GateVerdict:
    bounds = bounds or GateBounds()
    result = expectations.validate("cegraph.refine", SUITE, frame(evidence),
                                   bounds.__dict__)
    results = result.results
    if evidence.missing_modes:  # name them: the count alone does not say which
        for r in results:
            if "modes_missing" in r["expectation"]:
                r["observed"] = f"{r['observed']} ({', '.join(evidence.missing_modes)})"
    return GateVerdict(result.passed, result.failed, results, result.validation,
                       result.suite)
