"""Propose-and-Verify: edits, the proposer, incremental verification, the acceptance rule,
the budget, resume, and the CLI's bad inputs (scripted LLM)."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.cli.plus_one import asked, plus_one_world, proposes
from cegraph.evaluator_spec import EvaluatorSpec, grader
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.fss.failure import Failure
from cegraph.fss.signature import SignatureBuilder
from cegraph.llm import LLM, MemoryCallStore
from cegraph.refine.acceptance import DenseNewMode, PairedRule, sign_test
from cegraph.refine.edits import (
    EDIT_OPS,
    AddReviewRevise,
    AddTestRevise,
    EditPrompt,
    EditRejected,
    InsertNode,
    RemoveNode,
    ReplaceOperator,
    Rewire,
    SetParam,
    WrapEnsemble,
    apply_edits,
    overfit,
)
from cegraph.refine.journal import MemoryJournal
from cegraph.refine.loop import Budget, Progress, RefineError, Refinement, Settings, refine
from cegraph.refine.proposer import (
    LLMProposer,
    Target,
    parse_proposals,
    proposal_prompt,
    reply_format,
    screen,
)
from cegraph.refine.verify import Counts, Plan, Verification, Verifier
from cegraph.seeds import seed
from cegraph.task import Task

TASKS = [Task(f"t{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(30)]


# CoT is right on every third problem; the proposer suggests one valid and one invalid edit.
world = plus_one_world(lambda i, _: i % 3 == 0, special=proposes(
    {"op": "set_param", "node": "solve", "param": "temperature", "value": 0.2},
    {"op": "explode"}))

# --- edits ---------------------------------------------------------------------------------
GOOD = [InsertNode(operator="Format", anchor="solve"),
        InsertNode(operator="Generate", anchor="solve", position="before"),
        ReplaceOperator(node="solve", operator="Programmer"),
        WrapEnsemble(node="solve", n=3), AddReviewRevise(node="solve"),
        AddTestRevise(node="solve"), EditPrompt(node="solve", text="Think step by step, briefly."),
        Rewire(node="format", port="solution", sources=["input"]),
        RemoveNode(node="format"), SetParam(node="format", param="llm", value=False)]
BAD = [(InsertNode(operator="Revise", anchor="solve"), "needs inputs"),
       (InsertNode(operator="Format", anchor="nope"), "no node 'nope'"),
       (ReplaceOperator(node="solve", operator="ChainOfThought"), "already runs"),
       (WrapEnsemble(node="format"), "wraps a ChainOfThought"),
       (AddReviewRevise(node="ghost"), "no node 'ghost'"),
       (AddTestRevise(node="ghost"), "no node 'ghost'"),
       (EditPrompt(node="format", text="Answer now."), "no 'instruction'"),
       (Rewire(node="format", port="solution", sources=["ghost"]), "refers to no node"),
       (RemoveNode(node="ghost"), "no node 'ghost'"),
       (SetParam(node="solve", param="max_tokens", value=10), "must be int in")]


@pytest.mark.parametrize("edit", GOOD, ids=lambda e: e.op)
def test_every_edit_applies_to_a_valid_new_version(edit):
    wf = seed("math")
    applied = apply_edits(wf, [edit])
    assert applied.version_id != wf.version_id
    assert applied.diff  # a node-level diff
    applied.workflow.validate_graph()


@pytest.mark.parametrize(("edit", "why"), BAD, ids=lambda e: getattr(e, "op", ""))
def test_every_edit_is_rejected_on_bad_input(edit, why):
    with pytest.raises(EditRejected, match=re.escape(why)):
        apply_edits(seed("math"), [edit])


def test_edits_compose_and_a_no_op_is_rejected():
    wf = seed("math")
    both = apply_edits(wf, [ReplaceOperator(node="solve", operator="Programmer"),
                            SetParam(node="format", param="llm", value=False)])
    assert len(both.diff) == 2
    with pytest.raises(EditRejected, match="already"):
        apply_edits(wf, [SetParam(node="format", param="llm", value=True)])


def test_anti_overfit_rejects_a_prompt_pasting_a_counterexample():
    question = "Janet has 16 ducks that lay eggs every single morning of the week"
    pasted = EditPrompt(node="solve", text=f"Note: {question.lower()}; the answer is 18.")
    fine = EditPrompt(node="solve", text="Check every arithmetic step before answering.")
    assert "copies a counterexample" in overfit(pasted, [question, "18"])
    assert overfit(fine, [question, "18"]) is None
    wf = seed("math")
    from cegraph.refine.proposer import Candidate, Proposals

    ok, out = screen(wf, Proposals([Candidate(pasted, "llm"), Candidate(fine, "llm")]),
                     [question])
    assert [c.edit for c, _ in ok] == [fine]
    assert "copies a counterexample" in out.invalid[0].reason


# --- proposer ------------------------------------------------------------------------------
def test_proposer_records_malformed_and_schema_invalid_replies():
    assert "not the proposal JSON" in parse_proposals("sure! here you go").invalid[0].reason
    got = parse_proposals(json.dumps({"candidates": [
        {"rationale": "a", "edit": {"op": "set_param", "node": "solve", "param": "colour",
                                    "value": 1}},
        {"rationale": "b", "edit": {"op": "wrap_ensemble", "node": "solve", "n": 5}}]}))
    assert [c.edit.op for c in got.candidates] == ["wrap_ensemble"]
    assert "not a valid edit" in got.invalid[0].reason and "param" in got.invalid[0].reason


def test_a_reply_cut_off_at_its_token_limit_keeps_its_complete_candidates():
    """The 0.5B's proposal ran past its token limit mid-candidate: the whole reply was lost."""
    whole = json.dumps({"candidates": [
        {"rationale": "compute it", "edit": {"op": "replace_operator", "node": "solve",
                                             "operator": "Programmer"}},
        {"rationale": "vote", "edit": {"op": "wrap_ensemble", "node": "solve", "n": 5}}]},
        indent=2)
    cut = whole[:whole.index('"vote"') + 3]
    got = parse_proposals(cut)
    assert [c.edit.op for c in got.candidates] == ["replace_operator"]
    assert "kept its 1 complete candidates" in got.invalid[0].reason
    assert got.invalid[0].raw == cut
    nothing = parse_proposals(whole[:40])
    assert not nothing.candidates and "not the proposal JSON" in nothing.invalid[0].reason


