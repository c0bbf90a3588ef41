"""Default instructions per task kind, shared by the operators that answer a task."""

from __future__ import annotations

from cegraph.task import Kind

ANSWER_FORMAT: dict[Kind, str] = {
    "math": "Put the final answer in \\boxed{}.",
    "code": "Return the complete Python function in one ```python code block.",
    "qa": "End with a line 'Answer: <short answer>' giving only the answer (a few words).",
}


def task_prompt(kind: Kind, text: str, *, entry_point: str | None = None) -> str:
    if kind == "code" and entry_point:
        return f"{text}\n\nImplement the Python function `{entry_point}`."
    return text
