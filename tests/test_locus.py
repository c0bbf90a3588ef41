"""Locus attribution follows the data path the output actually came through (issue 6,
point 2): scripted runs and hand-made traces."""

import asyncio

from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.fss.failure import failure_from_trace
from cegraph.graph import Workflow
from cegraph.llm import LLM, Completion
from cegraph.seeds import seed
from cegraph.task import Task
from cegraph.trace import Span, Trace
from tests.conftest import last_user

MATH = Task("m1", "gsm8k", "Tom has 3 apples and buys 4 more. How many?", "7")
CODE = Task("c1", "mbpp", "Write add(a, b) returning the sum.",
            "assert add(1, 2) == 3\nassert add(-1, 1) == 0",
            public_tests=("assert candidate(1, 2) == 3",), metadata={"entry_point": "add"})


def run_one(workflow, task):
    [trace] = asyncio.run(Executor(LLM("scripted/m")).run_many(workflow, [task],
                                                               evaluate=evaluate))
    return trace, failure_from_trace(trace)


def test_wrong_code_is_blamed_on_the_node_that_wrote_it(scripted):
    scripted.reply = lambda m: ("Sure:\n```python\ndef add(a, b):\n    # subtract\n"
                                "    return a - b\n```")
    trace, failure = run_one(seed("code"), CODE)
    assert failure.failure_class == "test_failure"
    assert (failure.locus_node, failure.locus_operator) == ("generate", "Generate")


def test_math_answer_is_matched_with_the_graders_equivalence(scripted):
    for upstream in ("\\$16", "16.0"):
        scripted.reply = lambda m, up=upstream: ("\\boxed{16}" if "Solution:" in last_user(m)
                                                 else f"3 + 4 ... \\boxed{{{up}}}")
        trace, failure = run_one(seed("math"), MATH)
        assert trace.output == "16" and failure.observed == "16"
        assert failure.locus_node == "solve", upstream


FALLBACK = Workflow.from_dict({"name": "fallback", "nodes": [
    {"id": "gen", "op": "Generate", "inputs": {"input": "input"}},
    {"id": "prog", "op": "Programmer", "inputs": {"input": "input"}},
    {"id": "fmt", "op": "Format", "params": {"llm": False},
     "inputs": {"input": "input", "solution": ["prog.solution", "gen.text"]}}],
    "output": "fmt.answer"})


def test_a_raiser_off_the_data_path_is_not_blamed(scripted):
    scripted.reply = lambda m: ("```python\nprint(undefined)\n```" if "Python program"
                                in last_user(m) else "It is \\boxed{12}.")
    trace, failure = run_one(FALLBACK, MATH)
    spans = {s.node_id: s for s in trace.spans}
    assert spans["prog"].error and spans["fmt"].sources["solution"] == "gen.text"
    assert failure.failure_class == "wrong_answer" and failure.locus_node == "gen"


def _call(finish_reason: str) -> Completion:
    return Completion("k", "m", [], {}, 0, "x", 1, 1, 0.0, 0.0, finish_reason)


def test_truncation_in_a_branch_that_did_not_feed_the_output_changes_nothing():
    spans = [
        Span("a", "ChainOfThought", 1, outputs={"solution": "... 3 + 4 = "},
             sources={"input": "input.text"}, calls=[_call("length")]),
        Span("b", "ChainOfThought", 1, outputs={"solution": "so \\boxed{12}"},
             sources={"input": "input.text"}, calls=[_call("stop")]),
        Span("fmt", "Format", 2, outputs={"answer": "12"},
             sources={"input": "input.text", "solution": "b.solution"}),
    ]
    trace = Trace("r", "w", "v", "m1", spans, "12", 0.0, 1.0, output_ref="fmt.answer")
    trace.outcome = evaluate(MATH, trace)
    failure = failure_from_trace(trace)
    assert trace.outcome.failure_class == "wrong_answer"
    assert failure.locus_node == "b"
    # the same cut on the path is what it was before: truncated, blamed on the cut node
    spans[2].sources["solution"] = "a.solution"
    spans[0].outputs["solution"] = "... 3 + 4 = 12"
    trace.outcome = evaluate(MATH, trace)
    assert trace.outcome.failure_class == "truncated"
    assert failure_from_trace(trace).locus_node == "a"


def test_no_output_is_blamed_on_the_raiser_that_blocked_it():
    spans = [
        Span("review", "Review", 1, error="boom", error_type="RuntimeError"),
        Span("prog", "Programmer", 1, error="program failed", error_type="OperatorError",
             sources={"input": "input.text"}),
        Span("fmt", "Format", 2, skipped=True, sources={"input": "input.text"},
             missing=["prog.solution"]),
    ]
    trace = Trace("r", "w", "v", "m1", spans, None, 0.0, 1.0, output_ref="fmt.answer")
    trace.outcome = evaluate(MATH, trace)
    assert trace.outcome.message == "OperatorError: program failed"
    assert failure_from_trace(trace).locus_node == "prog"
