"""The step checker: what a math chain of thought computed, checked without an LLM.

A wrong answer's message (`expected 18, got 16`) is the same for every reasoning error; the
steps are not. Each arithmetic step a trace states (`3 * 12 = 36`, `$3 x 12 = $36`,
`<<3*12=36>>`, `20% of 50 = 10`, LaTeX `\\times`, `\\frac{a}{b}`) is recomputed exactly with
fractions; each operand is traced to the question, to an earlier result or to nowhere; the
answer is compared with the last computed value; and a Python block the text writes but
never runs (it states an output instead) is run in the sandbox and its printed number
compared with the one the text claims. The findings are typed (`StepCheck`) and stored in
`failures` (since schema v7); `cegraph.fss.finding` picks, with the contrast against a right
path, the dominant one the `steps` signature recipes embed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cegraph.answers import numbers, to_number
from cegraph.fss.features import RunDigest

#: Each finding and the phrase it adds to a signature, in priority order (the first that
#: holds is a failure's `finding`). No digits, so message normalization keeps them whole.
FINDINGS: dict[str, str] = {
    "cut_at_limit": "the reasoning was cut off at the token limit",
    "invented_output": "stated a program output that running the program does not give",
    "arithmetic_error": "a stated calculation is wrong when recomputed",
    "answer_not_last_result": "reported another number than its own last result",
    "unsourced_number": "used a number that is neither in the question nor computed",
    "unused_question_number": "left a number of the question unused",
    "unit_or_percent": "off by a unit or percent factor the question cues",
}

#: Numbers a step may use without a source: unit factors and small counts.
CONSTANTS = frozenset({0, 1, 2, 3, 4, 5, 7, 10, 12, 24, 30, 52, 60, 100, 365, 1000})
WORD_NUMBERS = {
    "half": 2, "twice": 2, "double": 2, "triple": 3, "thrice": 3, "dozen": 12, "dozens": 12,
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "quarter": 4, "third": 3,
}
_PERCENT_CUE = re.compile(r"%|\bpercent", re.IGNORECASE)
_UNIT_PAIRS = (("minute", "hour"), ("hour", "day"), ("day", "week"), ("week", "year"),
               ("month", "year"), ("cent", "dollar"), ("inch", "feet"), ("inch", "foot"),
               ("dozen", ""), ("gram", "kilogram"), ("second", "minute"))
_UNIT_FACTORS = (100, 60, 24, 7, 12, 52, 365, 1000, 30)

# A stated step: an expression with at least one operator, `=`, a number.
_NUM = r"\d+(?:\.\d+)?"
_STEP = re.compile(rf"((?:[(]\s*)*-?{_NUM}%?(?:\s*[)])*(?:\s*[-+*/]\s*(?:[(]\s*)*-?{_NUM}%?"
                   rf"(?:\s*[)])*)+)\s*=\s*(-?{_NUM})(?!\s*[-+*/(]\s*\(*\d|\d|\.\d)")
_CODE = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.DOTALL)
_OUTPUT = re.compile(r"```output\s*\n(.*?)```", re.DOTALL)
_MISSING = re.compile(r"No module named '([\w]+)")


def normalize(text: str) -> str:
    """A trace's math in plain operators: LaTeX and typographic forms, `$`, thousands commas,
    `x` between numbers and `p% of q` rewritten so that `_STEP` reads them."""
    t = text.replace("\\times", "*").replace("×", "*").replace("\\cdot", "*")
    t = t.replace("\\div", "/").replace("÷", "/").replace("\\%", "%").replace("−", "-")
    t = re.sub(r"\\[d]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", t)
    t = re.sub(r"\\(?:text|mathrm)\{[^{}]*\}", " ", t)
    t = re.sub(r"\\[()\[\]]|\\,|\\!|\\\$|\$", " ", t)
    t = re.sub(r"(?<=\d)(?:,|\{,\})(?=\d{3}\b)", "", t)
    t = re.sub(r"(?<=\d)\s*[xX]\s*(?=[$\d(])", " * ", t)
    t = re.sub(r"(\d+(?:\.\d+)?)\s*%\s*of\s*", r"\1% * ", t)
    t = re.sub(r"(?<=\d)\s+(?:[a-zA-Z]+\s+){0,2}(?=[-+*/=]\s*\(*\s*\d)", " ", t)
    return t


def _fraction(node: ast.AST) -> Fraction:
    """The exact value of a parsed expression of numbers and + - * / (ZeroDivisionError,
    ValueError otherwise)."""
    if isinstance(node, ast.Expression):
        return _fraction(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_fraction(node.operand)
    if isinstance(node, ast.BinOp):
        ops: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
            ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
        if type(node.op) in ops:
            return ops[type(node.op)](_fraction(node.left), _fraction(node.right))
    raise ValueError("not arithmetic")


def evaluate(expression: str) -> Fraction | None:
    """The exact value of `3 * 12`, `20% * 50`, `(4 + 2)/3`; None when it is not arithmetic."""
    expr = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", expression)
    try:
        return _fraction(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


@dataclass(frozen=True)
class Step:
    """One stated computation: `expression = stated`, and its recomputed value."""

    expression: str
    operator: str  # the first of + - * / in the expression (its main kind)
    operands: tuple[float, ...]
    stated: float
    value: float

    @property
    def correct(self) -> bool:
        return _close(self.stated, self.value)


def _close(stated: float, value: float) -> bool:
    """A stated result agrees with the exact value up to the rounding it shows."""
    if abs(stated - value) <= 1e-9 * max(1.0, abs(value)):
        return True
    decimals = len(f"{stated}".split(".")[1].rstrip("0")) if "." in f"{stated}" else 0
    return abs(round(value, decimals) - stated) < 1e-9 or abs(stated - value) <= 0.005 * max(
        1.0, abs(value)) and decimals <= 2 and abs(stated - value) < 1


def _operator(expression: str) -> str:
    body = re.sub(r"^\s*[(\s]*-", "", expression)
    found = re.search(r"[-+*/]", body)
    return found.group(0) if found else "?"


def _step(expression: str, stated: float | None) -> Step | None:
    """The step `expression = stated`, recomputed; None when either side is not a number."""
    value = evaluate(expression)
    if value is None or stated is None:
        return None
    operands = tuple(float(x) for x in re.findall(_NUM, expression))
    return Step(expression.strip(), _operator(expression), operands, stated, float(value))


def stated_steps(text: str) -> list[Step]:
    """Every arithmetic step the text states, in order, recomputed exactly."""
    found = (_step(m.group(1), float(m.group(2))) for m in _STEP.finditer(normalize(text)))
    return [s for s in found if s is not None]


def reference_steps(solution: str) -> list[Step]:
    """A GSM8K reference's computations, `<<48/2=24>>`, in order."""
    found = (_step(expression, to_number(stated.strip()))
             for expression, stated in re.findall(r"<<([^=<>]+)=([^<>]+)>>", solution))
    return [s for s in found if s is not None]


