"""The step checker and the contrastive features (cegraph.fss.steps, cegraph.fss.contrast)."""

from cegraph.fss.contrast import contrast_math, reference_path
from cegraph.fss.features import NodeOutput, RunDigest
from cegraph.fss.steps import check_digest, check_steps, evaluate, stated_steps

Q = "Tom buys 3 boxes of 12 eggs at $2 a box. How many eggs does he have?"


def test_stated_steps_are_recomputed_exactly_in_every_written_form():
    text = ("He has 3 * 12 = 36 eggs. $3 x 12 = $38. \\(3 \\times 2 = 6\\). <<48/2=24>> "
            "and 20% of 50 = 10, \\frac{9}{3} = 3; 1,200 + 300 = 1,500.")
    found = [(s.expression.replace(" ", ""), s.stated, s.correct) for s in stated_steps(text)]
    assert ("3*12", 36.0, True) in found
    assert ("3*12", 38.0, False) in found
    assert ("48/2", 24.0, True) in found
    assert any(e.startswith("20%") and ok for e, _, ok in found)
    assert ("1200+300", 1500.0, True) in found
    assert evaluate("1/3 * 3") == 1


def test_a_chained_equation_is_not_read_as_a_wrong_step():
    assert [s.correct for s in stated_steps("600 + 4 * 60 = 600 + 240 = 840")] == [True]


def test_findings_arithmetic_provenance_and_final_answer():
    wrong = check_steps(Q, "3 * 12 = 38 eggs.", "38", "36")
    assert wrong.finding == "arithmetic_error" and wrong.first_wrong_step.startswith("3 * 12")
    invented = check_steps(Q, "3 * 17 = 51 eggs.", "51", "36")
    assert invented.findings == ("unsourced_number",) and invented.unsourced == (17.0,)
    last = check_steps(Q, "3 * 12 = 36 eggs, 36 + 2 = 38.", "36", "36")
    assert "answer_not_last_result" in last.findings
    clean = check_steps(Q, "3 * 12 = 36 eggs.", "36", "36")
    assert clean.findings == ()


def test_code_the_reasoning_never_ran_is_run_and_its_claimed_output_compared():
    text = "```python\nprint(3 * 12)\n```\n```output\n40\n```\nSo \\boxed{40}."
    runs = []

    def run(code: str) -> tuple[str, str]:
        runs.append(code)
        return "36\n", ""

    check = check_steps(Q, text, "40", "36", run=run)
    assert runs == ["print(3 * 12)\n"]
    assert check.finding == "invented_output"
    assert (check.code_claimed, check.code_result) == (40.0, 36.0)
    honest = check_steps(Q, text.replace("40", "36"), "36", "36", run=run)
    assert "invented_output" not in honest.findings


def test_code_runs_in_the_sandbox_not_in_this_process():
    from cegraph.fss.steps import sandbox_runner

    out, err = sandbox_runner("print(6 * 7)")
    assert (out.strip(), err) == ("42", "")


def test_contrast_names_the_other_operation_on_the_same_operands():
    right = reference_path("He has <<3*12=36>>36 eggs.")
    c = contrast_math("3 + 12 = 15 eggs", "15", right, "36")
    assert c.kind == "operation:*:+" and c.text == "adds where it should multiply"
    assert c.missing_value == 36.0 and c.used_instead == "3 + 12 = 15"


def test_contrast_other_operand_stopped_early_and_went_past():
    right = reference_path("<<3*12=36>> then <<36-6=30>>")
    assert contrast_math("3 * 10 = 30", "30", right, "30").kind == "went_past"
    assert contrast_math("2 * 12 = 24", "24", right, "30").kind == "other_operand"
    assert contrast_math("3 * 12 = 36", "36", right, "30").kind == "stopped_early"
    assert contrast_math("so 99", "99", right, "30").kind == "missing_step"
    assert contrast_math("so 99", "99", [], "30") is None


def test_check_digest_reads_the_reasoning_node_not_the_formatter():
    d = RunDigest("r", "t", "math", Q, (NodeOutput("solve", "ChainOfThought", 0,
                                                   "3 * 12 = 38"),
                                        NodeOutput("format", "Format", 0, "38")),
                  "38", "wrong_answer", "expected 36, got 38", "36", "38")
    assert check_digest(d).finding == "arithmetic_error"
    assert check_digest(RunDigest("r", "t", "code", Q, (), "", "test_failure", "", "",
                                  "")).findings == ()


# --- the dominant finding, recipes and mode words ------------------------------------------

def _reading(findings=(), contrast=None):
    from cegraph.fss.finding import Reading
    from cegraph.fss.steps import StepCheck

    return Reading(StepCheck(findings=tuple(findings)), contrast)


def test_the_dominant_finding_puts_certain_step_evidence_before_the_contrast():
    from cegraph.fss.contrast import Contrast

    op = Contrast("operation:*:+")
    assert _reading(["invented_output"], op).finding().key == "invented_output"
    assert _reading(["answer_not_last_result"], op).finding().words == (
        "adds where it should multiply")
    assert _reading(["answer_not_last_result"], Contrast("missing_step")).finding().key == (
        "answer_not_last_result")
    assert _reading(["unsourced_number"], Contrast("other_operand")).finding().key == (
        "other_operand")
    assert _reading(["unsourced_number"], op).finding(contrast=False).key == (
        "unsourced_number")
    assert _reading().finding() is None


