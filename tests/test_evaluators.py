"""Evaluators against known right and wrong answers, on real benchmark rows."""

import json

import pytest

from cegraph.answers import extract_answer, math_equal
from cegraph.benchmarks import DATASETS, load
from cegraph.evaluators import evaluate, grade_code, grade_math, grade_number, grade_qa
from cegraph.task import Task
from cegraph.trace import Trace


def test_gsm8k_right_wrong_and_missing():
    assert grade_number("18", "so she has \\boxed{18}").passed
    assert grade_number("1875", "The answer is 1,875.").passed
    wrong = grade_number("18", "Answer: 16")
    assert (wrong.passed, wrong.failure_class, wrong.message) == (False, "wrong_answer",
                                                                   "expected 18, got 16")
    assert grade_number("18", "I cannot tell").failure_class == "no_answer"


@pytest.mark.parametrize("gold, answer", [
    ("\\frac{1}{2}", "\\dfrac12"), ("135", "135^\\circ"), ("0.5", "\\frac{1}{2}"),
    ("10", "\\text{10 }"), ("x=3", "3")])
def test_math_equivalences(gold, answer):
    assert math_equal(answer, gold)


def test_math_grading_messages():
    assert grade_math("\\frac{1}{2}", "We get \\boxed{\\frac{1}{2}}.").passed
    wrong = grade_math("\\frac{1}{2}", "\\boxed{0.4}")
    assert wrong.message == "expected \\frac{1}{2}, got 0.4"
    assert grade_math("3", "no box here").failure_class == "no_answer"


@pytest.mark.parametrize("dataset", ["humaneval", "mbpp"])
def test_canonical_code_passes_and_broken_code_names_the_assert(dataset):
    tasks = load(dataset, n=4, seed=1)
    for task in tasks:
        solution = task.metadata.get("prompt", "") + task.metadata.get("canonical", "")
        if dataset == "mbpp":
            row_code = _mbpp_code(task)
            assert grade_code(task, f"```python\n{row_code}\n```").passed, task.id
        else:
            assert grade_code(task, solution).passed, task.id
    task = tasks[0]
    broken = f"def {task.entry_point}(*args, **kwargs):\n    return None\n"
    outcome = grade_code(task, broken)
    assert outcome.failure_class == "test_failure"
    assert outcome.message.startswith("AssertionError: assert")


def _mbpp_code(task: Task) -> str:
    import json

    from cegraph.benchmarks import default_data_dir

    for line in (default_data_dir() / "mbpp_validate.jsonl").read_text().splitlines():
        row = json.loads(line)
        if f"mbpp-{row['task_id']}" == task.id:
            return row["code"]
    raise KeyError(task.id)


def test_code_exception_and_timeout_classes():
    task = Task("c", "mbpp", "", "assert f(1) == 1", metadata={"entry_point": "f"})
    boom = grade_code(task, "def f(x):\n    return x / 0\n")
    assert boom.failure_class == "exception" and boom.message.startswith("ZeroDivisionError")
    slow = grade_code(task, "def f(x):\n    while True: pass\n")
    assert slow.failure_class == "timeout"
    assert grade_code(task, "").failure_class == "no_answer"


def test_qa_exact_f1_and_alternatives():
    assert grade_qa("Gesellschaft mit beschränkter Haftung",
                    "Answer: gesellschaft mit beschränkter haftung.").passed
    assert grade_qa("20|twenty", "Answer: twenty").passed
    partial = grade_qa("the Eiffel Tower in Paris", "Answer: Paris")
    assert not partial.passed and 0 < partial.score < 0.8
    assert partial.message.startswith('expected "the Eiffel Tower in Paris", got "Paris"')


@pytest.mark.parametrize("dataset", DATASETS)
def test_loaders_and_seeded_sampling(dataset):
    everything = load(dataset)
    assert len(everything) > 20
    assert all(t.id and t.input and t.reference for t in everything)
    a, b = load(dataset, n=5, seed=3), load(dataset, n=5, seed=3)
    assert [t.id for t in a] == [t.id for t in b]
    assert [t.id for t in a] != [t.id for t in load(dataset, n=5, seed=4)]
    if dataset in ("humaneval", "mbpp"):
        assert all(t.entry_point for t in everything)
        # the shipped public-test file misses a problem or two; the rest must be wired
        assert sum(bool(t.public_tests) for t in everything) >= 0.9 * len(everything)


def test_missing_dataset_says_what_to_do(tmp_path):
    from cegraph.benchmarks import DatasetNotFound

    with pytest.raises(DatasetNotFound, match="CEGRAPH_DATA_DIR"):
        load("gsm8k", path=tmp_path)


