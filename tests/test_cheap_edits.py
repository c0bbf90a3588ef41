"""Edits aimed at a mode, cheap at run time (add_demonstrations, add_rule, check_then_escalate,
repair_extraction), the cost-aware pick, and the memory of rejected edits across nights."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from conftest import FixedProposer

from cegraph.cli.plus_one import plus_one_world
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.graph import Workflow
from cegraph.llm import LLM, MemoryCallStore
from cegraph.refine.acceptance import PairedRule, Verdict
from cegraph.refine.cost import CostPerRun
from cegraph.refine.demonstrations import demos_leak, materialize, pick_demonstrations
from cegraph.refine.edits import (
    AddDemonstrations,
    AddRule,
    CheckThenEscalate,
    Demo,
    EditRejected,
    RepairExtraction,
    apply_edits,
    parse_edit,
)
from cegraph.refine.journal import MemoryJournal
from cegraph.refine.loop import Budget, Refinement, Settings, llm_calls_per_run
from cegraph.refine.memory import edit_key, mode_state, rejected_keys
from cegraph.refine.proposer import (
    Candidate,
    Counterexample,
    PriorProposer,
    Proposals,
    RuleProposer,
    Target,
    prior_edits,
    screen,
)
from cegraph.refine.verify import Counts, Plan, Verification
from cegraph.seeds import seed
from cegraph.task import Task

TASKS = [Task(f"t{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(48)]
RULE = "When a question asks for a sum, add the numbers and check the result once."


class TextEmbedder:
    """A scripted embedder: unit vectors seeded by the text (same text, same vector)."""

    name, dim = "scripted", 16

    def embed(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(sum(t.encode()) * 7919 + len(t)).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


# CoT is right on every third problem, or always when its prompt holds the rule, or shows
# worked examples and i % 9 != 2 (5/6 of the failures); a rule request gets `RULE` back.
world = plus_one_world(
    lambda i, text: i % 3 == 0 or RULE in text or ("Worked example:" in text and i % 9 != 2),
    special=lambda text: json.dumps({"rule": RULE}) if "Write ONE short general rule" in text
    else None)


def _run(proposers, budget=600, journal=None, **kw):
    run = Refinement(seed("math"), TASKS, llm=LLM("scripted/x", store=MemoryCallStore()),
                     budget=Budget(calls=budget), embedder=TextEmbedder(),
                     journal=journal if journal is not None else MemoryJournal(),
                     proposers=proposers, settings=Settings(**kw))
    return run, asyncio.run(run.run())


# --- the vocabulary -----------------------------------------------------------------------
def test_each_new_edit_validates_diffs_and_round_trips():
    wf = seed("math")
    demo = Demo(task_id="t3", input="What is 3 + 1?", output="3 + 1 = 4. \\boxed{4}")
    edits = [AddDemonstrations(node="solve", demos=(demo,)), AddRule(node="solve", text=RULE),
             CheckThenEscalate(node="solve", n=3), RepairExtraction(node="format")]
    for e in edits:
        applied = apply_edits(wf, [e])
        assert applied.diff and applied.version_id != wf.version_id
        assert parse_edit(json.loads(e.model_dump_json())) == e
        # the version is data: saved and loaded, it is the same version
        again = Workflow.model_validate_json(applied.workflow.model_dump_json())
        assert again.version_id == applied.version_id
    with_demo = apply_edits(wf, [edits[0]]).workflow
    assert with_demo.by_id["solve"].params["demos"] == [demo.model_dump()]
    with pytest.raises(EditRejected, match="no demonstration chosen"):
        AddDemonstrations(node="solve").apply(wf)
    with pytest.raises(EditRejected, match="takes no rules"):
        AddRule(node="format", text=RULE).apply(wf)
    with pytest.raises(EditRejected, match="checked already"):
        CheckThenEscalate(node="solve").apply(apply_edits(wf, [edits[2]]).workflow)
    code = seed("code")  # its Format extracts by rule: nothing to repair
    with pytest.raises(EditRejected, match="by rule already"):
        RepairExtraction(node="format").apply(code)


def test_the_prior_ranks_cheap_edits_by_the_modes_kind():
    wf = seed("math")

    def ops(cls: str, kind: str) -> list[str]:
        t = Target("m", "label", "solve", "ChainOfThought", cls, ("t1",), 0.1, kind=kind)
        return [e.op for e, _ in prior_edits(wf, t, "math")]

    assert ops("wrong_answer", "arithmetic_slip")[0] == "check_then_escalate"
    assert "add_demonstrations" not in ops("wrong_answer", "arithmetic_slip")
    assert ops("wrong_answer", "misread_question")[0] == "add_demonstrations"
    assert ops("no_answer", "extraction_format")[0] == "repair_extraction"


# --- run-time behaviour and cost -------------------------------------------------------------
def test_demos_and_rules_reach_the_prompt(scripted):
    scripted.reply = world
    wf = apply_edits(seed("math"), [
        AddDemonstrations(node="solve", demos=(Demo(task_id="t3", input="What is 3 + 1?",
                                                    output="\\boxed{4}"),)),
        AddRule(node="solve", text=RULE)]).workflow
    [trace] = asyncio.run(Executor(LLM("scripted/m")).run_many(wf, TASKS[1:2],
                                                               evaluate=evaluate))
    prompt = scripted.calls[0][-1]["content"]
    assert prompt.startswith("Worked example:\nProblem:\nWhat is 3 + 1?")
    assert f"Rule: {RULE}" in prompt and trace.outcome.passed


def test_check_then_escalate_pays_for_the_ensemble_only_on_disagreement(scripted):
    scripted.reply = world  # CoT right on i % 3 == 0; the program always right
    wf = apply_edits(seed("math"), [CheckThenEscalate(node="solve", n=3)]).workflow
    agree, disagree = TASKS[3], TASKS[4]
    traces = asyncio.run(Executor(LLM("scripted/m")).run_many(wf, [agree, disagree],
                                                              evaluate=evaluate))
    calls = [CostPerRun.of([t]).calls for t in traces]
    assert calls == [2, 5]  # CoT + program (Format by rule); 3 samples more on a disagreement
    assert [t.outcome.passed for t in traces] == [True, False]  # CoT samples agree, wrongly
    [check] = [s for s in traces[0].spans if s.node_id == "crosscheck"]
    assert check.outputs["agreed"] is True
    assert wf.by_id["format"].params["llm"] is False
    # the loop's projection counts the fewest calls; its budget check the most
    assert llm_calls_per_run(wf, least=True) == 2 and llm_calls_per_run(wf) == 5


@pytest.mark.parametrize(("population", "calls_ratio"), [
    ({"passes": 9, "target": 1}, 1.15),  # mostly agreeing traffic: 0.9 * 2 + 0.1 * 5 calls
    ({"passes": 1, "target": 9}, 2.35)])  # mostly disagreeing traffic: the ensemble's cost
def test_a_verdicts_cost_per_run_weighs_each_stratum_by_its_population_share(
        scripted, population, calls_ratio):
    """Verification samples failures far above their share: an edit that pays only on
    disagreements is charged what it costs on the population, not on the sample (one pass
    and one failure here), in both directions."""
    scripted.reply = world
    wf = apply_edits(seed("math"), [CheckThenEscalate(node="solve", n=3)]).workflow
    agree, disagree = TASKS[3], TASKS[4]
    cand, base = (asyncio.run(Executor(LLM("scripted/m")).run_many(
        w, [agree, disagree], evaluate=evaluate)) for w in (wf, seed("math")))
    plan = Plan({"passes": (agree,), "target": (disagree,)}, {"t3": True, "t4": False},
                population)
    v = Verification(wf.version_id, planned=2, traces=cand)
    v.counts["passes"], v.counts["target"] = Counts(run=1), Counts(run=1, still_failing=1)
    verdict = PairedRule().judge(v, plan, base)
    assert verdict.cost_ratios["calls"] == pytest.approx(calls_ratio)
    assert CostPerRun.of(cand).calls / CostPerRun.of(base).calls == 1.75  # the sample's


def test_repair_extraction_keeps_the_solutions_answer_when_format_loses_it(scripted):
    def reply(messages):
        text = messages[-1]["content"]
        return "I cannot say." if "Give only the final answer" in text else "\\boxed{7}"

    scripted.reply = reply
    task = Task("a", "gsm8k", "What is 6 + 1?", "7")
    for wf, passed in ((seed("math"), False),
                       (apply_edits(seed("math"), [RepairExtraction(node="format")]).workflow,
                        True)):
        [trace] = asyncio.run(Executor(LLM("scripted/m")).run_many(wf, [task],
                                                                   evaluate=evaluate))
        assert trace.outcome.passed is passed


# --- adversaries: demonstrations come from the shown role only ---------------------------
def _traces(scripted, tasks):
    scripted.reply = world
    return {t.task_id: t for t in asyncio.run(Executor(LLM("scripted/m")).run_many(
        seed("math"), tasks, evaluate=evaluate))}


def test_a_verification_input_never_becomes_a_demonstration(scripted):
    tasks = {t.id: t for t in TASKS[:12]}
    traces = _traces(scripted, list(tasks.values()))
    # t0, t3, t6, t9 pass; t3 is the nearest to the member (the same text) but verifies
    roles = {i: "shown" for i in tasks} | {"t3": "verification", "t9": "holdout"}
    tasks["t1"] = Task("t1", "gsm8k", "What is 3 + 1?", "4")  # a member like t3's input
    demos = pick_demonstrations("solve", 4, ("t1",), tasks=tasks, roles=roles, traces=traces,
                                embedder=TextEmbedder())
    assert [d.task_id for d in demos] and {d.task_id for d in demos} <= {"t0", "t6"}
    # a proposer forging a demonstration from a verification input: picked anew, from shown
    forged = AddDemonstrations(node="solve", k=2, demos=(
        Demo(task_id="t3", input=tasks["t3"].input, output="\\boxed{4}"),))
    assert demos_leak(forged, tasks, roles) is not None
    out = materialize(Proposals([Candidate(forged, "llm")]), ("t1",), tasks=tasks,
                      roles=roles, traces=traces, embedder=TextEmbedder)
    [cand] = out.candidates
    assert all(roles[d.task_id] == "shown" for d in cand.edit.demos)
    # none solved among the shown: no candidate, a reason
    none = materialize(Proposals([Candidate(forged, "llm")]), ("t1",), tasks=tasks,
                       roles={i: "verification" for i in tasks}, traces=traces,
                       embedder=TextEmbedder)
    assert not none.candidates and "no shown input" in none.invalid[0].reason


def test_the_loop_accepts_demonstrations_drawn_only_from_shown_inputs(scripted):
    scripted.reply = world
    run, result = _run([FixedProposer(AddDemonstrations(node="solve", k=2))], max_rounds=1)
    assert [a.op for a in result.accepted] == ["add_demonstrations"]
    demos = result.workflow.by_id["solve"].params["demos"]
    assert demos and all(run.roles[d["task_id"]] == "shown" for d in demos)
    verifying = [t.input for t in TASKS if run.roles[t.id] == "verification"]
    shown_as_demo = [c[-1]["content"].split("---")[0] for c in scripted.calls
                     if c[-1]["content"].startswith("Worked example:")]
    assert shown_as_demo and not any(f"Problem:\n{q}\n" in d for q in verifying
                                     for d in shown_as_demo)


def test_the_last_rounds_accepted_version_is_not_rerun_on_every_input(scripted):
    """With no round after it, nothing needs the accepted version's failures: its mass is the
    verified estimate and its calls are the verification's only (a second round re-runs it
    on every input to find the next mode)."""
    scripted.reply = world
    edit = AddDemonstrations(node="solve", k=2)
    asked = {}
    for rounds in (1, 2):
        scripted.calls = []
        _, result = _run([FixedProposer(edit)], max_rounds=rounds)
        asked[rounds] = {c[-1]["content"].split("Problem:\n")[-1] for c in scripted.calls
                         if c[-1]["content"].startswith("Worked example:")}
        if rounds == 1:
            [accepted] = result.accepted
            assert result.mass_after == pytest.approx(
                max(0.0, result.mass_before - accepted.verdict.drop))
    assert 0 < len(asked[1]) < len(TASKS) // 2 and len(asked[2]) > len(TASKS) // 2


# --- adversary: a rule may not paste shown answers --------------------------------------
def _target(examples=()) -> Target:
    return Target("m-1", "solve (ChainOfThought): expected <num>, got <num>", "solve",
                  "ChainOfThought", "wrong_answer", ("t1", "t2"), 0.2, tuple(examples),
                  kind="wrong_operation")


def test_a_rule_is_parsed_and_a_rule_pasting_shown_answers_is_rejected(scripted):
    shown = Counterexample("t1", "Janet has 16 ducks that lay eggs every day and she sells "
                                 "the rest at the market", "18", "0", "expected 18, got 0",
                           "solve")
    target = _target([shown])
    scripted.reply = lambda m: json.dumps({"rule": RULE})
    got = asyncio.run(RuleProposer(LLM("scripted/m")).propose(seed("math"), target, "math", 1))
    [cand] = got.candidates
    assert cand.edit == AddRule(node="solve", text=RULE) and cand.source == "rule"
    assert "Failure mode" in scripted.calls[-1][-1]["content"]
    for bad in ("no JSON here", json.dumps({"rule": "short"}), json.dumps({"text": RULE})):
        scripted.reply = lambda m, bad=bad: bad
        out = asyncio.run(RuleProposer(LLM("scripted/m")).propose(seed("math"), target,
                                                                  "math", 1))
        assert not out.candidates and out.invalid[0].reason.startswith("not a rule")
    paste = AddRule(node="solve", text="Janet has 16 ducks that lay eggs every day: the "
                                       "answer is 18.")
    ok, checked = screen(seed("math"), Proposals([Candidate(paste, "rule")]),
                         [shown.input, shown.expected])
    assert not ok and "copies a counterexample" in checked.invalid[0].reason


# --- the cost-aware pick ----------------------------------------------------------------
def _accepted(drop: float, tokens: float) -> Verdict:
    return Verdict("accepted", 0.001, 8, 0, drop, 0.0, "ok", drop / 2, drop * 1.5, 0.001,
                   {"calls": tokens, "tokens": tokens})


def test_the_pick_is_the_best_drop_per_extra_token_not_the_largest_drop():
    rule = PairedRule()
    ensemble, cheap = _accepted(0.30, 1.45), _accepted(0.20, 1.10)
    assert rule.choose([ensemble, cheap]) == 1  # 0.20 / 0.10 beats 0.30 / 0.45
    assert rule.choose([cheap, ensemble]) == 0
    # within the free share, extra tokens are noise: the larger drop wins
    assert rule.choose([_accepted(0.10, 1.0), _accepted(0.12, 1.03)]) == 1
    assert rule.choose([_accepted(0.2, 1.2), Verdict("rejected", 1, 0, 0, 0.5, 0, "no")]) == 0


def test_the_loop_picks_the_cheaper_of_two_accepted_edits(scripted):
    scripted.reply = world  # the rule fixes every failure, one demonstration 5/6 of them
    run, result = _run([FixedProposer(AddRule(node="solve", text=RULE),
                              AddDemonstrations(node="solve", k=1))], max_rounds=1)
    v = {op: v for _, op, v in result.verdicts}
    rule, demos = v["add_rule"], v["add_demonstrations"]
    assert rule.accepted and demos.accepted and rule.drop > demos.drop
    assert demos.cost_ratios["tokens"] < rule.cost_ratios["tokens"]
    assert f"x{demos.cost_ratios['tokens']:.2f} tokens of the base's" in demos.reason
    # main picked the largest drop (the rule); per extra token the demonstration wins
    assert [a.op for a in result.accepted] == ["add_demonstrations"]
    row = next(r for r in run.journal.edits.values() if r["operation"] == "add_rule")
    assert row["status"] == "rejected" and "per extra token" in row["reject_reason"]


# --- memory of rejected edits across nights -------------------------------------------
USELESS = AddRule(node="solve", text="Write the final answer on its own line at the end.")


def test_a_rejected_edit_is_not_proposed_again_for_the_same_mode(scripted):
    scripted.reply = world
    journal = MemoryJournal()
    first, _ = _run([FixedProposer(USELESS)], journal=journal, max_rounds=1)
    [row] = [r for r in journal.edits.values() if r["night_id"] == first.refine_id]
    assert row["status"] == "rejected" and row["edit_key"] == edit_key(USELESS)
    assert json.loads(row["mode_state"])["centroid"]  # the mode's identity, kept
    second, result = _run([FixedProposer(USELESS)], budget=601, journal=journal, max_rounds=1)
    assert second.refine_id != first.refine_id
    [again] = [r for r in journal.edits.values() if r["night_id"] == second.refine_id]
    assert again["status"] == "invalid" and "rejected before" in again["reject_reason"]
    assert not result.verdicts  # never verified again
    # a benchmark's method starts without another refinement's rejections
    third, result = _run([FixedProposer(USELESS)], budget=601, journal=journal, max_rounds=1,
                         remember=False)
    [fresh] = [r for r in journal.edits.values() if r["night_id"] == third.refine_id]
    assert fresh["status"] == "rejected" and [op for _, op, _ in result.verdicts] == ["add_rule"]


def _mode(centroid, failures: int, runs: int, mode_id: str = "m-new") -> Target:
    return Target(mode_id, "label", "solve", "ChainOfThought", "wrong_answer",
                  tuple(f"t{i}" for i in range(failures)), failures / runs,
                  centroid=tuple(centroid), runs=runs)


def test_the_same_mode_is_matched_by_centroid_and_a_changed_one_is_tried_anew():
    v = np.zeros(8)
    v[0] = 1.0
    then = _mode(v, 16, 48, "m-old")
    rows = [{"edit_key": "k", "target_mode_id": "m-old", "mode_state": mode_state(then)}]
    near = v.copy()
    near[1] = 0.2  # another night's id for the same mode (within MATCH_DISTANCE)
    assert rejected_keys(_mode(near, 18, 48), rows) == {"k"}
    far = np.zeros(8)
    far[2] = 1.0
    assert rejected_keys(_mode(far, 16, 48), rows) == set()  # another mode
    assert rejected_keys(_mode(v, 1, 48), rows) == set()  # shrank: it changed
    assert rejected_keys(_mode(v, 40, 48), rows) == set()  # grew: it changed
    noise = _mode((), 4, 24, "noise:solve:wrong_answer")
    rows = [{"edit_key": "n", "target_mode_id": noise.target_id, "mode_state":
             mode_state(noise)}]
    assert rejected_keys(noise, rows) == {"n"}
    assert rejected_keys(_mode((), 4, 24, "noise:format:no_answer"), rows) == set()


def test_the_warehouse_remembers_rejections_but_not_a_beaten_accepted_edit(tmp_path):
    from cegraph.storage import Warehouse
    from cegraph.storage.refinement import RefinementJournal

    with Warehouse(tmp_path) as wh:
        j = RefinementJournal(wh, dataset="gsm8k", model="m")
        base = {"workflow": "w", "base_version_id": "v", "candidate_version_id": "c",
                "target_mode_id": "m-1", "operation": "add_rule", "payload": "{}",
                "rationale": "", "round": 1, "source": "prior", "diff": "",
                "mode_state": '{"centroid": [1.0, 0.0], "failures": 3, "runs": 10}'}
        j.record_edits([
            {**base, "edit_id": "e1", "night_id": "n1", "status": "rejected",
             "reject_reason": "the mass drop is not surely positive", "edit_key": "a"},
            {**base, "edit_id": "e2", "night_id": "n1", "status": "rejected",
             "reject_reason": "not chosen: another accepted edit drops the mass more per "
                              "extra token", "edit_key": "b"},
            {**base, "edit_id": "e3", "night_id": "n1", "status": "undecided",
             "reject_reason": "incomplete evidence", "edit_key": "c"}])
        rows = j.rejected_edits("w", exclude="n2")
        assert [r["edit_key"] for r in rows] == ["a"]
        assert rejected_keys(_mode((1.0, 0.0), 3, 10, "m-9"), rows) == {"a"}
        assert j.rejected_edits("w", exclude="n1") == []  # its own night
        assert j.rejected_edits("other", exclude="n2") == []


def test_the_default_cegraph_proposers_include_the_rule_writer():
    run = Refinement(seed("math"), TASKS, llm=LLM("scripted/x"), budget=Budget(calls=600),
                     embedder=TextEmbedder())
    kinds = [type(p) for p in run.proposers()]
    assert kinds[:2] == [PriorProposer, RuleProposer]


# --- the real small model, end to end --------------------------------------------------------
@pytest.mark.slow
def test_check_then_escalate_and_a_rule_with_the_real_small_model():
    from cegraph.benchmarks import load
    from cegraph.local_model import fetch

    fetch("smollm2-135m")  # cached by `make test`
    llm = LLM("smollm2-135m", concurrency=1)
    tasks = load("gsm8k", n=2, seed=0)
    wf = apply_edits(seed("math"), [AddRule(node="solve", text=RULE),
                                    CheckThenEscalate(node="solve", n=2)]).workflow
    traces = asyncio.run(Executor(llm, concurrency=2).run_many(wf, tasks, evaluate=evaluate))
    for trace in traces:
        assert trace.outcome is not None and trace.output is not None
        spans = {s.node_id: s for s in trace.spans}
        assert f"Rule: {RULE}" in spans["solve"].calls[0].messages[-1]["content"]
        check = spans["crosscheck"]
        assert check.error is None and isinstance(check.outputs["agreed"], bool)
        # measured, not assumed: the check's one call, plus n more only on a disagreement
        assert len(check.calls) == (1 if check.outputs["agreed"] else 3)
        assert CostPerRun.of([trace]).calls == 1 + len(check.calls)  # Format by rule
