"""Grading re-runs of logged production inputs: the reference graders, the LLM judge (valid
and invalid verdicts, through the scripted provider), and the exclusion counts."""

from __future__ import annotations

import asyncio

import pytest

from cegraph.evaluator_spec import EvaluatorSpec, LoggedRun, gradeable, grader, ungradeable
from cegraph.executor import Executor
from cegraph.llm import LLM, MemoryCallStore
from cegraph.seeds import seed
from cegraph.trace import INFRASTRUCTURE

RUNS = [LoggedRun("r1", "t1", "What is 41 + 1?", "42", passed=False),
        LoggedRun("r2", "t2", "What is 1 + 1?", None, passed=True),
        LoggedRun("r3", "t3", "  ", "3"),
        LoggedRun("r4", "t1", "What is 41 + 1?", "42"),
        LoggedRun("r5", "t5", "Name the capital of France.", "Paris")]


def test_gradeable_excludes_and_counts_by_reason() -> None:
    tasks, excluded = gradeable(RUNS, EvaluatorSpec(kind="numeric"))
    assert [t.id for t in tasks] == ["t1", "t5"]
    assert excluded == {"no_reference": 1, "no_input": 1, "duplicate_input": 1}
    assert all(t.dataset == "production" and t.kind == "math" for t in tasks)
    # a judge needs no reference: only the empty input and the repeat are left out
    tasks, excluded = gradeable(RUNS, EvaluatorSpec(kind="judge", rubric="correct?"))
    assert [t.id for t in tasks] == ["t1", "t2", "t5"]
    assert excluded == {"no_input": 1, "duplicate_input": 1}


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="rubric"):
        EvaluatorSpec(kind="judge")
    with pytest.raises(ValueError, match="judge"):
        EvaluatorSpec(kind="exact", rubric="x")


def _rerun(scripted, spec: EvaluatorSpec, answer: str, verdict: str = "") -> tuple:
    def reply(messages: list[dict[str, str]]) -> str:
        return verdict if "You grade the answer" in messages[-1]["content"] else answer

    scripted.reply = reply
    llm = LLM("scripted/m", store=MemoryCallStore())
    tasks, _ = gradeable(RUNS, spec)
    g = grader(spec, llm)
    traces = asyncio.run(Executor(llm).run_many(seed("math"), tasks[:1], evaluate=g))
    return traces[0], g


@pytest.mark.parametrize(("kind", "answer", "passed"), [
    ("numeric", "\\boxed{42}", True), ("numeric", "\\boxed{41}", False),
    ("exact", "Answer: 42", True), ("f1", "Answer: 43", False)])
def test_reference_graders(scripted, kind: str, answer: str, passed: bool) -> None:
    trace, _ = _rerun(scripted, EvaluatorSpec(kind=kind), answer)
    assert trace.outcome.passed is passed
    assert trace.outcome.grader == {"numeric": "number", "exact": "exact", "f1": "qa"}[kind]


def test_judge_valid_verdicts(scripted) -> None:
    spec = EvaluatorSpec(kind="judge", rubric="The answer must be the correct sum.")
    trace, g = _rerun(scripted, spec, "\\boxed{42}",
                      '{"passed": true, "score": 0.9, "explanation": "the sum is right"}')
    assert trace.outcome.passed and trace.outcome.score == 0.9
    assert trace.outcome.grader == "judge"
    [record] = g.judge.records
    assert record.valid and record.passed and record.call_key
    # the verdict is a call like any other: in the call store, replayed next time
    assert g.judge.llm.store.get(record.call_key).text.startswith('{"passed": true')
    trace, g = _rerun(scripted, spec, "\\boxed{41}",
                      'Verdict: {"passed": false, "score": 0, "explanation": "off by one"}')
    assert not trace.outcome.passed
    assert trace.outcome.failure_class == "wrong_answer"
    assert trace.outcome.message == "judge: off by one"
    assert ungradeable([trace]) == 0


@pytest.mark.parametrize("verdict", ["I think it is fine.", '{"passed": "maybe"}',
                                     '{"passed": true, "score": 7, "explanation": "ok!"}'])
def test_judge_invalid_verdict_is_recorded_and_ungradeable(scripted, verdict: str) -> None:
    spec = EvaluatorSpec(kind="judge", rubric="The answer must be the correct sum.")
    trace, g = _rerun(scripted, spec, "\\boxed{42}", verdict)
    o = trace.outcome
    # not a verdict on the workflow: no failure, not in verification's counts
    assert o.failure_class == INFRASTRUCTURE and o.message.startswith("ungradeable:")
    [record] = g.judge.records
    assert not record.valid and record.raw == verdict and record.error
    assert ungradeable([trace]) == 1
