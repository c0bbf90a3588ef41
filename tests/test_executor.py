"""Operators, the executor and the LLM layer, with a scripted litellm provider."""

import asyncio
import re

import pytest

from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.graph import Workflow
from cegraph.llm import LLM, BudgetExceeded, MemoryCallStore, Meter
from cegraph.seeds import seed
from cegraph.task import Task
from tests.conftest import last_user

MATH = Task("m1", "gsm8k", "Tom has 3 apples and buys 4 more. How many?", "7")
CODE = Task("c1", "mbpp", "Write add(a, b) returning the sum.",
            "assert add(1, 2) == 3\nassert add(-1, 1) == 0",
            public_tests=("assert candidate(1, 2) == 3",), metadata={"entry_point": "add"})

TEST_REVISE = {
    "name": "code-with-tests",
    "nodes": [
        {"id": "gen", "op": "Generate", "inputs": {"input": "input"}},
        {"id": "test", "op": "Test", "inputs": {"solution": "gen.text"}},
        {"id": "fix", "op": "Revise", "when": "not test.passed",
         "inputs": {"input": "input", "solution": "gen.text", "feedback": "test.feedback"}},
        {"id": "fmt", "op": "Format", "params": {"llm": False},
         "inputs": {"input": "input", "solution": ["fix.solution", "gen.text"]}},
    ],
    "output": "fmt.answer",
}


def run(workflow, tasks, llm, **kw):
    return asyncio.run(Executor(llm, **kw).run_many(workflow, tasks, evaluate=evaluate))


def test_cot_format_trace_is_complete(scripted):
    scripted.reply = lambda m: ("\\boxed{7}" if "final answer" in last_user(m)
                                else "3 + 4 = 7. The answer is \\boxed{7}.")
    llm = LLM("scripted/m")
    [trace] = run(seed("math"), [MATH], llm)
    assert trace.outcome.passed and trace.output == "7"
    assert [s.node_id for s in trace.spans] == ["solve", "format"]
    for span in trace.spans:
        assert span.calls and span.ended >= span.started and span.error is None
        assert span.tokens_out > 0 and span.inputs and span.outputs
    assert trace.llm_calls == 2 == llm.meter.calls


def test_wrong_answer_message_and_truncation(scripted):
    scripted.reply = lambda m: "so the total is \\boxed{12}"
    [trace] = run(seed("math"), [MATH], LLM("scripted/m"))
    assert trace.outcome.failure_class == "wrong_answer"
    assert trace.outcome.message == "expected 7, got 12"
    scripted.finish_reason = "length"
    [cut] = run(seed("math"), [MATH], LLM("scripted/m"))
    assert cut.outcome.failure_class == "truncated"
    assert "cut off at the token limit in ChainOfThought" in cut.outcome.message


def test_test_then_revise_loop(scripted):
    def reply(messages):
        prompt = last_user(messages)
        if "Feedback:" in prompt:  # the Revise call sees the failing assert
            assert "assert add(1, 2) == 3" in prompt  # named as the model writes it
            return "```python\ndef add(a, b):\n    return a + b\n```"
        return "```python\ndef add(a, b):\n    return a - b\n```"

    scripted.reply = reply
    [trace] = run(Workflow.from_dict(TEST_REVISE), [CODE], LLM("scripted/m"))
    spans = {s.node_id: s for s in trace.spans}
    assert spans["test"].outputs["passed"] is False
    assert not spans["fix"].skipped and spans["fix"].calls
    assert trace.outcome.passed, trace.outcome


def test_revise_is_skipped_when_test_passes(scripted):
    scripted.reply = lambda m: "```python\ndef add(a, b):\n    return a + b\n```"
    [trace] = run(Workflow.from_dict(TEST_REVISE), [CODE], LLM("scripted/m"))
    spans = {s.node_id: s for s in trace.spans}
    assert spans["fix"].skipped and not spans["fix"].calls
    assert trace.outcome.passed and len(scripted.calls) == 1