def test_a_mode_is_named_by_its_members_most_common_finding():
    from cegraph.fss.finding import Finding, mode_kind

    add = Finding("operation:*:+", "adds where it should multiply")
    found = {f"f{i}": add for i in range(6)} | {"g": Finding("missing_step", "never")}
    assert mode_kind([f"f{i}" for i in range(6)], found) == (
        "adds where it should multiply, 6 runs")
    assert mode_kind(["f0", "f1", "g"], found) == "adds where it should multiply, 2 of 3 runs"
    assert mode_kind(["x"], found) is None


def test_step_recipes_embed_the_finding_words_and_fall_back_to_features():
    from cegraph.fss.contrast import Contrast
    from cegraph.fss.diagnosis import DiagnosisRecord
    from cegraph.fss.failure import Failure
    from cegraph.fss.finding import OPERATION
    from cegraph.fss.recipe import (
        CONTRAST_DIAGNOSIS,
        MESSAGE_STEPS_CONTRAST,
        STEPS,
        STEPS_CONTRAST,
        apply_recipe,
        uses_diagnosis,
    )

    f = Failure("f1", "r1", "wf", "v1", "t1", "solve", "ChainOfThought", 1, "wrong_answer",
                "expected 36, got 15", "36", "15", 0.0)
    g = Failure("f2", "r2", "wf", "v1", "t2", "solve", "ChainOfThought", 1, "wrong_answer",
                "expected 36, got 15", "36", "15", 0.0)
    readings = {"f1": _reading(["unsourced_number"], Contrast("operation:*:+"))}
    texts = {r: apply_recipe([f, g], r, features={"f2": "a feature"}, readings=readings)[1]
             for r in (STEPS, STEPS_CONTRAST, MESSAGE_STEPS_CONTRAST)}
    assert texts[STEPS]["f1"] == "used a number that is neither in the question nor computed"
    # one kind of error whichever the operations (the mode's words name them)
    assert texts[STEPS_CONTRAST]["f1"] == OPERATION
    assert texts[MESSAGE_STEPS_CONTRAST]["f1"].endswith(f"; {OPERATION}")
    assert texts[MESSAGE_STEPS_CONTRAST]["f1"].startswith("[wrong_answer] expected <NUM>")
    assert texts[STEPS]["f2"] == "a feature"
    assert uses_diagnosis(CONTRAST_DIAGNOSIS)
    record = DiagnosisRecord("f1", "r1", "m+contrast", "h", True, "solve", "ChainOfThought",
                             1, 2, "wrong_operation", "added", "{}", None, "k", True, 1.0)
    seen, diag = apply_recipe([f, g], CONTRAST_DIAGNOSIS, diagnoses={"f1": record},
                              readings=readings)
    assert diag["f1"] == "applied the wrong operation or formula"
    assert diag["f2"] == "[wrong_answer] expected <NUM>, got <NUM>"


# --- the contrastive diagnosis --------------------------------------------------------------

def test_contrastive_diagnosis_shows_the_right_path_and_is_kept_apart(scripted):
    import json

    from cegraph.fss.diagnosis import CONTRASTIVE, diagnose_pool
    from cegraph.fss.failure import Failure
    from cegraph.llm import LLM
    from tests.conftest import last_user

    class Store:
        def __init__(self):
            self.kept = {}

        def diagnoses(self, ids, model):
            return {i: r for (i, m), r in self.kept.items() if m == model and i in ids}

        def record_diagnoses(self, records):
            self.kept |= {(r.failure_id, r.model): r for r in records}

    d = RunDigest("r", "t1", "math", Q, (NodeOutput("solve", "ChainOfThought", 1,
                                                    "3 + 12 = 15 eggs"),
                                         NodeOutput("format", "Format", 2, "15")),
                  "15", "wrong_answer", "expected 36, got 15", "36", "15")
    failures = [Failure(f"f{i}", "r", "wf", "v1", "t1", "format", "Format", 2,
                        "wrong_answer", "expected 36, got 15", "36", "15", 0.0)
                for i in range(2)]
    scripted.reply = lambda m: json.dumps({"node": "solve", "step": 1,
                                           "kind": "wrong_operation",
                                           "explanation": "added where the path multiplies"})
    store, llm = Store(), LLM("scripted/m", store=None)
    done = diagnose_pool(failures[:1], llm, store, lambda fs: {f.failure_id: d for f in fs},
                         right={"f0": "He has <<3*12=36>>36 eggs."})
    shown = last_user(scripted.calls[-1])
    assert "A correct solution" in shown and "<<3*12=36>>" in shown and "3 + 12 = 15" in shown
    record = done.records["f0"]
    assert record.valid and record.kind == "wrong_operation" and record.step == 1
    assert record.model.endswith(CONTRASTIVE)
    scripted.reply = lambda m: "the first step is wrong"  # no JSON: rejected, kept invalid
    bad = diagnose_pool(failures[1:], llm, store, lambda fs: {f.failure_id: d for f in fs},
                        right={"f1": "Eggs: <<12*3=36>>36."})
    assert not bad.records["f1"].valid and bad.records["f1"].error
    calls = len(scripted.calls)
    again = diagnose_pool(failures, llm, store, lambda fs: {f.failure_id: d for f in fs},
                          right={})
    assert len(scripted.calls) == calls and again.diagnosed == 0