def question_numbers(question: str) -> list[float]:
    """The numbers a question gives, in digits or words (`twice`, `a dozen`, `half`)."""
    found = [v for v in (to_number(n) for n in numbers(question.replace("$", ""))) if
             v is not None]
    found += [float(WORD_NUMBERS[w]) for w in re.findall(r"[a-z]+", question.lower())
              if w in WORD_NUMBERS]
    found += [v / 100 for v in found if v <= 100] + [v * 100 for v in found if v < 1]
    return found


def _has(pool: list[float] | tuple[float, ...], v: float) -> bool:
    return any(abs(x - v) <= 1e-6 * max(1.0, abs(v)) for x in pool)


@dataclass(frozen=True)
class CodeCheck:
    """A Python block the trace wrote and claimed an output for, run in the sandbox."""

    claimed: float | None  # the number the text says it printed (or its boxed answer)
    result: float | None  # the first number it prints when run; None: it printed none
    error: str = ""  # why it did not run to the end

    @property
    def invented(self) -> bool:
        return self.claimed is not None and (
            self.result is None and not self.error or self.result is not None
            and not _close(self.claimed, self.result))


def check_code(text: str, claimed: float | None,
               run: Callable[[str], tuple[str, str]] | None) -> CodeCheck | None:
    """Run the trace's last Python block (`run(code) -> (stdout, error)`, the sandbox) and
    read the number it prints; None when the text has no code or nothing runs it."""
    blocks = _CODE.findall(text)
    if not blocks or run is None:
        return None
    outputs = _OUTPUT.findall(text)
    shown = numbers(outputs[-1]) if outputs else []
    if shown:
        claimed = to_number(shown[0])
    stdout, error = run(blocks[-1])
    missing = _MISSING.search(error)
    if missing:  # traces import sympy and never use it: run without the absent module
        stdout, error = run(re.sub(rf"^\s*(?:import|from)\s+{re.escape(missing.group(1))}\b.*$",
                                   "", blocks[-1], flags=re.MULTILINE))
    printed = numbers(stdout)
    return CodeCheck(claimed, to_number(printed[0]) if printed else None, error)


