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


def test_evidence_from_a_verification() -> None:
    from cegraph.llm import Completion
    from cegraph.refine.verify import Counts, Plan, Verification
    from cegraph.task import Task
    from cegraph.trace import Outcome, Span, Trace

    def trace(task_id: str, passed: bool | None, *, cost: float, latency: float,
              cached: bool = False) -> Trace:
        call = Completion("k", "m", [], {}, 0, "x", 1, 1, cost, latency, "stop",
                          cached=cached)
        outcome = (Outcome(False, 0.0, "infrastructure", "ungradeable: x") if passed is None
                   else Outcome(passed, float(passed), None if passed else "wrong_answer"))
        return Trace(f"r-{task_id}", "w", "v", task_id, [Span("n", "Generate", 0, calls=[call])],
                     "out", 0.0, 1.0, outcome)

    tasks = {i: Task(i, "production", i, "") for i in ("a", "b", "c", "d", "e")}
    plan = Plan({"target": (tasks["a"], tasks["b"], tasks["c"]),
                 "regression": (tasks["d"], tasks["e"])},
                {"a": False, "b": False, "c": False, "d": True, "e": True},
                {"target": 0.1, "regression": 0.1})
    v = Verification("v", counts={"target": Counts(2, 1, 0, 1), "others": Counts(),
                                  "regression": Counts(2, 0, 1, 0)},
                     traces=[trace("a", True, cost=0.02, latency=2.0, cached=True),
                             trace("b", False, cost=0.02, latency=2.0),
                             trace("c", None, cost=0.02, latency=2.0),
                             trace("d", True, cost=0.02, latency=2.0),
                             trace("e", False, cost=0.02, latency=2.0)])
    active = [trace("a", False, cost=0.01, latency=1.0)]
    e = GateEvidence.from_verification(v, plan, active=active, active_modes=["m"],
                                       sampled_modes=["m"])
    # the ungradeable re-run of c is left out; the replayed call of a still counts its cost
    assert (e.target, e.candidate_target_passed, e.active_target_passed) == (2, 1, 0)
    assert (e.regression, e.broken, len(e.outputs)) == (2, 1, 4)
    assert (e.candidate_cost_per_run, e.active_cost_per_run) == (0.02, 0.01)
    assert (e.candidate_latency_s, e.active_latency_s) == (2.0, 1.0)
    failing = check(e).failing
    assert [f.split('"column": "')[1].split('"')[0] for f in failing] == [
        "break_rate", "cost_ratio", "latency_ratio"]
