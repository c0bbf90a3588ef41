"""Signatures that read the trace: trace features, the LLM diagnosis, signature recipes."""

import json

import pytest

from cegraph.evaluators import _with_truncation, grade_number
from cegraph.fss.diagnosis import (
    DiagnosisRecord,
    diagnose_pool,
    kind_label,
    parse_diagnosis,
    prompt,
)
from cegraph.fss.failure import Failure, failure_from_trace
from cegraph.fss.features import RunDigest, digest_from_trace, input_class, trace_features
from cegraph.fss.recipe import DIAGNOSIS, FEATURES, MESSAGE, apply_recipe, check_recipe
from cegraph.llm import LLM, Completion, MemoryCallStore
from cegraph.trace import Span, Trace

QUESTION = "Tom has 3 bags with 4 apples each and buys 6 more apples. How many apples?"


def _call(finish: str = "stop") -> Completion:
    return Completion("k", "m", [], {}, 0, "", 1, 1, 0.0, 0.1, finish)


def math_trace(reasoning: str, answer: str, expected: str = "18", *, cut: bool = False,
               question: str = QUESTION, run: str = "r1") -> Trace:
    solve = Span("solve", "ChainOfThought", 1, inputs={"input": question},
                 outputs={"solution": reasoning}, calls=[_call("length" if cut else "stop")],
                 sources={"input": "input.text"})
    fmt = Span("format", "Format", 2, inputs={"input": question, "solution": reasoning},
               outputs={"answer": answer}, calls=[_call()],
               sources={"input": "input.text", "solution": "solve.solution"})
    trace = Trace(run, "math-solver", "v1", "t1", [solve, fmt], answer, 0.0, 1.0,
                  output_ref="format.answer")
    outcome = grade_number(expected, answer)
    outcome.grader = "number"
    trace.outcome = _with_truncation(trace, outcome)
    return trace


def tags(trace: Trace) -> tuple[str, ...]:
    return trace_features(digest_from_trace(trace)).tags


# --- trace features on hand-made traces -----------------------------------------------------

def test_extraction_slip_expected_reached_but_another_number_reported():
    t = math_trace("3 bags * 4 apples = 12 apples.\n12 + 6 = 18 apples.\n"
                   "The answer is \\boxed{18}.", "12")
    f = trace_features(digest_from_trace(t))
    assert "extraction_slip" in f.tags and "intermediate_answer" in f.tags
    assert (f.expected_at_node, f.expected_at_step) == ("solve", 2)
    assert (f.reported_at_node, f.reported_at_step) == ("solve", 1)
    assert "another number was reported" in f.text


def test_intermediate_answer_reported_instead_of_the_reasonings_final_one():
    t = math_trace("3 * 4 = 12 apples.\n12 + 5 = 17 apples.\n\\boxed{17}", "12")
    assert "intermediate_answer" in tags(t) and "extraction_slip" not in tags(t)
    # the reasoning itself stopped one operation short of the answer
    early = math_trace("3 * 4 = 12 apples in the bags.\nSo \\boxed{12}.", "12")
    assert "one_step_short" in tags(early) and "intermediate_answer" not in tags(early)


def test_factor_of_a_hundred_sign_and_off_by_one():
    question = "A shirt costs 40 dollars; the discount is 10 dollars. What percent is it?"
    t = math_trace("10 / 40 = 0.25\n\\boxed{0.25}", "0.25", "25", question=question)
    f = trace_features(digest_from_trace(t))
    assert "percent_factor" in f.tags and f.answer_ratio == pytest.approx(0.01)
    assert "percent" in f.text
    assert "sign_error" in tags(math_trace("6 - 24 = -18\n\\boxed{-18}", "-18"))
    assert "off_by_one" in tags(math_trace("12 + 5 = 17\n\\boxed{17}", "17"))
    assert "power_of_ten" in tags(math_trace("12 + 168 = 180\n\\boxed{180}", "180"))


def test_truncation_and_not_a_number():
    cut = math_trace("3 bags * 4 apples = 12 apples.\nThen we add", "", cut=True)
    assert cut.outcome.failure_class == "truncated"
    assert tags(cut) == ("cut_at_limit",)
    words = math_trace("Tom has many apples.", "many apples")
    assert words.outcome.failure_class == "no_answer" and "not_a_number" in tags(words)


def test_features_have_no_digits_so_normalization_keeps_them():
    from cegraph.fss.features import INPUT_CLASSES, PHRASES

    assert not any(c.isdigit() for text in [*PHRASES.values(), *INPUT_CLASSES.values()]
                   for c in text)


def _code_digest(cls: str, message: str, expected: str) -> RunDigest:
    return RunDigest("r", "t", "code", "Write f.", (), "```python\ndef f(x): ...\n```", cls,
                     message, expected, "")