def test_the_decoding_schema_requires_every_edits_tag():
    """A grammar built from the schema must not let the model leave out `op` (pydantic's
    schema marks a defaulted tag optional; the 0.5B then wrote edits without one)."""
    variants = reply_format()["schema"]["$defs"]
    tagged = {name: v for name, v in variants.items() if "op" in v.get("properties", {})}
    assert len(tagged) == len(EDIT_OPS)
    assert all(v["required"][0] == "op" for v in tagged.values())


def test_llm_proposer_asks_with_the_schema_and_parses(scripted):
    scripted.reply = lambda m: ("```json\n" + json.dumps({"candidates": [
        {"rationale": "r", "edit": {"op": "remove_node", "node": "format"}}]}) + "\n```")
    target = Target("m-1", "solve: wrong", "solve", "ChainOfThought", "wrong_answer", ("t1",),
                    0.5)
    got = asyncio.run(LLMProposer(LLM("scripted/x")).propose(seed("math"), target, "math", 3))
    assert [c.edit.op for c in got.candidates] == ["remove_node"]
    assert got.candidates[0].source == "llm"
    assert "Target failure mode" in scripted.calls[0][-1]["content"]


@pytest.mark.parametrize("workflow", ["math", "code", "qa"])
@pytest.mark.parametrize("locus", ["", "first"])
def test_every_edit_form_the_proposer_is_shown_names_nodes_of_its_workflow(workflow, locus):
    """A small proposer copies the forms' node names: on MBPP the 1.5B copied 'solve' from
    forms written for the math seed into all 6 of its edits for the code seed (no 'solve')."""
    wf = seed(workflow)
    node = wf.nodes[0].id if locus else ""  # '' is the scalar ablation's aggregate target
    target = Target("m-1", "x", node, wf.nodes[0].op if locus else "", "wrong_answer", ("t1",),
                    0.5)
    prompt = proposal_prompt(wf, target, 3)
    forms = [json.loads(line[2:line.rindex("}") + 1])
             for line in prompt.split("Edit forms:\n")[1].split("\n\n")[0].splitlines()]
    assert [f["op"] for f in forms] == list(EDIT_OPS)
    named = {n for f in forms for key in ("node", "anchor", "sources")
             for n in ([f[key]] if isinstance(f.get(key), str) else f.get(key, []))}
    assert named and named <= set(wf.by_id), named - set(wf.by_id)
    assert f'"node": "{wf.nodes[0].id}"' in prompt


