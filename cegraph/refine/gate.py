"""The Great Expectations gate on a refined candidate, before it may be promoted.

The gate brings its own evidence: the night's **holdout** (inputs the refinement never
touched, drawn before it started), re-run on the active version and on the candidate, the
candidate with new calls (`GateEvidence`, built by the nightly flow). The bounds
(`GateBounds`) are suite parameters; the suite lives beside this module (`gate_suite.json`).
It checks that:

- breaks on the holdout inputs the active version passes stay at or under `max_break_rate`;
- no run of the candidate left a null (or empty) output;
- the candidate passes strictly more of the holdout's failing inputs than the active version;
- its cost per run (calls, tokens, dollars, latency) stays within `cost` (`CostBounds`, the
  one cost rule the refinement loop applies too);

and that the evidence can decide: every planned holdout run was graded on both sides
(`incomplete` 0: a budget cut or an outage mid-chunk leaves it partial), at least
`min_failing` failing and `min_passing` passing holdout inputs were re-run, and every live
failure mode of the active version is represented. A failed evidence check makes the verdict
`undecided` (nothing is promoted, nothing is rejected on partial evidence); any other failed
check makes it `failed` (the edit is gated out).

The frame GX sees has one row per holdout run of the candidate (its `output`), with the
summary figures repeated on each row, so each check is one column expectation whose observed
value is the figure itself. The verdict's rows go to `gate_results` (`cegraph.storage.registry.
Registry.record_gate`); only a version whose latest gate passed is promoted without `force`.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cegraph import expectations
from cegraph.refine.cost import CostBounds, CostPerRun, ratios

SUITE = "gate_suite.json"
SUITE_NAME = "cegraph_edit_gate"
#: the columns whose checks say whether the evidence can decide (failing: `undecided`)
EVIDENCE = ("incomplete", "failing_pairs", "passing_pairs", "modes_missing")
Decision = Literal["passed", "failed", "undecided"]


@dataclass(frozen=True)
class GateBounds:
    max_break_rate: float = 0.05
    min_failing: int = 3  # holdout inputs the active version failed, re-run on both sides
    min_passing: int = 3  # holdout inputs it passed, re-run on both sides
    cost: CostBounds = field(default_factory=CostBounds)

    def parameters(self) -> dict[str, float]:
        """The suite's parameters (an unbounded cost ratio: the largest float)."""
        c = self.cost
        return {"max_break_rate": self.max_break_rate, "min_failing": self.min_failing,
                "min_passing": self.min_passing,
                **{name: sys.float_info.max if v is None else v
                   for name, v in (("max_calls_ratio", c.max_calls_ratio),
                                   ("max_tokens_ratio", c.max_tokens_ratio),
                                   ("max_dollars_ratio", c.max_dollars_ratio),
                                   ("max_latency_ratio", c.max_latency_ratio))}}


@dataclass(frozen=True)
class GateEvidence:
    """The holdout's re-runs, candidate vs the active version (pairs graded on both sides)."""

    outputs: Sequence[str | None]  # the candidate's output on each holdout run
    regression: int  # holdout inputs the active version passed, re-run on both
    broken: int  # of which the candidate failed
    target: int  # holdout inputs whose logged run failed, re-run on both
    candidate_target_passed: int
    active_target_passed: int
    candidate_cost: CostPerRun
    active_cost: CostPerRun
    active_modes: Collection[str]  # live failure modes of the active version
    sampled_modes: Collection[str]  # modes represented in the holdout
    incomplete: int = 0  # planned holdout inputs not graded on both sides (budget, outage)

    @property
    def missing_modes(self) -> list[str]:
        return sorted(set(self.active_modes) - set(self.sampled_modes))


@dataclass(frozen=True)
class GateVerdict:
    decision: Decision
    failing: list[str]  # the failing expectations
    results: list[dict[str, Any]]  # expectation, success, observed, details (gate_results)
    validation: dict[str, Any]  # GX's validation result as JSON
    suite: str = SUITE_NAME

    @property
    def passed(self) -> bool:
        return self.decision == "passed"


def frame(e: GateEvidence, latency_floor_s: float = 0.0) -> Any:
    """The evidence as GX sees it (see the module docstring); latency under the floor is
    noise, as in the loop's cost rule (`cost.ratios`)."""
    import pandas as pd

    gain = (e.candidate_target_passed - e.active_target_passed) / e.target if e.target else 0.0
    cost = ratios(e.candidate_cost, e.active_cost, latency_floor_s)
    summary = {"break_rate": e.broken / e.regression if e.regression else 0.0,
               "target_gain": gain, "calls_ratio": cost["calls"],
               "tokens_ratio": cost["tokens"], "dollars_ratio": cost["dollars"],
               "latency_ratio": cost["latency_s"], "incomplete": e.incomplete,
               "failing_pairs": e.target, "passing_pairs": e.regression,
               "modes_missing": len(e.missing_modes)}
    outputs = list(e.outputs) or [None]  # no run at all is no output
    return pd.DataFrame([{"output": o if (o or "").strip() else None, **summary}
                         for o in outputs])


def check(evidence: GateEvidence, bounds: GateBounds | None = None) -> GateVerdict:
    bounds = bounds or GateBounds()
    result = expectations.validate("cegraph.refine", SUITE,
                                   frame(evidence, bounds.cost.latency_floor_s),
                                   bounds.parameters())
    results = result.results
    if evidence.missing_modes:  # name them: the count alone does not say which
        for r in results:
            if "modes_missing" in r["expectation"]:
                r["observed"] = f"{r['observed']} ({', '.join(evidence.missing_modes)})"
    failed = result.failed
    decision: Decision = ("passed" if not failed else "undecided" if any(
        f'"column": "{c}"' in f for f in failed for c in EVIDENCE) else "failed")
    return GateVerdict(decision, failed, results, result.validation, result.suite)