def test_code_features_say_how_and_on_which_input():
    wrong = trace_features(_code_digest("test_failure", "AssertionError: assert f([]) == 0",
                                        "assert f([]) == 0"))
    assert wrong.code_outcome == "wrong_values" and wrong.failing_input_class == "empty"
    assert "fails on an empty input" in wrong.text
    named = trace_features(_code_digest("exception", "NameError: name 'f' is not defined",
                                        "assert f(1, 2) == 3"))
    assert named.code_outcome == "raises" and named.exception_type == "NameError"
    assert "wrong_name" in named.tags
    assert trace_features(_code_digest("timeout", "timeout: the tests did not finish in 10s",
                                       "")).code_outcome == "timeout"
    assert input_class("assert f([-1, 2]) == 1") == "negative"
    assert input_class("assert f([[1, 2], [3]]) == 3") == "nested"
    assert input_class("assert f('abc', 2) == 'c'") == "text"
    assert input_class("assert f([1, 2, 3]) == 6") == "typical"


def test_features_are_stored_in_their_columns(tmp_path):
    from cegraph.storage import Warehouse

    t = math_trace("3 * 4 = 12 apples.\n12 + 6 = 18 apples.\n\\boxed{18}", "12")
    with Warehouse(tmp_path) as wh:
        wh.record_traces([t], night_id="n", source="benchmark", dataset="gsm8k", model="m")
        row = wh.rows("SELECT features, feature_tags, expected_at_node, expected_at_step, "
                      "answer_ratio FROM failures")[0]
    assert "another number was reported" in row[0]
    assert "extraction_slip" in row[1] and row[2:4] == ("solve", 2)
    assert row[4] == pytest.approx(12 / 18)


# --- the diagnosis ----------------------------------------------------------------------------

VALID = {"node": "solve", "step": 2, "kind": "arithmetic_slip",
         "explanation": "Added 12 and 6 wrongly. Then it boxed the sum."}


def test_parser_accepts_a_valid_answer_and_rejects_an_invalid_one():
    d, err = parse_diagnosis("Sure:\n" + json.dumps(VALID), ["solve", "format"])
    assert err is None and d.kind == "arithmetic_slip" and d.step == 2
    assert d.explanation == "Added N and N wrongly."  # one sentence, no task numbers
    # LaTeX in the explanation: a backslash JSON does not allow is read as a literal one
    latex = '{"node": "solve", "step": 1, "kind": "wrong_operation", "explanation": ' \
            '"Used \\(x \\times y\\) instead of a sum."}'
    d, err = parse_diagnosis(latex, ["solve"])
    assert err is None and d.explanation == "Used \\(x \\times y\\) instead of a sum."
    for bad, why in ((dict(VALID, kind="bad_luck"), "kind"),
                     (dict(VALID, node="nowhere"), "not a node"),
                     ("{not json", "JSON")):
        text = bad if isinstance(bad, str) else json.dumps(bad)
        d, err = parse_diagnosis(text, ["solve", "format"])
        assert d is None and why in err


class Store:
    def __init__(self):
        self.kept: dict[str, DiagnosisRecord] = {}

    def diagnoses(self, ids, model):
        return {i: r for i, r in self.kept.items() if i in ids and r.model == model}

    def record_diagnoses(self, records):
        self.kept.update({r.failure_id: r for r in records})


def _pool():
    traces = [math_trace("3 * 4 = 12 apples.\n12 + 6 = 19 apples.\n\\boxed{19}", "19",
                         run=f"r{i}") for i in range(3)]
    traces.append(math_trace("3 * 4 = 12.\n\\boxed{12}", "12", run="r9"))
    failures = [failure_from_trace(t) for t in traces]
    digests = {f.failure_id: digest_from_trace(t) for f, t in zip(failures, traces,
                                                                  strict=True)}
    return failures, lambda fs: {f.failure_id: digests[f.failure_id] for f in fs}


def test_one_call_per_distinct_failure_and_a_second_pass_makes_none(scripted):
    failures, digests = _pool()
    scripted.reply = lambda messages: (json.dumps(VALID) if "19" in messages[-1]["content"]
                                       else "I think the model was tired.")
    store, calls = Store(), MemoryCallStore()
    first = diagnose_pool(failures, LLM("scripted/d", store=calls), store, digests)
    assert len(scripted.calls) == 2  # three identical traces share one call
    assert first.diagnosed == 4 and first.calls == 2
    records = first.records
    assert sum(r.valid for r in records.values()) == 3
    [invalid] = [r for r in records.values() if not r.valid]
    assert invalid.raw == "I think the model was tired." and "no JSON" in invalid.error
    assert "arithmetic_slip" in scripted.calls[0][-1]["content"]  # the taxonomy is shown
    again = diagnose_pool(failures, LLM("scripted/d", store=calls), store, digests)
    assert len(scripted.calls) == 2 and again.diagnosed == 0 and again.records == records
    # a store that lost its diagnoses still pays nothing: the call store replays
    replay = diagnose_pool(failures, LLM("scripted/d", store=calls), Store(), digests)
    assert len(scripted.calls) == 2 and replay.calls == 0
    assert {r.kind for r in replay.records.values()} == {"arithmetic_slip", None}


