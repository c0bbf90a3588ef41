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
