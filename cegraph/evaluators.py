"""Grades a run against its task: pass/fail, a score, and for a failure its class and a message
rich enough to tell failures apart (the failure signature embeds that message).

Failure classes:
- `wrong_answer`: an answer was given and it is wrong (`expected 18, got 16`);
- `no_answer`: no answer could be extracted (a format failure);
- `truncated`: a failed run in which a call that fed the output stopped at its token limit;
- `test_failure`: code that ran but failed an assert (the assert is named);
- `exception`: a node raised, or the code under test raised (type and message);
- `timeout`: a node or the code under test ran out of time;
- `early_exit`: the code under test ended its process before its tests finished;
- `bad_return`: the code under test returned something other than plain data.
QA passes at token F1 >= `QA_PASS_F1` (DROP with its official number normalization).

Code is graded on the asserts the workflow was *not* shown: a task's public tests (what a
`Test` node runs) are removed from its grading asserts, so a workflow cannot pass by fitting
what it saw. `Outcome.passed`/`score` are that hidden-only verdict; `Outcome.score_all` is
the full suite's.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable

from cegraph.answers import (
    drop_tokens,
    extract_answer,
    first_number,
    grader_for,
    is_number,
    math_equal,
    normalize_qa,
    number_answer,
)
from cegraph.benchmarks import extract_code
from cegraph.infrastructure import infrastructure_outcome, is_infrastructure
from cegraph.sandbox import SandboxLimits, run_tests
from cegraph.task import Task
from cegraph.trace import Outcome, Trace

#: Stamped on every outcome; bump it whenever a verdict could change for the same run, so
#: that re-running a slice re-grades its stored runs (the old verdicts stay in the audit
#: trail).
EVALUATOR_VERSION = "3"

QA_PASS_F1 = 0.8
FAILURE_CLASSES = ("wrong_answer", "no_answer", "truncated", "test_failure", "exception",
                   "timeout", "early_exit", "bad_return")


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_truncation(trace: Trace, outcome: Outcome) -> Outcome:
    """A wrong or missing answer is `truncated` only when a call cut off at its token limit
    fed the output (a truncated call in a branch the output did not use changes nothing)."""
    if outcome.passed:
        return outcome
    cut = next((s for s, _ in trace.data_path() if s.truncated), None)
    if cut is not None and outcome.failure_class in ("wrong_answer", "no_answer"):
        outcome.failure_class = "truncated"
        outcome.message = (f"answer cut off at the token limit in {cut.operator} "
                           f"({outcome.message})")
    return outcome


def evaluate(task: Task, trace: Trace, *, grader: str | None = None,
             grade: OutputGrader | None = None) -> Outcome:
    """Grade `trace` against `task`: by the task's grader, or the named one (a key of
    `GRADERS`), or by `grade` (an LLM judge) stamped as `grader`. A run a node of which
    hit an infrastructure error, or whose grading did (the grader's sandbox could not start),
    is `infrastructure`, not a verdict on the workflow (see `cegraph.infrastructure`)."""
    grader = grader or grader_for(task)
    hit = next((s for s in trace.spans if s.infrastructure), None)
    if hit is not None:
        outcome = infrastructure_outcome(hit.error_type or "Error", hit.error or "")
    else:
        try:
            outcome = _grade(task, trace, grade or GRADERS[grader])
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            outcome = infrastructure_outcome(exc.__class__.__name__, str(exc))
    outcome.grader = grader
    outcome.evaluator_version = EVALUATOR_VERSION
    return outcome


def _grade(task: Task, trace: Trace, grade: OutputGrader) -> Outcome:
    # the raiser that left no output: the one on the data path, not any that raised first
    failed = next((s for s, _ in trace.data_path() if s.error), None) or trace.error_span
    if trace.output is None and failed is not None:
        kind = "timeout" if "timeout" in (failed.error or "").lower() else "exception"
        outcome = Outcome(False, 0.0, kind, f"{failed.error_type}: {failed.error}",
                          task.reference if task.kind != "code" else "", "")
    else:
        outcome = _with_truncation(trace, grade(task, trace.output or ""))
    return outcome


# --- math ---------------------------------------------------------------------------------

def grade_number(reference: str, output: str) -> Outcome:
    """GSM8K-style: the first number of the answer (boxed, else the answer line, else the
    last number of the text) against the gold number."""
    answer = extract_answer("math", output) if output else None
    got = first_number(answer) if answer else None
    if got is None:
        return Outcome(False, 0.0, "no_answer", "no number found in the answer", reference,
                       _short(output))
    value = number_answer(got)
    ok = value is not None and abs(value - float(reference)) < 1e-6
    return Outcome(ok, float(ok), None if ok else "wrong_answer",
                   "" if ok else f"expected {reference}, got {got}", reference, got)


def grade_math(reference: str, output: str) -> Outcome:
    """MATH: the boxed (else answer-line) answer, equal to the gold under math-verify."""
    got = extract_answer("math", output) if output else None
    if got is None:
        return Outcome(False, 0.0, "no_answer", "no boxed answer found", reference,
                       _short(output))
    ok = math_equal(got, reference)
    return Outcome(ok, float(ok), None if ok else "wrong_answer",
                   "" if ok else f"expected {reference}, got {got}", reference, got)


# --- code ---------------------------------------------------------------------------------

def _canonical(statement: str, entry: str) -> str | None:
    """An assert as one canonical string, the function under test called `candidate`."""
    try:
        tree = ast.parse(statement.strip())
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == entry:
            node.id = "candidate"
    return ast.unparse(tree)


def hidden_tests(task: Task) -> str:
    """The task's grading test code less every assert its public tests show (each replaced
    by `pass`, so the code keeps its shape and line numbers)."""
    entry = task.entry_point or "candidate"
    shown = {c for c in (_canonical(t, entry) for t in task.public_tests) if c}
    try:
        tree = ast.parse(task.reference)
    except SyntaxError:
        return task.reference
    lines = task.reference.splitlines()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assert) and node.end_lineno is not None
                and _canonical(ast.unparse(node), entry) in shown):
            first = lines[node.lineno - 1]
            indent = first[: len(first) - len(first.lstrip())]
            lines[node.lineno - 1] = f"{indent}pass"
            for i in range(node.lineno, node.end_lineno):
                lines[i] = ""
    return "\n".join(lines)


def grading_suite(task: Task, *, hidden: bool = True) -> str:
    """The test code the judge runs: the hidden asserts only, or (`hidden=False`) all."""
    tests = hidden_tests(task) if hidden else task.reference
    if "def check(candidate" in tests:  # HumanEval
        return f"{tests}\n\ncheck({task.entry_point})\n"
    return tests


def solution_code(task: Task, code: str) -> str:
    """The solution as its own module: a HumanEval body-only completion gets its prompt."""
    if task.dataset == "humaneval" and f"def {task.entry_point}" not in code:
        return task.metadata.get("prompt", "") + code
    return code


GRADING_LIMITS = SandboxLimits(timeout_s=10.0)


def grade_code(task: Task, output: str, limits: SandboxLimits = GRADING_LIMITS) -> Outcome:
    """Pass/fail on the hidden asserts; `score_all` on the full suite (hidden + shown).

    The solution and the tests run in different sandboxed processes (`run_tests`): the
    tests call the solution's function through a channel that carries plain data only, and
    compare in the judge, so the solution can neither see the tests nor fake their result."""
    code = extract_code(output) if output else ""
    if not code.strip():
        return Outcome(False, 0.0, "no_answer", "no code found in the answer", "", "")
    if not task.entry_point:
        return Outcome(False, 0.0, "exception", "the task names no entry point to test", "",
                       _short(code))
    hidden, full = grading_suite(task), grading_suite(task, hidden=False)
    prelude = task.metadata.get("prompt", "") if task.dataset == "humaneval" else ""
    run = run_tests(solution_code(task, code), [hidden] if full == hidden else [hidden, full],
                    entry=task.entry_point, prelude=prelude, limits=limits)
    verdict = run.suites[0]
    if verdict.passed:
        return Outcome(True, 1.0, None, "", "", _short(code), score_all=float(run.passed))
    message = verdict.message
    if verdict.failure_class == "test_failure":
        message = f"AssertionError: {_short(verdict.assertion, 160)}"
    return Outcome(False, 0.0, verdict.failure_class, message, verdict.assertion, _short(code))


# --- QA -----------------------------------------------------------------------------------

def f1(prediction: str, gold: str, *, drop: bool = False) -> float:
    """Token F1; with `drop`, DROP's: its normalization, and 0 when the gold has numbers and
    the prediction none of them."""
    if drop:
        p, g = drop_tokens(prediction), drop_tokens(gold)
        gold_numbers = {t for t in g if is_number(t)}
        if gold_numbers and not gold_numbers & set(p):
            return 0.0
    else:
        p, g = normalize_qa(prediction).split(), normalize_qa(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def grade_qa(reference: str, output: str, *, drop: bool = False) -> Outcome:
    """HotpotQA/DROP: best F1 over the accepted answers (DROP separates them with `|`)."""
    got = extract_answer("qa", output) if output else None
    if not got:
        return Outcome(False, 0.0, "no_answer", "no answer found", reference, "")
    golds = [g.strip() for g in reference.split("|") if g.strip()] or [reference]
    best = max(golds, key=lambda g: f1(got, g, drop=drop))
    score = f1(got, best, drop=drop)
    exact = (drop_tokens(got) == drop_tokens(best) if drop
             else normalize_qa(got) == normalize_qa(best))
    ok = exact or score >= QA_PASS_F1
    return Outcome(ok, score, None if ok else "wrong_answer",
                   "" if ok else f'expected "{_short(best, 60)}", got "{_short(got, 60)}" '
                   f"(F1 {score:.2f})", best, got)


def grade_exact(reference: str, output: str) -> Outcome:
    """Exact match of the answer (SQuAD normalization) with any accepted answer (`|`)."""
    got = extract_answer("qa", output) if output else None
    if not got:
        return Outcome(False, 0.0, "no_answer", "no answer found", reference, "")
    golds = [g.strip() for g in reference.split("|") if g.strip()] or [reference]
    ok = normalize_qa(got) in {normalize_qa(g) for g in golds}
    return Outcome(ok, float(ok), None if ok else "wrong_answer",
                   "" if ok else f'expected "{_short(golds[0], 60)}", got "{_short(got, 60)}"',
                   golds[0], got)


OutputGrader = Callable[[Task, str], Outcome]

#: Each grading rule, by name (`Outcome.grader`), on a task and a run's final output.
GRADERS: dict[str, OutputGrader] = {
    "code": grade_code,
    "math": lambda task, output: grade_math(task.reference, output),
    "number": lambda task, output: grade_number(task.reference, output),
    "qa": lambda task, output: grade_qa(task.reference, output),
    "drop": lambda task, output: grade_qa(task.reference, output, drop=True),
    "exact": lambda task, output: grade_exact(task.reference, output),
}
