"""GEPA as a peer baseline (cegraph.refine.gepa_baseline), with a scripted model: it runs our
workflow through our executor, learns from our failure messages, spends within the budget,
and never sees an input outside dev's roles."""

from __future__ import annotations

import pytest
from conftest import bench_refine

from cegraph.llm import LLM
from cegraph.refine.gepa_baseline import components, optimize_workflow, with_components
from cegraph.seeds import seed
from cegraph.task import Task

DEV = [Task(f"d{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(12)]
CAREFUL = "Solve the problem carefully, checking each step."


def _reply(seen: list[str]):
    def reply(messages: list[dict[str, str]]) -> str:
        text = messages[-1]["content"]
        seen.append(text)
        if "write a new instruction" in text:
            return f"```\n{CAREFUL}\n```"  # the reflection model proposes a new instruction
        if "\nSolution:\n" in text:  # Format repeats the solution's answer
            return text.split("\nSolution:\n")[1].split("\n\n")[0]
        i = int(text.split("What is ")[1].split(" ")[0])
        right = CAREFUL in text or i % 2 == 0
        return f"\\boxed{{{i + 1 if right else i + 11}}}"
    return reply


def test_components_round_trip() -> None:
    wf = seed("math")
    comps = components(wf)
    assert list(comps) == ["solve.instruction"]
    changed = with_components(wf, {"solve.instruction": CAREFUL})
    assert changed.by_id["solve"].params["instruction"] == CAREFUL
    assert changed.version_id != wf.version_id
    assert with_components(wf, comps) == wf  # the seed's own texts: no change, no diff


def test_gepa_learns_from_failures_within_budget(scripted) -> None:
    seen: list[str] = []
    scripted.reply = _reply(seen)
    budget = 120
    result = optimize_workflow(seed("math"), DEV, llm=LLM("scripted/m"), budget_calls=budget,
                               minibatch=3)
    assert result.llm_calls <= budget
    assert result.workflow.by_id["solve"].params.get("instruction") == CAREFUL
    assert result.val_score_after > result.val_score_before
    assert result.reflection_calls >= 1
    # the reflection saw our failure messages, not GEPA's defaults
    reflections = [s for s in seen if "write a new instruction" in s]
    assert any("expected" in s and "got" in s for s in reflections)


def test_gepa_stops_at_a_small_budget(scripted) -> None:
    scripted.reply = _reply([])
    lines: list[str] = []
    result = optimize_workflow(seed("math"), DEV, llm=LLM("scripted/m"), budget_calls=30,
                               on_progress=lines.append)
    assert result.llm_calls <= 30
    assert result.stop_reason.startswith("budget")
    # a line per GEPA step, its calls counting up to the budget
    spent = [int(line.split("calls ")[1].split("/")[0]) for line in lines]
    assert spent and spent == sorted(spent) and spent[-1] <= 30 and "/30 |" in lines[-1]


def test_gepa_runs_no_test_input(scripted) -> None:
    seen: list[str] = []
    scripted.reply = _reply(seen)
    test = [Task("x0", "gsm8k", "What is 100 + 1?", "101")]
    optimize_workflow(seed("math"), DEV, llm=LLM("scripted/m"), budget_calls=60)
    assert not any(test[0].input in s for s in seen)


@pytest.mark.parametrize("bad", ["{oops}"])
def test_a_candidate_that_cannot_run_scores_zero(scripted, bad: str) -> None:
    from cegraph.executor import Executor
    from cegraph.refine.gepa_baseline import WorkflowAdapter

    wf = seed("code")
    adapter = WorkflowAdapter(wf, Executor(LLM("scripted/m")))
    out = adapter.evaluate(DEV[:2], {"generate.prompt": bad}, capture_traces=True)
    assert out.scores == [0.0, 0.0] and "placeholder" in out.trajectories[0]["error"]


def test_bench_refine_scores_gepa_on_test(scripted, tmp_path) -> None:

    seen: list[str] = []
    scripted.reply = _reply(seen)
    [row] = bench_refine(tmp_path, 40, "--dev", "16", "--test", "20", "--budget", "150",
                         "--methods", "gepa")
    assert row["method"] == "gepa" and row["llm_calls"] <= 150
    # the learned instruction fixes the odd inputs on the test set the search never ran
    assert row["refined_test_acc"] == 1.0 and row["seed_test_acc"] == 0.5
    assert row["test_fixed"] == 10 and row["test_broken"] == 0
    assert {"calls_ratio", "tokens_ratio", "paired_p"} <= set(row)


def test_gepa_spends_the_calls_budget_when_its_evaluations_replay(scripted) -> None:
    """GEPA re-evaluates its parent on minibatches it has seen; those calls replay from the
    store for free. Its metric-call cap must not end the search while the calls budget still
    pays for steps (it did: 36 of 120 calls spent, 'max_metric_calls reached')."""
    seen: list[str] = []
    careful = _reply(seen)

    def reply(messages: list[dict[str, str]]) -> str:  # the reflection never helps
        if "write a new instruction" in messages[-1]["content"]:
            return "```\nThink.\n```"
        return careful(messages)

    scripted.reply = reply
    result = optimize_workflow(seed("math"), DEV, llm=LLM("scripted/m"), budget_calls=120)
    assert result.stop_reason.startswith("budget"), result.stop_reason
    assert 120 - 13 <= result.llm_calls <= 120  # short of it by at most one minibatch step
    assert result.metric_calls > 120 // 2  # more evaluations than calls could pay for