# --- code contrast --------------------------------------------------------------------------

def _code_digest(cls="test_failure", message="", expected="assert f([1, 2]) == (1, 2)"):
    return RunDigest("r", "mbpp-1", "code", "Write f.", (), "def f(x):\n    return x\n",
                     cls, message, expected, "")


def test_code_contrast_runs_the_failing_input_and_compares_types():
    from cegraph.fss.contrast import contrast_code

    def returns(value):
        return lambda code: (f"{value}\n", "")

    c = contrast_code(_code_digest(), run=returns("[1, 2]"))
    assert c.kind == "type:tuple:list" and c.text == "returns a list where a tuple is expected"
    assert contrast_code(_code_digest(), run=returns("None")).kind == "returns_none"
    assert contrast_code(_code_digest(), run=returns("(2, 1)")).kind == "wrong_value"
    shorter = contrast_code(_code_digest(), run=returns("(1,)"))
    assert shorter.text == "returns a tuple of another length than expected"
    assert contrast_code(_code_digest(expected="assert f(1) == 2.5"),
                         run=returns("2")).kind == "wrong_value"  # a number is a number
    raised = contrast_code(_code_digest(), run=lambda code: ("", "TypeError: bad operand"))
    assert raised.text == "raises TypeError on a test input"
    assert contrast_code(_code_digest("exception", "IndexError: list index out of range"),
                         ).kind == "raises:IndexError"
    assert contrast_code(_code_digest("timeout", "timeout")).kind == "timeout"
    assert contrast_code(_code_digest("exception", "NameError: name 'f' is not defined"),
                         ).kind == "not_defined"
    assert contrast_code(_code_digest("exception", "NameError: name 'reduce' is not "
                                      "defined")).kind == "raises:NameError"
    assert contrast_code(_code_digest(message="AssertionError: assert f([1, 2]) == (1, 2)"),
                         ).kind == "wrong_value"


def test_code_contrast_runs_in_the_sandbox():
    from cegraph.fss.contrast import contrast_code
    from cegraph.fss.steps import sandbox_runner

    assert contrast_code(_code_digest(), run=sandbox_runner).kind == "type:tuple:list"


def test_a_passing_run_of_the_same_input_is_the_right_path(tmp_path):
    from cegraph.fss.contrast import contrast_math, reference_path
    from cegraph.storage import Warehouse
    from cegraph.storage.digests import passing_solutions
    from tests.test_diagnosis import math_trace

    wrong = math_trace("3 + 4 = 7 apples.\n7 + 6 = 13 apples.\n\\boxed{13}", "13", run="w")
    right = math_trace("3 * 4 = 12 apples.\n12 + 6 = 18 apples.\n\\boxed{18}", "18", run="p")
    right.version_id = "v2"
    with Warehouse(tmp_path) as wh:
        wh.record_traces([wrong, right], night_id="n", source="benchmark", dataset="gsm8k",
                         model="m")
        found = passing_solutions(wh, "gsm8k", ["t1", "t9"])
        stored = wh.failure_step_findings([f.failure_id for f in wh.failures("math-solver")])
    assert list(found) == ["t1"] and "3 * 4 = 12" in found["t1"] and "18" in found["t1"]
    assert list(stored.values()) == [[]]  # checked at record time: nothing wrong is stated
    c = contrast_math("3 + 4 = 7 apples.\n7 + 6 = 13", "13", reference_path(found["t1"]), "18")
    assert c.text == "adds where it should multiply"


def test_code_contrast_tells_an_edge_case_from_a_wrong_value_on_every_test():
    from cegraph.fss.contrast import contrast_code

    tests = ["assert f([1, 2]) == (1, 2)", "assert f([]) == ()"]

    def run(passing: int):
        def answer(code: str) -> tuple[str, str]:
            if "print('PASS')" in code:
                return "PASS\n" * passing + "FAIL\n" * (len(tests) - passing), ""
            return "(2, 1)\n", ""
        return answer

    some = contrast_code(_code_digest(), run=run(1), tests=tests)
    assert some.kind == "fails_some" and (some.passed, some.tests) == (1, 2)
    assert some.text == "passes some tests and fails others (an edge of the input)"
    assert contrast_code(_code_digest(), run=run(0), tests=tests).kind == "wrong_value"
    from cegraph.fss.steps import sandbox_runner

    real = contrast_code(_code_digest(expected="assert f((1, 2)) == (2, 1)"),
                         run=sandbox_runner, tests=["assert f((1, 2)) == (2, 1)",
                                                    "assert f(()) == ()"])
    assert (real.kind, real.passed, real.tests) == ("fails_some", 1, 2)
