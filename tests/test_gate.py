"""The Great Expectations gate on a verified edit: passes on good evidence, and each check
failing alone gates the edit out, naming that check only."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cegraph.refine.gate import GateBounds, GateEvidence, check

GOOD = GateEvidence(outputs=["42", "7", "yes"], regression=20, broken=1, target=10,
                    candidate_target_passed=6, active_target_passed=1,
                    candidate_cost_per_run=0.012, active_cost_per_run=0.010,
                    candidate_latency_s=2.4, active_latency_s=2.0,
                    active_modes=["m1", "m2"], sampled_modes=["m1", "m2", "m3"])


def test_good_evidence_passes() -> None:
    verdict = check(GOOD)
    assert verdict.passed and verdict.failing == []
    assert len(verdict.results) == 6 and all(r["success"] for r in verdict.results)
    assert verdict.suite == "cegraph_edit_gate"
    assert verdict.validation["success"] is True  # GX's own result, kept whole


@pytest.mark.parametrize(("change", "column"), [
    ({"broken": 2}, "break_rate"),  # 10% > 5%
    ({"outputs": ["42", None, "yes"]}, "output"),
    ({"outputs": ["42", "  ", "yes"]}, "output"),
    ({"outputs": []}, "output"),
    ({"candidate_target_passed": 1}, "target_gain"),  # equal is not above
    ({"candidate_cost_per_run": 0.016}, "cost_ratio"),
    ({"active_cost_per_run": 0.0}, "cost_ratio"),  # a free version allows only a free one
    ({"candidate_latency_s": 3.1}, "latency_ratio"),
    ({"sampled_modes": ["m1"]}, "modes_missing"),
])
def test_each_check_failing_alone_gates_out(change: dict, column: str) -> None:
    verdict = check(replace(GOOD, **change))
    assert not verdict.passed
    assert len(verdict.failing) == 1 and f'"column": "{column}"' in verdict.failing[0]


def test_bounds_are_configurable_and_missing_modes_are_named() -> None:
    loose = GateBounds(max_break_rate=0.2, max_cost_ratio=2.0, max_latency_ratio=2.0)
    assert check(replace(GOOD, broken=3, candidate_cost_per_run=0.019), loose).passed
    verdict = check(replace(GOOD, sampled_modes=["m1"]))
    [row] = [r for r in verdict.results if not r["success"]]
    assert row["observed"] == "1 (m2)"
    assert '"max_value": 0.05' in verdict.results[0]["expectation"]
