"""What the answer of a free LLM text is, and when two answers are the same, per grader.

Format, voting, the evaluators and locus attribution all use these, so they agree on what
"the answer" of a text is and on which answers are one answer (`18`, `18.0` and `\\$18`;
`\\frac{\\sqrt3}{2}` and `\\frac{\\sqrt{3}}{2}`).

Graders: `number` (GSM8K: the first number of the answer), `math` (MATH: math-verify),
`code` (the extracted code, compared by hash), `drop` (DROP's official normalization:
numbers compared as floats), `qa` (SQuAD normalization) and `exact` (SQuAD-normalized exact
match).
"""

from __future__ import annotations

import hashlib
import re
import string
from fractions import Fraction

from cegraph.benchmarks import extract_code, last_boxed
from cegraph.math_equivalence import verified_equal
from cegraph.task import Kind, Task

GRADER_KIND: dict[str, Kind] = {"number": "math", "math": "math", "code": "code",
                                "drop": "qa", "qa": "qa", "exact": "qa"}

# A comma is a thousands separator only between groups of three digits: `2,3` is two numbers.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
# An answer line, markdown emphasis and headings around the marker allowed
# (`**Answer:** 18`, `### Final answer: 18`, `*Answer*: 18`).
_ANSWER_LINE = re.compile(
    r"(?im)^[\s#>*_]*(?:final\s+)?answer[\s*_]*[:：][\s*_]*(.+?)[\s*_]*$")


def grader_for(task: Task) -> str:
    """Which grading rule judges `task` (a key of `GRADER_KIND`)."""
    if task.kind == "code":
        return "code"
    if task.kind == "math":
        return "math" if task.dataset == "math" else "number"
    return "drop" if task.dataset == "drop" else "qa"


def numbers(text: str) -> list[str]:
    return [n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)]


def first_number(text: str) -> str | None:
    found = numbers(text)
    return found[0] if found else None


def last_number(text: str) -> str | None:
    found = numbers(text)
    return found[-1] if found else None


def _answer_line(text: str) -> str | None:
    lines = _ANSWER_LINE.findall(text)
    return lines[-1].strip().strip("$").rstrip(".").strip() if lines else None


def extract_answer(kind: Kind, text: str) -> str | None:
    """The answer a text gives, or None when it gives none (a format failure). A math answer
    is the last `\\boxed{}`, else the last answer line (`Answer: \\frac12` gives `\\frac12`),
    else the last number of the text."""
    if not text or not text.strip():
        return None
    if kind == "code":
        code = extract_code(text)
        return code if code.strip() else None
    if kind == "math":
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        return _answer_line(text) or last_number(text)
    line = _answer_line(text)
    if line:
        return line
    last = [ln for ln in text.strip().splitlines() if ln.strip()]
    return last[-1].strip() if last else None


# --- equivalence --------------------------------------------------------------------------

def to_number(text: str) -> float | None:
    """The value of a text that is one number (`\\$1,000.`, `3/4`); `2,3` is none."""
    text = text.replace("\\$", "").replace("$", "").strip().rstrip(".")
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return float(Fraction(text.replace(",", "")))
    except (ValueError, ZeroDivisionError):
        return None


def number_answer(answer: str) -> float | None:
    """GSM8K: the value of the first number of an extracted answer (`18 apples, 3 times`)."""
    found = first_number(answer)
    return None if found is None else to_number(found)


_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^\\circ", "^{\\circ}", "\\%",
               "%", "\\$", "$", "\\displaystyle")


def normalize_math(text: str) -> str:
    """A canonical string for a MATH answer: the cheap first test before math-verify."""
    s = text.strip()
    s = re.sub(r"\\(?:text|mbox|textbf|mathrm)\{\s*([^}]*?)\s*\}", r"\1", s)
    for token in _LATEX_DROP:
        s = s.replace(token, "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    return re.sub(r"\s+", "", s).rstrip(".")


def math_equal(answer: str, gold: str) -> bool:
    """MATH equivalence: the same canonical string, the same number, or math-verify says so."""
    na, ng = normalize_math(answer), normalize_math(gold)
    if na == ng:
        return True
    fa, fg = to_number(na), to_number(ng)
    if fa is not None and fg is not None:
        return abs(fa - fg) < 1e-6 * max(1.0, abs(fg))
    return verified_equal(gold, answer)


def normalize_qa(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def drop_tokens(text: str) -> list[str]:
    """DROP's official answer normalization, token by token: lower case, punctuation removed
    except inside a number, numbers written as floats (`20` and `20.0` are one token, `2.5`
    and `25` are not), articles removed."""
    tokens = []
    for token in re.split(r" |-", text):
        token = token.lower()
        if not is_number(token):
            token = "".join(ch for ch in token if ch not in set(string.punctuation))
        if is_number(token):
            token = str(float(token))
        token = " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())
        if token:
            tokens.append(token)
    return tokens


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()[:16]


def same_answer(grader: str, a: str, b: str) -> bool:
    """Whether two extracted answers are one answer under `grader`'s rule."""
    if grader == "code":
        return code_hash(a) == code_hash(b)
    if grader == "math":
        return math_equal(a, b)
    if grader == "number":
        na, nb = number_answer(a), number_answer(b)
        return na is not None and nb is not None and abs(na - nb) < 1e-6
    if grader == "drop":
        return drop_tokens(a) == drop_tokens(b)
    return normalize_qa(a) == normalize_qa(b)


def equivalent(task: Task, a: str, b: str) -> bool:
    """Whether two extracted answers to `task` are one answer for its grader."""
    return same_answer(grader_for(task), a, b)


def gives(grader: str, text: str, answer: str) -> bool:
    """Whether a text (a node's output) gives `answer` as its own answer."""
    got = extract_answer(GRADER_KIND[grader], text)
    return got is not None and same_answer(grader, got, answer)
