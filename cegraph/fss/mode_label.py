"""An optional human label for a failure mode, written by an LLM from its examples.

The rule-based label (`FailureMode.label`) always exists; the LLM's is used only when its
answer parses into `ModeLabel`, otherwise it is rejected and the rule label stays.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, Field, ValidationError

from cegraph.fss.modes import FailureMode
from cegraph.llm import LLM


class ModeLabel(BaseModel):
    label: str = Field(min_length=3, max_length=80)


def _prompt(mode: FailureMode, examples: list[str]) -> str:
    shown = "\n".join(f"- {e}" for e in examples[:5])
    return (f"These failures of an LLM workflow all happened at node '{mode.locus_node}' "
            f"({mode.locus_operator}):\n{shown}\n\nName this failure mode in at most 8 words. "
            'Reply with JSON only: {"label": "..."}')


def parse_label(text: str) -> ModeLabel | None:
    """The label in an LLM answer, or None when the answer does not parse."""
    found = re.search(r"\{.*?\}", text, re.DOTALL)
    if not found:
        return None
    try:
        return ModeLabel.model_validate(json.loads(found.group(0)))
    except (json.JSONDecodeError, ValidationError):
        return None


async def llm_label(mode: FailureMode, examples: list[str], llm: LLM) -> str | None:
    """Ask `llm` for a better label; sets and returns it, or None when rejected."""
    done = await llm.complete([{"role": "user", "content": _prompt(mode, examples)}],
                              max_tokens=48)
    parsed = parse_label(done.text)
    mode.llm_label = parsed.label if parsed else None
    return mode.llm_label