# --- incremental verification --------------------------------------------------------------
def test_verification_reruns_only_the_changed_node_and_its_descendants(scripted):
    scripted.reply = world
    llm = LLM("scripted/x", store=MemoryCallStore())
    tasks = TASKS[:6]
    base = seed("math")
    traces = asyncio.run(Executor(llm).run_many(base, tasks, evaluate=evaluate))
    assert len(scripted.calls) == 12  # solve + format per task
    scripted.calls.clear()
    plan = Plan({"target": tuple(tasks), "others": (), "passes": ()},
                {t.task_id: bool(t.outcome.passed) for t in traces},
                {"target": 6, "others": 0, "passes": 0})
    # only the last node changes: solve replays from the store, format runs anew
    cand = apply_edits(base, [SetParam(node="format", param="max_tokens", value=300)]).workflow
    v = asyncio.run(Verifier(Executor(llm), evaluate).verify(cand, plan))
    assert (v.calls_made, v.calls_replayed, v.calls_full) == (6, 6, 12)
    assert len(scripted.calls) == 6
    assert all("Give only the final answer" in c[-1]["content"] for c in scripted.calls)
    # the first node changes: both nodes run anew
    scripted.calls.clear()
    cand = apply_edits(base, [ReplaceOperator(node="solve", operator="Programmer")]).workflow
    v = asyncio.run(Verifier(Executor(llm), evaluate).verify(cand, plan))
    assert (v.calls_made, v.calls_replayed) == (12, 0)
    assert v.fixed == 4  # every wrong CoT answer is fixed


def test_a_certainly_worse_candidate_stops_early(scripted):
    scripted.reply = world
    llm = LLM("scripted/x", store=MemoryCallStore())
    tasks = TASKS[:12]
    traces = asyncio.run(Executor(llm).run_many(seed("math"), tasks, evaluate=evaluate))
    plan = Plan({"target": tuple(t for t, tr in zip(tasks, traces, strict=True)
                                 if not tr.outcome.passed), "others": (), "passes": ()},
                {t.task_id: bool(t.outcome.passed) for t in traces},
                {"target": 8, "others": 0, "passes": 0})
    best = Verification("best", drop=0.8)
    cand = apply_edits(seed("math"), [SetParam(node="format", param="max_tokens",
                                               value=300)]).workflow
    v = asyncio.run(Verifier(Executor(llm), evaluate, chunk=2).verify(cand, plan, best=best))
    assert v.stopped_early and len(v.traces) < plan.size
    assert v.calls_full > v.calls_made + v.calls_replayed  # unrun inputs count as saved