def sandbox_runner(code: str) -> tuple[str, str]:
    """Run code in cegraph's sandbox (never in this process): its stdout and error line."""
    from cegraph.sandbox import SandboxLimits, run_python

    done = run_python(code, limits=SandboxLimits(timeout_s=5.0, memory_mb=512))
    return done.stdout, "" if done.ok else done.error


@dataclass(frozen=True)
class StepCheck:
    """The step checker's findings on one failed math run; the typed fields are the
    `failures` columns of the same names (since schema v7)."""

    findings: tuple[str, ...] = ()  # keys of FINDINGS that hold, in priority order
    steps_stated: int = 0
    first_wrong_step: str | None = None  # `3 * 12 = 38` (recomputes to 36)
    unsourced: tuple[float, ...] = ()  # operands from neither question nor results
    unused: tuple[float, ...] = ()  # question numbers no step used
    last_result: float | None = None
    code_claimed: float | None = None
    code_result: float | None = None

    @property
    def finding(self) -> str | None:
        return self.findings[0] if self.findings else None

    def row(self) -> dict[str, Any]:
        return {"step_findings": list(self.findings), "step_finding": self.finding,
                "steps_stated": self.steps_stated, "first_wrong_step": self.first_wrong_step,
                "code_claimed": self.code_claimed, "code_result": self.code_result}


def _unit_cues(question: str) -> bool:
    q = question.lower()
    return bool(_PERCENT_CUE.search(q)) or any(a in q and b in q for a, b in _UNIT_PAIRS)


def _unit_factor(observed: float, expected: float) -> bool:
    if not expected or not observed:
        return False
    ratio = abs(observed / expected)
    return any(abs(ratio - f) < 1e-6 * f or abs(ratio * f - 1) < 1e-6 for f in _UNIT_FACTORS)


def check_steps(question: str, reasoning: str, observed: str, expected: str, *,
                truncated: bool = False,
                run: Callable[[str], tuple[str, str]] | None = None) -> StepCheck:
    """Check a math run's reasoning against itself and its question; `run` executes code the
    reasoning wrote (see `sandbox_runner`; None: code is not run)."""
    found: set[str] = set()
    if truncated:
        found.add("cut_at_limit")
    steps = stated_steps(reasoning)
    given = question_numbers(question)
    got = to_number(numbers(observed)[0]) if numbers(observed) else None
    want = to_number(expected) if expected else None
    wrong = next((s for s in steps if not s.correct), None)
    if wrong is not None:
        found.add("arithmetic_error")
    results: list[float] = []
    unsourced: list[float] = []
    used: list[float] = []
    for s in steps:
        for v in s.operands:
            used.append(v)
            if not (_has(given, v) or _has(results, v) or v in CONSTANTS):
                unsourced.append(v)
        results += [s.stated, s.value]
    if unsourced:
        found.add("unsourced_number")
    unused = tuple(v for v in dict.fromkeys(to_number(n) for n in numbers(question))
                   if v is not None and v not in CONSTANTS and steps
                   and not _has(used, v) and not _has(values_in(reasoning), v))
    if unused:
        found.add("unused_question_number")
    last = steps[-1].stated if steps else None
    if got is not None and last is not None and not _close(got, last) and not _close(
            got, steps[-1].value) and not truncated:
        found.add("answer_not_last_result")
    if got is not None and want is not None and _unit_cues(question) and _unit_factor(
            got, want):
        found.add("unit_or_percent")
    code = check_code(reasoning, got, run)
    if code is not None and code.invented:
        found.add("invented_output")
    return StepCheck(
        findings=tuple(k for k in FINDINGS if k in found), steps_stated=len(steps),
        first_wrong_step=f"{wrong.expression} = {wrong.stated:g} (is {wrong.value:g})"
        if wrong else None, unsourced=tuple(unsourced), unused=unused, last_result=last,
        code_claimed=code.claimed if code else None, code_result=code.result if code else None)


def values_in(text: str) -> list[float]:
    return [v for v in (to_number(n) for n in numbers(normalize(text))) if v is not None]


def check_digest(d: RunDigest, *,
                 run: Callable[[str], tuple[str, str]] | None = None) -> StepCheck:
    """The step check of a failed run's digest: its reasoning is every node but the last
    (the one that formats the answer); empty for a run that is not math or did not answer."""
    if d.kind != "math" or d.failure_class in ("exception", "timeout"):
        return StepCheck()
    reasoning = [n for n in d.nodes if n.text.strip()]
    if len(reasoning) > 1:
        reasoning = reasoning[:-1]
    return check_steps(d.question, "\n".join(n.text for n in reasoning), d.observed,
                       d.expected, truncated=any(n.truncated for n in d.nodes), run=run)
