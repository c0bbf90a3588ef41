"""Verdicts an optimizer cannot game (issue 20, the loop's side): roles fixed before any
proposal, one paired sample with a confidence interval, family-wise error control,
incomplete evidence undecided, early stop against accepted candidates only, cost in the
verdict (scripted LLM)."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from conftest import FixedProposer, bench_refine

from cegraph.budget import Meter
from cegraph.cli.plus_one import asked, plus_one_world
from cegraph.evaluator_spec import EvaluatorSpec, grader
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.llm import LLM, MemoryCallStore
from cegraph.refine.acceptance import PairedRule, holm
from cegraph.refine.edits import EditPrompt, ReplaceOperator, WrapEnsemble
from cegraph.refine.estimator import Stratum, stratified_drop
from cegraph.refine.journal import MemoryJournal
from cegraph.refine.loop import Budget, Refinement, Settings
from cegraph.refine.verify import CertainlyWorse, Plan, Verifier
from cegraph.seeds import seed
from cegraph.task import Task

TASKS = [Task(f"t{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(60)]
UNTOUCHED = [Task(f"u{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(60, 120)]
CAREFUL = "Check each step."


def judge(text: str) -> str | None:
    """A judge that checks the sum."""
    if not text.startswith("You grade the answer"):
        return None
    ok = re.findall(r"\d+", text.split("Answer:")[-1])[:1] == [str(asked(text) + 1)]
    return json.dumps({"passed": ok, "score": float(ok), "explanation": "checked"})


# CoT is right on every third problem, or when its prompt holds a memo `i -> i+1`; the careful
# prompt is also right when i % 3 == 1 (half the failures); a Programmer is right except when
# i % 9 == 0 (it fixes every failure and breaks a third of the passes).
world = plus_one_world(
    lambda i, text: i % 3 == 0 or f"{i} -> {i + 1};" in text or (CAREFUL in text and i % 3 == 1),
    program=lambda i: i + 1 if i % 9 else 0, special=judge)


def _run(embedder, budget: int = 800, journal=None, **kw):
    run = Refinement(seed("math"), TASKS, llm=LLM("scripted/x", store=MemoryCallStore()),
                     budget=Budget(calls=budget), embedder=embedder,
                     journal=journal if journal is not None else MemoryJournal(), **kw)
    return run, asyncio.run(run.run())


def _accuracy(wf, tasks) -> float:
    traces = asyncio.run(Executor(LLM("scripted/x")).run_many(wf, tasks, evaluate=evaluate))
    return sum(t.outcome.passed for t in traces) / len(traces)


# --- 1. roles: a memorizing proposer sees only shown inputs and is not accepted -------------
@pytest.mark.parametrize("method", ["scalar", "cegraph"])
def test_a_memorizing_proposer_is_not_accepted_and_never_sees_verification_inputs(
        scripted, embedder, method):
    seen: list[str] = []

    def memorizer(messages):
        text = messages[-1]["content"]
        if "candidates" not in text:
            return world(messages)
        seen.append(text)  # paste every shown "question -> answer" pair into the solve prompt
        pairs = re.findall(r"Input: What is (\d+) \+ 1\?\nExpected: (\d+)", text)
        memo = " ".join(f"{q} -> {a};" for q, a in pairs)
        return json.dumps({"candidates": [{"rationale": "remember", "edit": {
            "op": "edit_prompt", "node": "solve", "text": f"Solve it. Known: {memo}"}}]})

    scripted.reply = memorizer
    journal = MemoryJournal()
    run, result = _run(embedder, journal=journal, settings=Settings(method=method))
    roles = journal.roles[run.refine_id]
    assert set(roles) == {t.id for t in TASKS}
    verifying = {int(i[1:]) for i, r in roles.items() if r == "verification"}
    assert verifying and set(roles.values()) == {"shown", "verification"}
    # the proposer saw shown inputs only: no verification input, no verification answer
    assert seen
    mentioned = {int(n) for text in seen for n in re.findall(r"What is (\d+) \+ 1\?", text)}
    assert mentioned and not mentioned & verifying
    # (cegraph's operator prior also offers the Programmer, which breaks a third of the passes)
    assert result.accepted == []
    assert journal.verifications and all(
        v["decision"] == "rejected" for v in journal.verifications.values())
    # on inputs the loop never touched, the workflow is what it was
    assert _accuracy(result.workflow, UNTOUCHED) == _accuracy(seed("math"), UNTOUCHED)


# --- 4. incomplete is undecided -----------------------------------------------------------
def test_a_breaking_edit_cut_by_the_budget_mid_verification_is_undecided(scripted):
    scripted.reply = world
    store = MemoryCallStore()
    base_traces = asyncio.run(Executor(LLM("scripted/x", store=store)).run_many(
        seed("math"), TASKS[:12], evaluate=evaluate))
    base = {t.task_id: bool(t.outcome.passed) for t in base_traces}
    plan = Plan({"target": tuple(t for t in TASKS[:12] if not base[t.id]), "others": (),
                 "passes": tuple(t for t in TASKS[:12] if base[t.id])}, base,
                {"target": 8, "others": 0, "passes": 4})
    llm = LLM("scripted/x", store=store)
    llm.meter = Meter(max_calls=12)  # 6 runs of 2 calls: the budget ends mid-verification
    cand = ReplaceOperator(node="solve", operator="Programmer").apply(seed("math"))
    # break limits off: only the budget ends this verification
    v = asyncio.run(Verifier(Executor(llm), evaluate, chunk=2,
                             early_stop=CertainlyWorse(1.0)).verify(cand, plan))
    assert not v.complete and v.incomplete
    assert v.counts["passes"].broken >= 1  # passes run first: a break was seen
    rule = PairedRule(max_break_rate=1.0)
    by_id = {t.task_id: t for t in base_traces}
    verdict = rule.decide([rule.judge(v, plan, [by_id[t.task_id] for t in v.traces])], 1)[0]
    assert verdict.decision == "undecided" and not verdict.accepted
    assert "incomplete evidence" in verdict.reason


@pytest.mark.parametrize("budget", [224, 228, 232, 1000])
def test_a_judged_refinement_never_accepts_a_breaking_edit_whatever_the_budget(
        scripted, embedder, budget):
    """The old projection left the judge's calls out: the budget ended in the regression
    stratum, its runs became `infrastructure` and were dropped, and an edit breaking a third
    of the passes was accepted."""
    scripted.reply = world
    judge = LLM("scripted/judge", store=MemoryCallStore())
    spec = EvaluatorSpec(kind="judge", rubric="The answer is the right sum.")
    programmer = FixedProposer(ReplaceOperator(node="solve", operator="Programmer"))
    _, result = _run(embedder, budget, evaluate=grader(spec, judge), judge_llm=judge,
                     proposers=[programmer])
    assert result.accepted == [] and result.llm_calls <= budget


@pytest.mark.parametrize("tokens", [3400, 3700, 3800, 20000])
def test_a_token_budget_never_lets_a_breaking_edit_through(scripted, embedder, tokens):
    """The old projection priced a call at the mean tokens seen: token budgets 3400-3800 cut
    the regression stratum and the breaking Programmer was accepted."""
    scripted.reply = world
    programmer = FixedProposer(ReplaceOperator(node="solve", operator="Programmer"))
    run = Refinement(seed("math"), TASKS, llm=LLM("scripted/x", store=MemoryCallStore()),
                     budget=Budget(tokens=tokens), embedder=embedder, journal=MemoryJournal(),
                     proposers=[programmer])
    result = asyncio.run(run.run())
    assert result.accepted == [] and result.tokens <= tokens


# --- 5. early stop compares only against accepted candidates ------------------------------
def crashing(messages: list[dict[str, str]]) -> str:
    """`world`, but the Programmer's program divides by zero when i % 6 == 0: it fixes every
    failure and breaks half the passes with a new kind of failure (a new dense mode)."""
    text = messages[-1]["content"]
    if "Python program" in text:
        i = asked(text)
        return f"```python\nprint({'1 // 0' if i % 6 == 0 else i + 1})\n```"
    return world(messages)


def test_candidate_order_does_not_change_the_pick(scripted, embedder):
    """On main the first candidate (the largest estimated drop, rejected for its new dense
    mode) became the `best` that stopped the second early: A then B accepted nothing, B then A
    accepted B."""
    scripted.reply = crashing
    breaking = ReplaceOperator(node="solve", operator="Programmer")
    careful = EditPrompt(node="solve", text=CAREFUL)
    picks = []
    for order in ((breaking, careful), (careful, breaking)):
        _, result = _run(embedder, settings=Settings(max_rounds=1, max_break_rate=0.7),
                         proposers=[FixedProposer(*order)])
        picks.append([a.op for a in result.accepted])
    assert picks[0] == picks[1] == ["edit_prompt"]


# --- 3/9. one estimator, family-wise error ------------------------------------------------
def test_the_stratified_estimate_and_its_interval_on_a_crafted_sample():
    est = stratified_drop({"target": Stratum(10, 10, 8), "others": Stratum(10, 5, 1),
                           "passes": Stratum(20, 10, 1, passes=True)}, alpha=0.05)
    assert est.drop == pytest.approx(0.25 * 0.8 + 0.25 * 0.2 - 0.5 * 0.1)
    var = (0.25 ** 2 * 0.75 * 0.25 / 10 + 0.25 ** 2 * (2 / 7) * (5 / 7) / 5
           + 0.5 ** 2 * (1 / 6) * (5 / 6) / 10)
    assert est.se == pytest.approx(math.sqrt(var))
    assert (est.low, est.high) == pytest.approx((0.2 - 1.959964 * est.se,
                                                 0.2 + 1.959964 * est.se))
    # no breaks among 10 passes is not certainty: the interval stays open below
    sure = stratified_drop({"target": Stratum(2, 2, 1), "passes": Stratum(20, 10, 0, True)})
    assert sure.se > 0 and sure.low < 0 < sure.drop
    # a stratum with members but no unit run counts at its worst
    blind = stratified_drop({"target": Stratum(5, 5, 5), "passes": Stratum(5, 0, 0, True)})
    assert blind.low < 0


def test_holm_adjusts_and_a_candidate_significant_alone_is_rejected_in_a_family():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    from tests.test_refine import _verification

    rule = PairedRule(alpha=0.05)
    v, plan = _verification(7, 0)  # p = 1/128
    alone = rule.decide([rule.judge(v, plan, [])], 1)[0]
    assert alone.accepted and alone.p_adjusted == pytest.approx(2 / 128)  # round 1: alpha/2
    family = rule.decide([rule.judge(v, plan, [])] + [rule.judge(*_verification(1, 0), [])] * 3,
                         1)
    assert family[0].p_adjusted == pytest.approx(8 / 128)
    assert family[0].decision == "rejected" and "after correction" in family[0].reason
    later = rule.decide([rule.judge(v, plan, [])], 3)[0]  # round 3 spends alpha/8
    assert later.p_adjusted == pytest.approx(8 / 128) and not later.accepted


def test_every_verification_row_records_the_verdict_in_full(scripted, embedder):
    scripted.reply = world
    journal = MemoryJournal()
    _, result = _run(embedder, journal=journal, settings=Settings(max_rounds=1),
                     proposers=[FixedProposer(EditPrompt(node="solve", text=CAREFUL))])
    [row] = journal.verifications.values()
    assert row["decision"] == "accepted" == ("accepted" if result.accepted else "")
    assert row["p_adjusted"] >= row["p_value"] and row["ci_low"] > 0
    assert set(json.loads(row["cost_ratios"])) == {"calls", "tokens", "dollars", "latency_s"}
    assert row["planned"] == row["counterexamples"] + row["regression"] + row["others"]
    [edit] = journal.edits.values()  # the edit row ends as its verdict
    assert edit["status"] == "accepted" and edit["reject_reason"] is None


# --- 6. cost --------------------------------------------------------------------------------
def test_a_candidate_over_the_cost_bound_is_not_verified(scripted, embedder):
    scripted.reply = world
    journal = MemoryJournal()
    _, result = _run(embedder, journal=journal, settings=Settings(max_rounds=1),
                     proposers=[FixedProposer(WrapEnsemble(node="solve", n=5))])
    [row] = journal.verifications.values()
    assert row["decision"] == "rejected" and "cost bound" in row["reason"]
    assert row["planned"] == 0 and row["calls_made"] == 0
    [edit] = journal.edits.values()
    assert edit["status"] == "rejected" and "cost bound" in edit["reject_reason"]
    # the seed's evaluation (solve + format per input) is all that was paid for
    assert result.accepted == [] and result.llm_calls == len(scripted.calls) == 2 * len(TASKS)


# --- 7. the benchmark reports the verdicts and the test-set comparison ----------------------
def test_bench_refine_reports_cost_paired_p_and_every_verdict(scripted, tmp_path):
    scripted.reply = world
    [row] = bench_refine(tmp_path, 90, "--dev", "60", "--test", "30", "--budget", "600",
                         "--methods", "cegraph")
    assert {"refined_test_acc", "calls_ratio", "tokens_ratio", "paired_p", "test_fixed",
            "test_broken"} <= set(row)
    assert row["verdicts"] and all({"decision", "p_adjusted", "ci", "cost_ratios"} <= set(v)
                                   for v in row["verdicts"])
    accepted = [v for v in row["verdicts"] if v["decision"] == "accepted"]
    assert len(accepted) == len(row["accepted_edits"].split(",")) - (
        row["accepted_edits"] == "-")


def test_a_bench_method_never_sees_an_earlier_refinements_rejections(scripted, tmp_path):
    """Benchmark runs share a warehouse (`--home`, and the methods of one run); cegraph's
    memory of rejected edits would hand it verdicts another refinement paid for. A rerun
    with another budget (another refinement) gets the same verdicts as the first."""
    scripted.reply = lambda messages: "42"  # nothing the candidates try fixes anything
    home = ["--home", str(tmp_path / "home"), "--methods", "cegraph"]
    rows = [bench_refine(tmp_path, 30, "--dev", "16", "--test", "6", "--budget", budget,
                         *home)[0] for budget in ("150", "151")]
    ops = [[(v["op"], v["decision"]) for v in row["verdicts"]] for row in rows]
    assert ops[0] and all(d == "rejected" for _, d in ops[0])
    assert ops[1] == ops[0]