# --- acceptance ----------------------------------------------------------------------------
def _verification(fixed: int, broken: int, passes_run: int = 20
                  ) -> tuple[Verification, Plan]:
    """A complete verification: `fixed` of `fixed + 2` target members and `broken` of
    `passes_run` passes, the whole verification role sampled."""
    units = [Task(f"u{i}", "gsm8k", "q", "a") for i in range(fixed + 2 + passes_run)]
    plan = Plan({"target": tuple(units[:fixed + 2]), "others": (),
                 "passes": tuple(units[fixed + 2:])}, {},
                {"target": fixed + 2, "others": 0, "passes": passes_run})
    v = Verification("v", planned=plan.size)
    v.counts["target"] = Counts(run=fixed + 2, fixed=fixed)
    v.counts["passes"] = Counts(run=passes_run, broken=broken)
    w = plan.weight
    v.drop = w["target"] * fixed - w["passes"] * broken
    return v, plan


def _judge(rule: PairedRule, fixed: int, broken: int, passes_run: int = 20, new=()):
    v, plan = _verification(fixed, broken, passes_run)
    return rule.decide([rule.judge(v, plan, [], new)], 1)[0]


def test_sign_test_is_exact():
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(6, 1) == pytest.approx(8 / 128)
    assert sign_test(0, 0) == 1.0


def test_a_significant_fix_is_accepted_and_a_fix_with_breaks_rejected():
    rule = PairedRule(alpha=0.05, max_break_rate=0.1)
    good = _judge(rule, 8, 0)
    assert good.accepted and good.p_value < 0.01 and good.ci_low > 0
    noisy = _judge(rule, 6, 4)
    assert not noisy.accepted and "not surely positive" in noisy.reason
    breaking = _judge(rule, 12, 3, passes_run=20)  # significant, 15% broken
    assert breaking.p_value < 0.05 and not breaking.accepted and "breaks" in breaking.reason
    assert rule.choose([noisy, good, breaking]) == 1


