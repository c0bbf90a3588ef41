"""Pulling the final answer out of free LLM text, per task kind (used by Format, voting
and the evaluators, so all three agree on what "the answer" of a text is)."""

from __future__ import annotations

import re

from cegraph.benchmarks import extract_code, last_boxed
from cegraph.task import Kind

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER_LINE = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:：]\s*(.+?)\s*$")


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def extract_answer(kind: Kind, text: str) -> str | None:
    """The answer a text gives, or None when it gives none (a format failure)."""
    if not text or not text.strip():
        return None
    if kind == "code":
        code = extract_code(text)
        return code if code.strip() else None
    if kind == "math":
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        lines = _ANSWER_LINE.findall(text)
        return last_number(lines[-1]) if lines and last_number(lines[-1]) else last_number(text)
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip().strip(".")
    last = [ln for ln in text.strip().splitlines() if ln.strip()]
    return last[-1].strip() if last else None
