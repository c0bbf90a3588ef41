"""Grades a run against its task: pass/fail, a score, and for a failure its class and a message
rich enough to tell failures apart (the failure signature embeds that message).

Failure classes:
- `wrong_answer`: an answer was given and it is wrong (`expected 18, got 16`);
- `no_answer`: no answer could be extracted (a format failure);
- `truncated`: a failed run in which an LLM call stopped at its token limit;
- `test_failure`: code that ran but failed an assert (the assert is named);
- `exception`: a node raised, or the code under test raised (type and message);
- `timeout`: a node or the code under test ran out of time.
QA passes at token F1 >= `QA_PASS_F1`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from fractions import Fraction

from cegraph.answers import extract_answer, last_number
from cegraph.benchmarks import extract_code
from cegraph.sandbox import PRELUDE_LINES, SandboxLimits, SandboxResult, run_python
from cegraph.task import Task
from cegraph.trace import Outcome, Trace

QA_PASS_F1 = 0.8
# Stamped on every outcome; bump it whenever a verdict could change, so that re-running a
# slice re-grades its stored runs (the old verdicts stay in the audit trail).
EVALUATOR_VERSION = "1"
FAILURE_CLASSES = ("wrong_answer", "no_answer", "truncated", "test_failure", "exception",
                   "timeout")


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_truncation(trace: Trace, outcome: Outcome) -> Outcome:
    if outcome.passed:
        return outcome
    cut = next((s for s in trace.spans if s.truncated), None)
    if cut is not None and outcome.failure_class in ("wrong_answer", "no_answer"):
        outcome.failure_class = "truncated"
        outcome.message = (f"answer cut off at the token limit in {cut.operator} "
                           f"({outcome.message})")
    return outcome


def evaluate(task: Task, trace: Trace) -> Outcome:
    """Grade `trace` against `task` (dispatches on the task's dataset/kind)."""
    failed = trace.error_span
    if trace.output is None and failed is not None:
        kind = "timeout" if "timeout" in (failed.error or "").lower() else "exception"
        return Outcome(False, 0.0, kind, f"{failed.error_type}: {failed.error}",
                       task.reference if task.kind != "code" else "", "")
    output = trace.output or ""
    if task.kind == "code":
        outcome = grade_code(task, output)
    elif task.dataset == "math":
        outcome = grade_math(task.reference, output)
    elif task.kind == "math":
        outcome = grade_number(task.reference, output)
    else:
        outcome = grade_qa(task.reference, output)
    return _with_truncation(trace, outcome)


# --- math ---------------------------------------------------------------------------------

def _to_number(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return None


def grade_number(reference: str, output: str) -> Outcome:
    """GSM8K-style: the last number of the answer against the gold number."""
    got = last_number(extract_answer("math", output) or "") if output else None
    if got is None:
        return Outcome(False, 0.0, "no_answer", "no number found in the answer", reference,
                       _short(output))
    ok = _to_number(got) is not None and abs(_to_number(got) - float(reference)) < 1e-6
    return Outcome(ok, float(ok), None if ok else "wrong_answer",
                   "" if ok else f"expected {reference}, got {got}", reference, got)


_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^\\circ", "^{\\circ}", "\\%",
               "%", "$", "\\displaystyle")


def normalize_math(text: str) -> str:
    """A canonical string for a MATH answer (units, spacing and LaTeX variants removed)."""
    s = text.strip()
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\mbox\{\s*([^}]*)\}", r"\1", s)
    for token in _LATEX_DROP:
        s = s.replace(token, "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"(\d),(\d\d\d)", r"\1\2", s)
    s = re.sub(r"\((-?\d+(?:\.\d+)?)\)", r"\1", s)  # (3)/(4) -> 3/4
    return s


def math_equal(a: str, b: str) -> bool:
    na, nb = normalize_math(a), normalize_math(b)
    if na == nb:
        return True
    fa, fb = _to_number(na), _to_number(nb)
    return fa is not None and fb is not None and abs(fa - fb) < 1e-6


def grade_math(reference: str, output: str) -> Outcome:
    got = extract_answer("math", output) if output else None
    if got is None:
        return Outcome(False, 0.0, "no_answer", "no boxed answer found", reference,
                       _short(output))
    ok = math_equal(got, reference)
    return Outcome(ok, float(ok), None if ok else "wrong_answer",
                   "" if ok else f"expected {reference}, got {got}", reference, got)


# --- code ---------------------------------------------------------------------------------

_ASSERT = re.compile(r"^\s*(assert .+)$")


def _failing_assert(program: str, result: SandboxResult) -> str | None:
    """The source line of the assert that failed, read off the traceback's line numbers."""
    lines = program.splitlines()
    for lineno in reversed(re.findall(r'File ".*main\.py", line (\d+)', result.stderr)):
        idx = int(lineno) - 1 - PRELUDE_LINES
        if 0 <= idx < len(lines) and (m := _ASSERT.match(lines[idx])):
            return m.group(1).strip()
    return None


def grading_program(task: Task, code: str) -> str:
    entry = task.entry_point or ""
    if task.dataset == "humaneval" and f"def {entry}" not in code:
        code = task.metadata.get("prompt", "") + code  # a body-only completion
    if "def check(candidate" in task.reference:
        return f"{code}\n\n{task.reference}\n\ncheck({entry})\n"
    return f"{code}\n\n{task.reference}\n"


GRADING_LIMITS = SandboxLimits(timeout_s=10.0)


def grade_code(task: Task, output: str, limits: SandboxLimits = GRADING_LIMITS) -> Outcome:
    code = extract_code(output) if output else ""
    if not code.strip():
        return Outcome(False, 0.0, "no_answer", "no code found in the answer", "", "")
    program = grading_program(task, code)
    result = run_python(program, limits=limits)
    if result.ok:
        return Outcome(True, 1.0, None, "", "", _short(code))
    if result.timed_out:
        return Outcome(False, 0.0, "timeout", "timeout: the tests did not finish in "
                       f"{limits.timeout_s:g}s", "", _short(code))
    failed = _failing_assert(program, result)
    if result.error.startswith("AssertionError") and failed:
        return Outcome(False, 0.0, "test_failure", f"AssertionError: {_short(failed, 160)}",
                       failed, _short(code))
    return Outcome(False, 0.0, "exception", result.error, failed or "", _short(code))


# --- QA -----------------------------------------------------------------------------------

def normalize_qa(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_qa(prediction).split(), normalize_qa(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def grade_qa(reference: str, output: str) -> Outcome:
    """HotpotQA/DROP: best F1 over the accepted answers (DROP separates them with `|`)."""
    got = extract_answer("qa", output) if output else None
    if not got:
        return Outcome(False, 0.0, "no_answer", "no answer found", reference, "")
    golds = [g.strip() for g in reference.split("|") if g.strip()] or [reference]
    best = max(golds, key=lambda g: f1(got, g))
    score = f1(got, best)
    exact = normalize_qa(got) == normalize_qa(best)
    ok = exact or score >= QA_PASS_F1
    return Outcome(ok, score, None if ok else "wrong_answer",
                   "" if ok else f'expected "{_short(best, 60)}", got "{_short(got, 60)}" '
                   f"(F1 {score:.2f})", best, got)
