"""Contrastive features: a failed run set beside a right path to the same input.

Where a correct path is known (a GSM8K reference's `<<48/2=24>>` computations, a sample of
the same input that agreed with the majority, the version that passed), the first of its
intermediate values the failing run never produced, and what the run computed instead from
the same operands, say what went wrong: another operation on the same numbers, another
number in the same operation, a step left out, or a run that stopped before the last step.
For code, the failing case's kind (wrong value, exception type, timeout), expected vs got
types, and which inputs fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cegraph.answers import numbers, to_number
from cegraph.benchmarks import extract_code
from cegraph.fss.features import RunDigest
from cegraph.fss.steps import Step, _close, _has, reference_steps, stated_steps, values_in

VERBS = {"+": "adds", "-": "subtracts", "*": "multiplies", "/": "divides"}
INFINITIVE = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}

#: Each contrast kind and its phrase (the operation kinds are built from `VERBS`).
CONTRASTS: dict[str, str] = {
    "other_operand": "used another number than the right path in the same operation",
    "stopped_early": "stopped at an intermediate value of the right path",
    "went_past": "reached the right answer, then went on",
    "missing_step": "never computed a value the right path needs",
    "same_values": "computed every value of the right path",
}


@dataclass(frozen=True)
class Contrast:
    """The failing run against a right path; `kind` is a key of CONTRASTS or
    `operation:<right>:<used>` (e.g. `operation:*:+`)."""

    kind: str
    missing_value: float | None = None  # first right-path value the run never produced
    right_step: str | None = None  # the right path's step that produces it
    used_instead: str | None = None  # the run's step on the same operands
    extra_steps: int = 0  # run steps beyond the right path's count (negative: fewer)

    @property
    def text(self) -> str:
        if self.kind.startswith("operation:"):
            _, right, used = self.kind.split(":")
            return f"{VERBS[used]} where it should {INFINITIVE[right]}"
        return CONTRASTS[self.kind]

    def row(self) -> dict[str, object]:
        return {"contrast": self.kind, "contrast_missing_value": self.missing_value,
                "contrast_right_step": self.right_step,
                "contrast_used_instead": self.used_instead,
                "contrast_extra_steps": self.extra_steps}


def _same_operands(a: Sequence[float], b: Sequence[float]) -> bool:
    return sorted(a) == sorted(b)


def contrast_math(reasoning: str, observed: str, right: Sequence[Step],
                  expected: str) -> Contrast | None:
    """Compare a run's reasoning with a right path's steps; None without a right path."""
    if not right:
        return None
    ran = stated_steps(reasoning)
    produced = values_in(reasoning) + [s.value for s in ran]
    got = to_number(numbers(observed)[0]) if numbers(observed) else None
    want = to_number(expected) if expected else right[-1].value
    extra = len(ran) - len(right)
    results = [v for s in ran for v in (s.stated, s.value)]
    if want is not None and _has(results, want):
        return Contrast("went_past", extra_steps=extra)
    missing = next((s for s in right if not _has(produced, s.value)), None)
    if missing is None:
        return Contrast("same_values", extra_steps=extra)
    if got is not None and any(_close(got, s.value) for s in right[:-1]):
        return Contrast("stopped_early", missing.value, missing.expression, extra_steps=extra)
    for s in ran:
        if _same_operands(s.operands, missing.operands) and s.operator != missing.operator:
            return Contrast(f"operation:{missing.operator}:{s.operator}", missing.value,
                            missing.expression, f"{s.expression} = {s.stated:g}", extra)
    for s in ran:
        shared = [v for v in s.operands if _has(list(missing.operands), v)]
        if (s.operator == missing.operator and shared and len(s.operands) == len(
                missing.operands) and not _same_operands(s.operands, missing.operands)):
            return Contrast("other_operand", missing.value, missing.expression,
                            f"{s.expression} = {s.stated:g}", extra)
    return Contrast("missing_step", missing.value, missing.expression, extra_steps=extra)


def reference_path(solution: str) -> list[Step]:
    """The right path of a worked solution: a GSM8K reference's `<<a*b=c>>` annotations, else
    the steps a right run states (a passing run of the same input)."""
    return reference_steps(solution) or stated_steps(solution)


# --- code ---------------------------------------------------------------------------------

#: Each code contrast kind (before its `:` arguments) and its words.
CODE_CONTRASTS: dict[str, str] = {
    "timeout": "does not finish in time",
    "syntax": "the code does not parse",
    "not_defined": "the tested function is not defined (another name)",
    "raises": "raises {0} on a test input",
    "returns_none": "returns nothing where a value is expected",
    "type": "returns a {1} where a {0} is expected",
    "size": "returns a {0} of another length than expected",
    "fails_some": "passes some tests and fails others (an edge of the input)",
    "wrong_value": "returns a wrong value of the right type",
}
_ASSERT = re.compile(r"^\s*assert\s+(.*?)\s*==\s*(.+?)\s*$", re.DOTALL)
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b")


@dataclass(frozen=True)
class CodeContrast:
    """A failing code run against its failing test: `kind` is a key of CODE_CONTRASTS with
    its arguments after `:` (`type:list:tuple`, `raises:TypeError`)."""

    kind: str
    expected_type: str | None = None
    got_type: str | None = None
    got: str | None = None  # the value the code returned on the failing input (repr)
    passed: int | None = None  # of the task's tests, how many pass (when they were run)
    tests: int | None = None

    @property
    def text(self) -> str:
        name, *args = self.kind.split(":")
        return CODE_CONTRASTS[name].format(*args, "", "")

    def row(self) -> dict[str, object]:
        return {"contrast": self.kind, "contrast_expected_type": self.expected_type,
                "contrast_got_type": self.got_type, "contrast_got": self.got,
                "contrast_tests_passed": None if self.tests is None
                else f"{self.passed}/{self.tests}"}


def _literal(source: str) -> tuple[bool, object]:
    import ast

    try:
        return True, ast.literal_eval(source.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _literal_type(source: str) -> str | None:
    ok, value = _literal(source)
    return type(value).__name__ if ok else None


def _size(source: str) -> int | None:
    ok, value = _literal(source)
    return len(value) if ok and isinstance(value, (list, tuple, str, dict, set)) else None


def _passing(solution: str, tests: Sequence[str],
             run: Callable[[str], tuple[str, str]]) -> int | None:
    """How many of these assert statements the solution passes (one sandboxed run)."""
    probe = "".join(f"\ntry:\n    {t.strip()}\n    print('PASS')\nexcept BaseException:\n"
                    f"    print('FAIL')\n" for t in tests)
    stdout, error = run(f"{solution}\n{probe}")
    verdicts = [ln for ln in stdout.splitlines() if ln in ("PASS", "FAIL")]
    return verdicts.count("PASS") if len(verdicts) == len(tests) else None


def contrast_code(d: RunDigest, *, run: Callable[[str], tuple[str, str]] | None = None,
                  tests: Sequence[str] = ()) -> CodeContrast | None:
    """What a failing code run returned on its failing test beside what the test expects:
    the exception it raises, a timeout, its value's type against the expected one (the
    solution called on the failing input in the sandbox through `run`; without `run`, only
    what the message says), and, given the task's `tests` (assert lines), whether it fails
    them all or only some (an edge case). None for a run that is not code."""
    if d.kind != "code":
        return None
    # a failing assert's own AssertionError is a wrong value, not a raise
    exc = _EXCEPTION.match(d.message) if d.failure_class != "test_failure" else None
    if d.failure_class == "timeout":
        return CodeContrast("timeout")
    found = _ASSERT.match(d.expected or "")
    if exc and exc.group(1) in ("SyntaxError", "IndentationError"):
        return CodeContrast("syntax")
    undefined = re.search(r"name '(\w+)' is not defined", d.message)
    if (exc and exc.group(1) == "NameError" and undefined and found
            and re.match(rf"\(*\s*{re.escape(undefined.group(1))}\s*\(", found.group(1))):
        return CodeContrast("not_defined")
    if exc:
        return CodeContrast(f"raises:{exc.group(1)}")
    if not found:
        return None
    call, want = found.group(1), found.group(2)
    want_type = _literal_type(want)
    # the code as the workflow answered it: its last node's output (the stored run output
    # may be shortened)
    answered = next((n.text for n in reversed(d.nodes) if n.text.strip()), d.output)
    solution = extract_code(answered)
    if run is None or not solution.strip():
        return CodeContrast("wrong_value", want_type)
    stdout, error = run(f"{solution}\n\nprint(repr({call}))\n")
    if error:
        raised = _EXCEPTION.match(error.split(": ", 1)[0] + ":") or _EXCEPTION.match(error)
        return CodeContrast(f"raises:{raised.group(1)}" if raised else "wrong_value",
                            want_type)
    got = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    got_type = _literal_type(got)
    if got == "None":
        return CodeContrast("returns_none", want_type, "NoneType", got)
    numeric = {"int", "float"}  # 2 for 2.0 is a wrong value, not another kind of answer
    if want_type and got_type and want_type != got_type and {want_type, got_type} - numeric:
        return CodeContrast(f"type:{want_type}:{got_type}", want_type, got_type, got[:200])
    if _size(want) is not None and _size(got) is not None and _size(want) != _size(got):
        return CodeContrast(f"size:{want_type}", want_type, got_type, got[:200])
    passed = _passing(solution, tests, run) if len(tests) > 1 else None
    return CodeContrast("fails_some" if passed else "wrong_value", want_type, got_type,
                        got[:200], passed, len(tests) if passed is not None else None)


def reference_tests(dataset: str) -> dict[str, list[str]]:
    """The assert lines of each task of a packaged benchmark whose tests are asserts (MBPP),
    by task id; empty for any other dataset."""
    from cegraph.benchmarks import load

    if dataset != "mbpp":
        return {}
    return {t.id: [ln for ln in str(t.reference).splitlines() if ln.startswith("assert")]
            for t in load(dataset)}


def reference_solutions(dataset: str) -> dict[str, str]:
    """The worked reference solution of each task of a packaged benchmark, by task id (GSM8K
    keeps its `<<a*b=c>>` chain of thought); empty for a dataset without one."""
    from cegraph.benchmarks import DATASETS, load

    if dataset not in DATASETS:
        return {}
    return {t.id: str(t.metadata.get("cot") or "") for t in load(dataset)
            if t.metadata and t.metadata.get("cot")}


def contrast_digest(d: RunDigest, solution: str) -> Contrast | None:
    """The contrast of a failed math run with a worked right solution (None: none known)."""
    if d.kind != "math" or not solution:
        return None
    reasoning = [n for n in d.nodes if n.text.strip()]
    if len(reasoning) > 1:
        reasoning = reasoning[:-1]
    return contrast_math("\n".join(n.text for n in reasoning), d.observed,
                         reference_path(solution), d.expected)
