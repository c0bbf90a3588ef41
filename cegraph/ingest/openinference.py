"""OpenInference spans (Arize Phoenix's conventions): `openinference.span.kind` (CHAIN, LLM,
TOOL, ...), `input.value` / `output.value`, flattened `llm.input_messages.N.message.*` and
`llm.output_messages.N.message.*`, `llm.token_count.*`, `llm.model_name`."""

from __future__ import annotations

import re

from cegraph.ingest.genai import count
from cegraph.ingest.span import Reading, SourceSpan

_KIND = {"LLM": "llm", "TOOL": "tool", "CHAIN": "step", "AGENT": "step"}
_READ = {"openinference.span.kind", "input.value", "output.value", "llm.model_name",
         "llm.finish_reason", "input.mime_type", "output.mime_type"}
_FLAT = re.compile(r"llm\.(input|output)_messages\.(\d{1,6})\.message\.(\w+)$")


def messages(attrs: dict, side: str) -> list[dict]:
    """The flattened `llm.<side>_messages.N.message.*` attributes as a message list."""
    found: dict[int, dict] = {}
    for key, value in attrs.items():
        m = _FLAT.match(key)
        if m and m.group(1) == side:
            found.setdefault(int(m.group(2)), {})[m.group(3)] = value
    return [found[i] for i in sorted(found)]


def read(span: SourceSpan) -> Reading:
    attrs = span.attributes
    kind = _KIND.get(str(attrs.get("openinference.span.kind", "")).upper(), "step")
    inputs, outputs = messages(attrs, "input"), messages(attrs, "output")
    users = [m for m in inputs if m.get("role") == "user"]
    invalid: list[str] = []
    return Reading(
        kind=kind, model=str(attrs.get("llm.model_name") or ""),
        tokens_in=count(attrs, "llm.token_count.prompt", invalid),
        tokens_out=count(attrs, "llm.token_count.completion", invalid),
        input=str(users[-1].get("content", "")) if users else str(attrs.get("input.value") or ""),
        output=(str(outputs[0].get("content", "")) if outputs
                else str(attrs.get("output.value") or "")),
        finish_reason=str(attrs.get("llm.finish_reason") or ""),
        consumed={k for k in attrs if k in _READ or _FLAT.match(k)
                  or k.startswith("llm.token_count.")})
