"""The Great Expectations gate on a candidate's holdout evidence: passes on good evidence,
each check failing alone gates the edit out naming that check only, too little or partial
evidence is undecided, and cost follows the one cost rule (`cegraph.refine.cost`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cegraph.refine.cost import CostBounds, CostPerRun
from cegraph.refine.gate import GateBounds, GateEvidence, check

GOOD = GateEvidence(outputs=["42", "7", "yes"], regression=20, broken=1, target=10,
                    candidate_target_passed=6, active_target_passed=1,
                    candidate_cost=CostPerRun(calls=1.2, tokens=120, dollars=0.012,
                                              latency_s=2.4),
                    active_cost=CostPerRun(calls=1.0, tokens=100, dollars=0.010,
                                           latency_s=2.0),
                    active_modes=["m1", "m2"], sampled_modes=["m1", "m2", "m3"])


def test_good_evidence_passes() -> None:
    verdict = check(GOOD)
    assert verdict.passed and verdict.decision == "passed" and verdict.failing == []
    assert len(verdict.results) == 11 and all(r["success"] for r in verdict.results)
    assert verdict.suite == "cegraph_edit_gate"
    assert verdict.validation["success"] is True  # GX's own result, kept whole


@pytest.mark.parametrize(("change", "column"), [
    ({"broken": 2}, "break_rate"),  # 10% > 5%
    ({"outputs": ["42", None, "yes"]}, "output"),
    ({"outputs": ["42", "  ", "yes"]}, "output"),
    ({"outputs": []}, "output"),
    ({"candidate_target_passed": 1}, "target_gain"),  # equal is not above
    ({"candidate_cost": CostPerRun(calls=1.6, tokens=120, dollars=0.012, latency_s=2.4)},
     "calls_ratio"),
    # a local model is free: its tokens still bound an ensemble that multiplies them
    ({"candidate_cost": CostPerRun(calls=1.2, tokens=300, dollars=0.0, latency_s=2.4),
      "active_cost": CostPerRun(calls=1.0, tokens=100, dollars=0.0, latency_s=2.0)},
     "tokens_ratio"),
    ({"active_cost": CostPerRun(calls=1.0, tokens=100, dollars=0.0, latency_s=2.0)},
     "dollars_ratio"),  # a free version allows only a free one
    ({"candidate_cost": CostPerRun(calls=1.2, tokens=120, dollars=0.012, latency_s=4.1)},
     "latency_ratio"),
])
def test_each_check_failing_alone_gates_out(change: dict, column: str) -> None:
    verdict = check(replace(GOOD, **change))
    assert verdict.decision == "failed" and not verdict.passed
    assert len(verdict.failing) == 1 and f'"column": "{column}"' in verdict.failing[0]


@pytest.mark.parametrize(("change", "column"), [
    ({"incomplete": 1}, "incomplete"),  # the gate's budget ran out mid-chunk
    ({"target": 2, "candidate_target_passed": 2, "active_target_passed": 0},
     "failing_pairs"),
    ({"regression": 2, "broken": 0}, "passing_pairs"),
    ({"sampled_modes": ["m1"]}, "modes_missing"),
])
def test_evidence_that_cannot_decide_is_undecided(change: dict, column: str) -> None:
    verdict = check(replace(GOOD, **change))
    assert verdict.decision == "undecided" and not verdict.passed
    assert len(verdict.failing) == 1 and f'"column": "{column}"' in verdict.failing[0]
    # partial evidence that also looks bad is still undecided, not rejected
    costly = CostPerRun(calls=3.0, tokens=300, dollars=0.03, latency_s=2.4)
    assert check(replace(GOOD, **{"candidate_cost": costly, **change})).decision == \
        "undecided"


def test_bounds_are_configurable_and_missing_modes_are_named() -> None:
    loose = GateBounds(max_break_rate=0.2, cost=CostBounds(max_calls_ratio=2.0,
                                                            max_dollars_ratio=None))
    worse = CostPerRun(calls=1.9, tokens=120, dollars=0.1, latency_s=2.4)
    assert check(replace(GOOD, broken=3, candidate_cost=worse), loose).passed
    assert not check(replace(GOOD, broken=3, candidate_cost=worse)).passed
    verdict = check(replace(GOOD, sampled_modes=["m1"]))
    [row] = [r for r in verdict.results if not r["success"]]
    assert row["observed"] == "1 (m2)"
    assert '"max_value": 0.05' in verdict.results[0]["expectation"]