def test_failing_node_is_recorded_not_raised(scripted):
    wf = Workflow.from_dict({"name": "pot", "nodes": [
        {"id": "code", "op": "Programmer", "inputs": {"input": "input"}},
        {"id": "fmt", "op": "Format", "params": {"llm": False},
         "inputs": {"input": "input", "solution": "code.solution"}}], "output": "fmt.answer"})
    scripted.reply = lambda m: "```python\nprint(undefined_name)\n```"
    good = Task("m2", "gsm8k", "2+2?", "4")
    traces = run(wf, [MATH, good], LLM("scripted/m"))
    for trace in traces:
        code, fmt = trace.spans
        assert code.error_type == "OperatorError" and "NameError" in code.error
        assert fmt.skipped and trace.output is None
        assert trace.outcome.failure_class == "exception"
        assert "NameError" in trace.outcome.message


def test_programmer_runs_its_code(scripted):
    wf = Workflow.from_dict({"name": "pot", "nodes": [
        {"id": "code", "op": "Programmer", "inputs": {"input": "input"}}],
        "output": "code.solution"})
    scripted.reply = lambda m: "```python\nprint(3 + 4)\n```"
    [trace] = run(wf, [MATH], LLM("scripted/m"))
    assert trace.output == "7" and trace.outcome.passed


def test_self_consistency_majority_vote(scripted):
    answers = iter(["\\boxed{7}", "\\boxed{9}", "\\boxed{7}", "\\boxed{5}", "\\boxed{7}"])
    scripted.reply = lambda m: next(answers)
    wf = Workflow.from_dict({"name": "sc", "nodes": [
        {"id": "sc", "op": "SelfConsistency", "params": {"n": 5}, "inputs": {"input": "input"}}],
        "output": "sc.solution"})
    llm = LLM("scripted/m", concurrency=1)
    [trace] = run(wf, [MATH], llm)
    assert trace.outcome.passed and len(trace.spans[0].calls) == 5
    assert len({c.key for c in trace.spans[0].calls}) == 5  # distinct samples, distinct keys


def test_review_flags_and_approves(scripted):
    wf = Workflow.from_dict({"name": "rv", "nodes": [
        {"id": "solve", "op": "ChainOfThought", "inputs": {"input": "input"}},
        {"id": "review", "op": "Review", "inputs": {"input": "input",
                                                    "solution": "solve.solution"}},
        {"id": "fix", "op": "Revise", "when": "not review.approved",
         "inputs": {"input": "input", "solution": "solve", "feedback": "review.critique"}}],
        "output": "fix"})
    scripted.reply = lambda m: ("The sum is wrong: 3+4 is 7." if "Check the solution" in
                                last_user(m) else
                                "\\boxed{7}" if "Feedback" in last_user(m) else "\\boxed{8}")
    [trace] = run(wf, [MATH], LLM("scripted/m"))
    assert trace.spans[1].outputs["approved"] is False
    assert trace.outcome.passed


def test_call_store_replays_without_new_calls(scripted):
    scripted.reply = lambda m: "\\boxed{7}"
    store = MemoryCallStore()
    first = LLM("scripted/m", store=store)
    run(seed("math"), [MATH, Task("m3", "gsm8k", "1+6?", "7")], first)
    made = len(scripted.calls)
    assert made == 4 and first.meter.calls == 4
    second = LLM("scripted/m", store=store)
    [a, b] = run(seed("math"), [MATH, Task("m3", "gsm8k", "1+6?", "7")], second)
    assert len(scripted.calls) == made  # zero new calls reached the provider
    assert second.meter.calls == 0 and second.meter.cached_calls == 4
    assert a.outcome.passed and all(c.cached for s in a.spans for c in s.calls)


def test_transient_errors_are_retried(scripted):
    scripted.fail_first = 2
    llm = LLM("scripted/m", max_retries=3)
    done = asyncio.run(llm.complete([{"role": "user", "content": "hi"}]))
    assert done.text == "42" and len(scripted.calls) == 3


def test_retries_give_up_and_the_node_records_it(scripted):
    scripted.fail_first = 10
    [trace] = run(seed("math"), [MATH], LLM("scripted/m", max_retries=1))
    assert trace.spans[0].error_type == "ServiceUnavailableError"
    assert trace.outcome.failure_class == "infrastructure"  # an outage, not the workflow