def test_packaged_data_is_used_without_any_folder_beside(monkeypatch, tmp_path):
    from cegraph.benchmarks import available, data_file, packaged_data_dir

    monkeypatch.delenv("CEGRAPH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing beside the working directory
    assert str(data_file("gsm8k")).startswith(str(packaged_data_dir()))
    counts = {d.name: d.rows for d in available()}
    assert counts == {"gsm8k": 264, "math": 119, "humaneval": 33, "mbpp": 86,
                      "hotpotqa": 120, "drop": 200}
    assert (packaged_data_dir() / "NOTICE.md").is_file()


def test_data_path_and_env_point_elsewhere(monkeypatch, tmp_path):
    row = {"question": "1+1?", "answer": "#### 2", "id": "mine-1"}
    (tmp_path / "gsm8k_validate.jsonl").write_text(json.dumps(row) + "\n")
    assert [t.id for t in load("gsm8k", path=tmp_path)] == ["mine-1"]
    assert [t.id for t in load("gsm8k", path=tmp_path / "gsm8k_validate.jsonl")] == ["mine-1"]
    monkeypatch.setenv("CEGRAPH_DATA_DIR", str(tmp_path))
    assert [t.reference for t in load("gsm8k")] == ["2"]


def test_malformed_data_is_one_line_naming_path_and_fields(tmp_path):
    from cegraph.benchmarks import DatasetError

    bad = tmp_path / "gsm8k_validate.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "no answer"}\n')
    with pytest.raises(DatasetError, match=r"gsm8k_validate.jsonl:2: missing field\(s\) answer; "
                       "a gsm8k row needs question, answer"):
        load("gsm8k", path=tmp_path)
    bad.write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"gsm8k_validate.jsonl:1: not a JSON object"):
        load("gsm8k", path=tmp_path)


# --- answer equivalence (issue 6, point 10) ------------------------------------------------

@pytest.mark.parametrize("gold, answer", [
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("100", "100\\text{ square units}"),
    ("1+x^2", "x^2+1"), ("\\{1,2\\}", "\\{2,1\\}"), ("16", "\\$16"), ("16", "16.0")])
def test_math_verifier_equivalences(gold, answer):
    assert grade_math(gold, f"\\boxed{{{answer}}}").passed


def test_math_false_passes_are_gone():
    assert not math_equal("2,3", "23")
    assert not grade_number("23", "Answer: 2,3").passed
    assert not grade_math("23", "\\boxed{2,3}").passed


def test_unboxed_answer_line_is_read_whole():
    assert extract_answer("math", "So we get\nAnswer: \\frac12") == "\\frac12"
    assert grade_math("\\frac{1}{2}", "So we get\nAnswer: \\frac12").passed


def test_markdown_answer_line_and_first_number_after_the_marker():
    text = "She picks 6 a day for 3 days.\n**Answer:** 18 apples, 3 times"
    assert extract_answer("math", text) == "18 apples, 3 times"
    assert grade_number("18", text).passed
    assert grade_qa("Paris", "Reasoning...\n**Answer:** Paris").passed


def test_drop_numbers_compare_as_floats():
    assert not grade_qa("25", "Answer: 2.5", drop=True).passed
    assert grade_qa("20.0", "Answer: 20", drop=True).passed
    assert grade_qa("20", "Answer: 20.0", drop=True).passed
    assert not grade_qa("4 touchdowns", "Answer: 5 touchdowns", drop=True).passed


def test_drop_dataset_uses_drop_rules():
    task = Task("d", "drop", "passage", "25")
    trace = Trace("r", "w", "v", "d", [], "Answer: 2.5", 0.0, 0.0)
    assert not evaluate(task, trace).passed


def test_a_runaway_math_check_is_killed_not_waited_for(monkeypatch):
    import time

    from cegraph import math_equivalence

    monkeypatch.setattr(math_equivalence, "CHECK_TIMEOUT_S", 1.0)
    start = time.time()
    assert not math_equivalence.verified_equal("5", "9^{9^{9}}")
    assert time.time() - start < 30
    assert math_equivalence.verified_equal("1+x^2", "x^2+1")  # a fresh worker takes over


def test_outcome_carries_evaluator_version_and_grader():
    from cegraph.evaluators import EVALUATOR_VERSION

    trace = Trace("r", "w", "v", "t", [], "\\boxed{7}", 0.0, 0.0)
    outcome = evaluate(Task("t", "gsm8k", "q", "7"), trace)
    assert outcome.passed and outcome.evaluator_version == EVALUATOR_VERSION
    assert outcome.grader == "number" and outcome.score_all == 1.0


# --- hidden grading asserts (issue 6, point 12) --------------------------------------------

LEAKY = Task("c1", "mbpp", "Write add(a, b).",
             "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4",
             public_tests=("assert candidate(1, 2) == 3",), metadata={"entry_point": "add"})


def test_grading_ignores_the_shown_assert():
    # wrong only on the shown assert: the hidden-only verdict passes, the full suite does not
    wrong_on_shown = "def add(a, b):\n    return 0 if (a, b) == (1, 2) else a + b\n"
    outcome = grade_code(LEAKY, wrong_on_shown)
    assert outcome.passed and outcome.score == 1.0 and outcome.score_all == 0.0
    # fitting only what it was shown passes nothing that is graded
    fitted = "def add(a, b):\n    return 3\n"
    assert not grade_code(LEAKY, fitted).passed
    right = grade_code(LEAKY, "def add(a, b):\n    return a + b\n")
    assert right.passed and right.score_all == 1.0


@pytest.mark.parametrize("dataset", ["mbpp", "humaneval"])
def test_no_public_assert_is_graded(dataset):
    import ast

    from cegraph.evaluators import _canonical, hidden_tests

    for task in load(dataset):
        shown = {_canonical(t, task.entry_point) for t in task.public_tests}
        graded = [n for n in ast.walk(ast.parse(hidden_tests(task))) if isinstance(n, ast.Assert)]
        assert graded, task.id  # something is left to grade
        assert not shown & {_canonical(ast.unparse(n), task.entry_point) for n in graded}
