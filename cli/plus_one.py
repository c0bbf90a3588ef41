"""The scripted `What is i + 1?` world: a model without a model, for the night benchmark's
fan-out figures and the refinement tests (answers are a function of the prompt, so each
edit's effect is known exactly)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

Reply = Callable[[list[dict[str, str]]], str]


def asked(text: str) -> int:
    """The i of the last `What is i + 1?` in a prompt (the problem asked, after any demos)."""
    return int(re.findall(r"What is (\d+) \+ 1\?", text)[-1])


def plus_one_world(cot_right: Callable[[int, str], bool], *,
                   program: Callable[[int], int] = lambda i: i + 1,
                   special: Callable[[str], str | None] = lambda text: None) -> Reply:
    """The world's model: `special(prompt)`
    answers first when it returns text (a proposer, a judge); a Python program prints
    `program(i)`; Format copies the solution's first number; a CoT answers i + 1 when
    `cot_right(i, prompt)`, else 0."""

    def reply(messages: list[dict[str, str]]) -> str:
        text = messages[-1]["content"]
        if (answer := special(text)) is not None:
            return answer
        i = asked(text)
        if "Python program" in text:
            return f"```python\nprint({program(i)})\n```"
        if "Give only the final answer" in text:
            found = re.findall(r"\d+", text.split("Solution:")[-1])
            return f"\\boxed{{{found[0] if found else 0}}}"
        return f"\\boxed{{{i + 1 if cot_right(i, text) else 0}}}"

    return reply


def proposes(*edits: dict) -> Callable[[str], str | None]:
    """A `special` answering a proposer's request with these edits."""
    answer = json.dumps({"candidates": [{"rationale": "scripted", "edit": e} for e in edits]})
    return lambda text: answer if "candidates" in text else None


# The night's world: CoT right on every third problem, a Programmer always right, and the
# proposer suggests replacing the solver by a Programmer (the one real fix).
night_world = plus_one_world(lambda i, _: i % 3 == 0, special=proposes(
    {"op": "replace_operator", "node": "solve", "operator": "Programmer"}))