def test_recipe_texts_locus_and_kind_label(scripted):
    failures, digests = _pool()
    scripted.reply = lambda messages: json.dumps(dict(VALID, node="solve"))
    done = diagnose_pool(failures, LLM("scripted/d"), Store(), digests)
    moved = [Failure(**{**f.__dict__, "locus_node": "format", "locus_operator": "Format"})
             for f in failures]
    feats = {f.failure_id: "the reasoning's own final result is wrong" for f in failures}
    texts = {r: apply_recipe(moved, r, features=feats, diagnoses=done.records)
             for r in (MESSAGE, FEATURES, DIAGNOSIS)}
    fid = failures[0].failure_id
    assert texts[MESSAGE][1][fid] == "[wrong_answer] expected <NUM>, got <NUM>"
    assert texts[FEATURES][1][fid].endswith("final result is wrong")
    assert "arithmetic mistake" in texts[DIAGNOSIS][1][fid]
    assert texts[FEATURES][0][0].locus_node == "format"  # no diagnosis, no move
    assert texts[DIAGNOSIS][0][0].locus_node == "solve"  # moved to the diagnosed node
    label = kind_label([f.failure_id for f in failures], [], done.records)
    assert label.startswith("made an arithmetic mistake in a step: Added N and N wrongly.")
    assert label.endswith("(4/4 failures)")
    with pytest.raises(ValueError, match="message\\+features"):
        check_recipe("features")


def test_prompt_shows_the_trace_step_by_step():
    failures, digests = _pool()
    text = prompt(digests(failures[:1])[failures[0].failure_id])
    assert QUESTION in text and "Node `solve` (ChainOfThought):\n  1. 3 * 4 = 12 apples." in text
    assert "Expected answer: 18\nGot: 19" in text


# --- the measurement commands -----------------------------------------------------------------

def test_bench_failures_and_signatures_on_a_home(tmp_path, scripted):
    from typer.testing import CliRunner

    from cegraph.cli.main import app
    from cegraph.storage import Warehouse

    question = "A shirt costs 40 dollars; the discount is 10 dollars. What percent is it?"
    percent = [math_trace("10 / 40 = 0.25\n\\boxed{0.25}", "0.25", "25", question=question,
                          run=f"p{i}") for i in range(4)]
    finals = [math_trace(f"3 * 4 = 12 apples.\n12 + {k} = {12 + k} apples.\n"
                         f"\\boxed{{{12 + k}}}", str(12 + k), run=f"w{k}")
              for k in (8, 13, 23, 28)]
    traces = percent + finals
    for i, t in enumerate(traces):
        t.task_id = f"t{i}"
    with Warehouse(tmp_path) as wh:
        wh.record_traces(traces, night_id="n", source="benchmark", dataset="gsm8k",
                         model="scripted/m@scripted")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps({"dataset": "gsm8k", "task_id": f"t{i}",
                                            "label": "percent" if i < 4 else "arithmetic"})
                                for i in range(8)))
    runner = CliRunner()
    dump = runner.invoke(app, ["bench", "failures", "--home", str(tmp_path), "--json"])
    assert dump.exit_code == 0, dump.output
    rows = [json.loads(line) for line in dump.output.splitlines()]
    assert len(rows) == 8 and {r["question"] for r in rows} == {question, QUESTION}
    assert [n["node"] for n in rows[0]["nodes"]] == ["solve", "format"]
    scripted.reply = lambda messages: json.dumps(VALID)
    out = runner.invoke(app, ["bench", "signatures", "--home", str(tmp_path), "--labels",
                              str(labels), "--json"])
    assert out.exit_code == 0, out.output
    figures = {r["recipe"]: r for r in json.loads(out.output.splitlines()[-1])}
    assert figures["message"]["modes"] == 1 and figures["message"]["ari"] == 0.0
    assert figures["message+features"]["modes"] == 2
    assert figures["message+features"]["ari"] == 1.0
    diag = figures["message+features+diagnosis"]
    assert diag["diagnosis_calls"] == 5 and diag["diagnosed"] == 8  # 4 share one prompt
    again = runner.invoke(app, ["bench", "signatures", "--home", str(tmp_path), "--labels",
                                str(labels), "--json"])
    assert {r["recipe"]: r for r in json.loads(again.output.splitlines()[-1])}[
        "message+features+diagnosis"]["diagnosed"] == 0
    steps = figures["steps+contrast"]  # no reference known for t0..t7: the step checker
    assert steps["modes"] >= 1 and "diagnosis_calls" not in steps
    assert all(k for k in steps["mode_kinds"])