class _TextEmbedder:
    """Unit vectors by the failure text: same text, same vector; different texts far apart."""

    name, dim = "fake", 8

    def embed(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


def _failures(message: str, n: int, node: str = "solve") -> list[Failure]:
    return [Failure(f"{message[:4]}{i}", f"r{i}", "w", "v", f"t{i}", node, "ChainOfThought", 1,
                    "exception", message, "", "", 0.0) for i in range(n)]


def test_new_failures_forming_a_new_dense_mode_are_rejected():
    builder = SignatureBuilder(_TextEmbedder())
    known = builder.build(_failures("expected 1, got 2", 1))[0].vector
    check = DenseNewMode(builder, [known])
    assert check(_failures("expected 3, got 4", 4)) is None  # the known mode, renumbered
    why = check(_failures("ZeroDivisionError: division by zero", 4, node="format"))
    assert why and "new dense mode" in why
    rule = PairedRule(new_mode=check)
    verdict = _judge(rule, 9, 1, new=_failures("ZeroDivisionError: x", 4, "format"))
    assert not verdict.accepted and "new dense mode" in verdict.reason


# --- the loop ------------------------------------------------------------------------------
def _refinement(embedder, budget: int, journal=None, store=None, **kw) -> Refinement:
    return Refinement(seed("math"), TASKS, llm=LLM("scripted/x", store=store or MemoryCallStore()),
                      budget=Budget(calls=budget), embedder=embedder,
                      journal=journal or MemoryJournal(), **kw)


def test_refine_fixes_the_dense_mode_and_records_every_step(scripted, embedder):
    scripted.reply = world
    journal = MemoryJournal()
    result = asyncio.run(_refinement(embedder, 600, journal).run())
    assert result.mass_before > 0.5 and result.mass_after == 0.0
    assert [a.op for a in result.accepted] == ["replace_operator"]
    assert result.accepted[0].source == "prior"
    assert result.llm_calls == len(scripted.calls) <= 600
    assert result.verification_calls < result.verification_full
    statuses = {r["status"] for r in journal.edits.values()}
    assert {"accepted", "invalid"} <= statuses  # the proposer's bad edit is kept, with why
    assert any("not a valid edit" in (r["reject_reason"] or "") for r in journal.edits.values())
    assert all("p_value" in v for v in journal.verifications.values())
    assert result.workflow.version_id in journal.versions


def test_a_slow_verification_shows_progress_between_its_chunks(scripted, embedder):
    """A chunk of ensemble runs on the 1.5B took 5.5 minutes without a line: between chunks
    the heartbeat repeats the verify step with the calls spent so far."""
    scripted.reply, scripted.delay = world, 0.02
    seen: list[Progress] = []
    run = _refinement(embedder, 600, settings=Settings(heartbeat_s=0.01),
                      on_progress=seen.append)
    asyncio.run(run.run())
    verify = [(p.candidate, p.message, p.calls) for p in seen if p.step == "verify"]
    said = {(c, m) for c, m, _ in verify}
    assert len(verify) > len(said)  # beats repeat what the last chunk said ...
    assert len(set(verify)) > len(said)  # ... with the calls count moving in between


def test_refine_grades_with_the_given_evaluator_and_charges_its_judge(scripted, embedder):
    """A registered judge grades every run of the loop, and its calls spend the run's budget."""
    def judged(messages: list[dict[str, str]]) -> str:
        text = messages[-1]["content"]
        if text.startswith("You grade the answer"):  # the rubric: the right sum
            i = asked(text)
            ok = re.findall(r"\d+", text.split("Answer:")[-1])[:1] == [str(i + 1)]
            return json.dumps({"passed": ok, "score": float(ok), "explanation": "checked"})
        return world(messages)

    scripted.reply = judged
    judge = LLM("scripted/judge", store=MemoryCallStore())
    spec = EvaluatorSpec(kind="judge", rubric="The answer is the right sum.")
    result = asyncio.run(_refinement(embedder, 600, evaluate=grader(spec, judge),
                                     judge_llm=judge).run())
    judged_calls = [c for c in scripted.calls
                    if c[-1]["content"].startswith("You grade the answer")]
    assert judged_calls and result.mass_before > 0.5 and result.mass_after == 0.0
    assert result.llm_calls == len(scripted.calls)  # the judge's calls are on the one meter


def test_budget_exhaustion_stops_before_overspending(scripted, embedder):
    scripted.reply = world
    result = asyncio.run(_refinement(embedder, 80).run())  # seed eval = 60 calls
    assert result.llm_calls <= 80 and len(scripted.calls) <= 80
    assert result.stop_reason.startswith("budget")
    assert result.accepted == []


def test_a_killed_run_resumes_to_the_same_final_version(scripted, embedder):
    scripted.reply = world
    uninterrupted = asyncio.run(_refinement(embedder, 600).run())
    paid = len(scripted.calls)

    store, journal = MemoryCallStore(), MemoryJournal()
    scripted.calls.clear()
    steps = 0

    def kill_at_third_step(p):
        nonlocal steps
        steps += 1
        if steps == 4:  # evaluate, propose, propose, then the first verification: killed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(_refinement(embedder, 600, journal, store,
                                on_progress=kill_at_third_step).run())
    assert next(iter(journal.finished.values()))["status"] == "interrupted"
    before = len(scripted.calls)
    again = _refinement(embedder, 600, journal, store)
    resumed = asyncio.run(again.run())
    assert resumed.workflow.version_id == uninterrupted.workflow.version_id
    assert resumed.llm_calls == uninterrupted.llm_calls  # earlier attempt's calls charged
    # ... but a tok/s counts only what it generated now
    assert 0 < again.meter.generated_tokens_out < again.meter.tokens_out
    assert len(scripted.calls) == paid  # killed + resumed paid what one run pays
    assert before < paid