def test_budget_fails_closed(scripted):
    llm = LLM("scripted/m", meter=Meter(max_tokens=5))
    traces = run(seed("math"), [MATH, MATH], llm, concurrency=1)
    # no call past the budget reaches the provider; the stop is an infrastructure error of
    # the node (cegraph.infrastructure), not the workflow's failure, and not a crash
    # (5 tokens cannot pay any call's worst case, so none is sent)
    assert llm.meter.calls == 0 and not scripted.calls
    stopped = [s for t in traces for s in t.spans if s.error_type == BudgetExceeded.__name__]
    assert stopped and all(s.infrastructure for s in stopped)


def test_litellm_mock_response_path():
    llm = LLM("openai/gpt-4o-mini", mock_response="\\boxed{7}")
    [trace] = run(seed("math"), [MATH], llm)
    assert trace.outcome.passed
    assert re.fullmatch(r"[0-9a-f]{64}", trace.spans[0].calls[0].key)


def test_concurrency_is_bounded(scripted):
    scripted.reply = lambda m: "\\boxed{7}"
    scripted.delay = 0.02  # async: calls really overlap, the loop is never blocked
    tasks = [Task(f"t{i}", "gsm8k", f"{i}+7-{i}?", "7") for i in range(8)]
    traces = run(seed("math"), tasks, LLM("scripted/m", concurrency=8), concurrency=3)
    assert scripted.peak == 3  # the executor's bound, reached and never passed
    assert [t.task_id for t in traces] == [t.id for t in tasks]
    assert all(t.outcome.passed for t in traces)
    scripted.peak = 0
    run(seed("math"), tasks, LLM("scripted/m", concurrency=2), concurrency=8)
    assert scripted.peak == 2  # the LLM's own bound


def test_locus_is_where_the_wrong_answer_was_born(scripted):
    from cegraph.fss.failure import failure_from_trace

    # CoT mentions 12 along the way but concludes 9; Format then boxes 12: Format's fault
    scripted.reply = lambda m: ("\\boxed{12}" if "Solution:" in last_user(m)
                                else "3 * 4 = 12, minus 3 gives \\boxed{9}.")
    [trace] = run(seed("math"), [MATH], LLM("scripted/m"))
    assert failure_from_trace(trace).locus_node == "format"
    # CoT concludes 12 and Format carries it: the CoT node is the locus
    scripted.reply = lambda m: "\\boxed{12}"
    [trace] = run(seed("math"), [MATH], LLM("scripted/m"))
    fail = failure_from_trace(trace)
    assert (fail.locus_node, fail.locus_operator, fail.locus_depth) == ("solve",
                                                                        "ChainOfThought", 1)
    assert failure_from_trace(run(seed("math"), [Task("ok", "gsm8k", "q", "12")],
                                  LLM("scripted/m"))[0]) is None


def test_code_and_qa_seeds_end_to_end(scripted):
    from cegraph.benchmarks import load

    [task] = load("humaneval", n=1, seed=0)
    body = task.metadata["prompt"] + task.metadata["canonical"]
    scripted.reply = lambda m: f"Here you go:\n```python\n{body}\n```"
    [trace] = run(seed("code"), [task], LLM("scripted/m"))
    assert trace.outcome.passed and trace.output.startswith("```python")
    qa = Task("q", "hotpotqa", "Context: ...\n\nQuestion: Capital of France?", "Paris")
    scripted.reply = lambda m: "France's capital is well known.\nAnswer: Paris."
    [trace] = run(seed("qa"), [qa], LLM("scripted/m"))
    assert trace.output == "Paris" and trace.outcome.passed


def test_when_without_port_runs_the_node_when_the_test_failed(scripted):
    def reply(messages):
        if "Feedback:" in last_user(messages):
            return "```python\ndef add(a, b):\n    return a + b\n```"
        return "```python\ndef add(a, b):\n    return a - b\n```"

    scripted.reply = reply
    data = {**TEST_REVISE, "nodes": [
        n if n["id"] != "fix" else {**n, "when": "not test"} for n in TEST_REVISE["nodes"]]}
    [trace] = run(Workflow.from_dict(data), [CODE], LLM("scripted/m"))
    spans = {s.node_id: s for s in trace.spans}
    assert not spans["fix"].skipped and spans["fix"].calls
    assert spans["fmt"].sources == {"input": "input.text", "solution": "fix.solution"}
    assert trace.outcome.passed