def test_scalar_and_random_baselines_run_in_the_same_harness(scripted, embedder):
    scripted.reply = world
    for method in ("scalar", "random"):
        journal = MemoryJournal()
        result = asyncio.run(_refinement(embedder, 300, journal,
                                         settings=Settings(method=method)).run())
        assert result.llm_calls <= 300
        assert all(a.source in ("llm", "random") for a in result.accepted)
        assert {r["source"] for r in journal.edits.values()} == {
            "scalar": {"llm"}, "random": {"random"}}[method]
    # the aggregate target stays open: scalar keeps asking until patience runs out
    journal = MemoryJournal()
    result = asyncio.run(_refinement(embedder, 300, journal,
                                     settings=Settings(method="scalar")).run())
    assert {r["round"] for r in journal.edits.values()} == {1, 2}
    assert result.stop_reason == "mass has not fallen for 2 rounds"


def test_library_refine_rejects_an_empty_dev_set_and_a_tiny_budget(scripted):
    with pytest.raises(RefineError, match="dev set is empty"):
        refine(seed("math"), [], llm=LLM("scripted/x"), budget=Budget(calls=100))
    with pytest.raises(RefineError, match="cannot pay for one verification"):
        refine(seed("math"), TASKS, llm=LLM("scripted/x"), budget=Budget(calls=20))
    assert scripted.calls == []


# --- the CLI -------------------------------------------------------------------------------
@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in range(30)))
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--workflow", "nosuchflow"], "unknown workflow 'nosuchflow'"),
    (["--workflow", "abcdef123456"], "unknown workflow 'abcdef123456'"),
    (["--dev", "0"], "the dev set is empty"),
    (["--budget-calls", "5"], "cannot pay for one verification"),
])
def test_refine_bad_inputs_end_in_one_line_before_any_llm_call(scripted, tmp_path, data_file,
                                                                args, message):
    result = CliRunner().invoke(app, ["refine", "--dataset", "gsm8k", "--data", str(data_file),
                                      "--model", "scripted/x", "--home", str(tmp_path / "h"),
                                      *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.stdout.strip().splitlines()) == 1  # stderr says where the home is
    assert scripted.calls == []


def test_cli_refine_json_then_eval_the_refined_version(scripted, tmp_path, data_file):
    scripted.reply = world
    home = tmp_path / "h"
    out = CliRunner().invoke(app, ["refine", "--dataset", "gsm8k", "--data", str(data_file),
                                   "--model", "scripted/x", "--home", str(home), "--dev", "30",
                                   "--budget-calls", "400", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert "round 1 | verify |" in out.output  # progress, also when stdout is not a terminal
    assert {"seed_version", "version", "mass_before", "mass_after", "accepted_edits",
            "llm_calls", "tokens", "wall_s"} <= set(summary)
    assert summary["accepted_edits"] == ["replace_operator"]
    out = CliRunner().invoke(app, ["eval", "--workflow", summary["version"], "--dataset",
                                   "gsm8k", "--data", str(data_file), "--model", "scripted/x",
                                   "--home", str(home), "--n", "10", "--json"])
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output.strip().splitlines()[-1])
    assert {"accuracy", "failure_mass", "llm_calls", "tokens", "wall_s", "n"} <= set(figures)
    assert figures["accuracy"] == 1.0 and figures["n"] == 10
    rows = CliRunner().invoke(app, ["sql", "SELECT status FROM refinements", "--home",
                                    str(home), "--format", "json"])
    assert '"done"' in rows.output


@pytest.mark.slow
def test_refine_end_to_end_with_the_smallest_real_model(tmp_path):
    from cegraph.local_model import fetch

    fetch("smollm2-135m", progress=lambda _m: None)
    out = CliRunner().invoke(app, ["refine", "--dataset", "gsm8k", "--model", "smollm2-135m",
                                   "--home", str(tmp_path), "--dev", "6",
                                   "--budget-calls", "60", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["llm_calls"] <= 60
    assert summary["mass_after"] <= summary["mass_before"]