class SlowLLM:
    """An LLM whose calls take real time, counting how many are in flight at once."""

    def __init__(self) -> None:
        self.in_flight = self.peak = 0
        self.concurrency = 4  # what an Executor runs at by default

    async def complete(self, messages, **kw):
        from cegraph.llm import Completion

        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        return Completion("k", "slow", messages, {}, 0, "[1] \\boxed{7}", 1, 1, 0.0, 0.05,
                          "stop")


def test_independent_branches_run_concurrently():
    wf = Workflow.from_dict({"name": "fan", "nodes": [
        {"id": "a", "op": "ChainOfThought", "inputs": {"input": "input"}},
        {"id": "b", "op": "ChainOfThought", "inputs": {"input": "input"}},
        {"id": "pick", "op": "ScEnsemble", "inputs": {"input": "input", "a": "a", "b": "b"}}],
        "output": "pick"})
    llm = SlowLLM()
    trace = asyncio.run(Executor(llm).run(wf, MATH))
    assert llm.peak == 2  # a and b overlapped; pick waited for both
    assert [s.node_id for s in trace.spans] == ["a", "b", "pick"]
    assert trace.output == "[1] \\boxed{7}" and trace.spans[2].sources["b"] == "b.solution"


def test_self_consistency_votes_on_normalized_answers(scripted):
    answers = iter(["\\boxed{7}", "\\boxed{18}", "\\boxed{18.0}", "\\boxed{\\$18}", "\\boxed{7}"])
    scripted.reply = lambda m: next(answers)
    wf = Workflow.from_dict({"name": "sc", "nodes": [
        {"id": "sc", "op": "SelfConsistency", "params": {"n": 5}, "inputs": {"input": "input"}}],
        "output": "sc.solution"})
    [trace] = run(wf, [Task("m", "gsm8k", "q", "18")], LLM("scripted/m", concurrency=1))
    assert trace.output == "\\boxed{18}" and trace.outcome.passed  # 3 votes beat 2


@pytest.mark.parametrize("reply, chosen", [
    ("1", 1), ("[2]", 2), ("Candidate 1 is best: 3 of the others agree with it.", 1),
    ("I pick [2]; 0 and 1 disagree.", 2), ("none", 0), ("12", 0)])
def test_llm_vote_reads_the_named_candidate(reply, chosen):
    from cegraph.operators.self_consistency import parse_choice

    assert parse_choice(reply, 3) == chosen


def test_sc_ensemble_picks_the_candidate_the_judge_names(scripted):
    wf = Workflow.from_dict({"name": "ens", "nodes": [
        {"id": "a", "op": "Generate", "params": {"prompt": "A {input}"},
         "inputs": {"input": "input"}},
        {"id": "b", "op": "Generate", "params": {"prompt": "B {input}"},
         "inputs": {"input": "input"}},
        {"id": "pick", "op": "ScEnsemble", "inputs": {"input": "input", "a": "a", "b": "b"}}],
        "output": "pick"})
    scripted.reply = lambda m: {"A": "\\boxed{9}", "B": "\\boxed{7}"}.get(
        last_user(m)[0], "Candidate 1 is best: 2 others agree.")
    [trace] = run(wf, [MATH], LLM("scripted/m"))
    assert trace.output == "\\boxed{7}" and trace.outcome.passed


def test_runs_in_flight_default_to_the_engine_slots(monkeypatch, scripted):
    from cegraph import engine

    monkeypatch.setattr(engine, "cores", lambda: 2)
    assert engine.slots("qwen2.5-coder-1.5b") == 4 and engine.slots("smollm2-135m") == 8
    llm = LLM("smollm2-135m")  # fetched by `make test`
    assert llm.concurrency == 8 and Executor(llm).concurrency == 8
    assert Executor(LLM("scripted/m")).concurrency == 4  # a remote model: 4
    assert Executor(LLM("scripted/m"), concurrency=3).concurrency == 3


def test_the_calls_of_a_run_open_with_the_same_problem_prefix(scripted):
    # the engine keeps evaluated prefixes: solve and format share `Problem:\n<input>\n\n`
    scripted.reply = lambda messages: "\\boxed{4}"
    asyncio.run(Executor(LLM("scripted/m")).run(seed("math"), MATH))
    solve, fmt = (last_user(m) for m in scripted.calls)
    shared = f"Problem:\n{MATH.input}\n\n"
    assert solve.startswith(shared) and fmt.startswith(shared)
