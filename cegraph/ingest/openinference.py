"""OpenInference spans (Arize Phoenix's conventions): `openinference.span.kind` (CHAIN, LLM,
TOOL, ...), `input.value` / `output.value`, flattened `llm.input_messages.N.message.*` and
`llm.output_messages.N.message.*`, `llm.token_count.*` (with `prompt_details.cache_read`,
`prompt_details.cache_write`, `completion_details.reasoning`), `llm.model_name`,
`session.id`; and its feedback, which any span may carry: `annotations.N.annotation.*` /
`evaluations.N.evaluation.*` (this span), `trace.annotations.N.annotation.*` /
`trace.evaluations.N.evaluation.*` (the whole trace), each with `name`, `score`, `label`,
`explanation` (spec/annotations.md). `session.*` feedback grades a session, not a run: it is
not read."""

from __future__ import annotations

import re
from typing import Any

from cegraph.ingest import values
from cegraph.ingest.genai import count
from cegraph.ingest.span import Reading, SourceSpan

_KIND = {"LLM": "llm", "TOOL": "tool", "CHAIN": "step", "AGENT": "step"}
_READ = {"openinference.span.kind", "input.value", "output.value", "llm.model_name",
         "llm.finish_reason", "input.mime_type", "output.mime_type", "session.id"}
_FLAT = re.compile(r"llm\.(input|output)_messages\.(\d{1,6})\.message\.(\w+)$")
_FEEDBACK = re.compile(r"(trace\.)?(?:annotations\.(\d{1,6})\.annotation|"
                       r"evaluations\.(\d{1,6})\.evaluation)\.(\w+)$")
_FEEDBACK_PREFIXES = ("annotations.", "evaluations.", "trace.annotations.",
                      "trace.evaluations.")


def messages(attrs: dict, side: str) -> list[dict]:
    """The flattened `llm.<side>_messages.N.message.*` attributes as a message list."""
    found: dict[int, dict] = {}
    for key, value in attrs.items():
        m = _FLAT.match(key)
        if m and m.group(1) == side:
            found.setdefault(int(m.group(2)), {})[m.group(3)] = value
    return [found[i] for i in sorted(found)]


def feedback(attrs: dict[str, Any], invalid: list[str]
             ) -> tuple[list[dict], list[dict], set[str]]:
    """(span-scoped grades, trace-scoped grades, the keys read) from the flattened annotation
    and evaluation attributes; a grade without a name or without any result is dropped, as
    the spec says a producer must not emit one."""
    candidates = [key for key in attrs if key.startswith(_FEEDBACK_PREFIXES)]
    if not candidates:  # most spans carry no feedback
        return [], [], set()
    found: dict[tuple[bool, str, int], dict[str, Any]] = {}
    keys: set[str] = set()
    for key in candidates:
        value = attrs[key]
        m = _FEEDBACK.match(key)
        if not m:
            continue
        keys.add(key)
        form = "a" if m.group(2) is not None else "e"
        index = int(m.group(2) if form == "a" else m.group(3))
        found.setdefault((bool(m.group(1)), form, index), {})[m.group(4)] = (value, key)
    span_grades: list[dict] = []
    trace_grades: list[dict] = []
    for (trace_scope, _, _), fields in sorted(found.items()):
        score, score_key = fields.get("score", (None, ""))
        grade = {"name": str(fields.get("name", ("", ""))[0] or ""),
                 "score": values.lenient(values.number, score, score_key, invalid, None),
                 "label": fields.get("label", (None, ""))[0],
                 "explanation": str(fields.get("explanation", ("", ""))[0] or "")}
        if grade["name"] and (grade["score"] is not None or grade["label"] is not None
                              or grade["explanation"]):
            (trace_grades if trace_scope else span_grades).append(grade)
    return span_grades, trace_grades, keys


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
        cache_read_tokens=count(attrs, "llm.token_count.prompt_details.cache_read", invalid),
        cache_creation_tokens=count(attrs, "llm.token_count.prompt_details.cache_write",
                                    invalid),
        reasoning_tokens=count(attrs, "llm.token_count.completion_details.reasoning",
                               invalid),
        conversation_id=str(attrs.get("session.id") or ""),
        input=str(users[-1].get("content", "")) if users else str(attrs.get("input.value") or ""),
        output=(str(outputs[0].get("content", "")) if outputs
                else str(attrs.get("output.value") or "")),
        finish_reason=str(attrs.get("llm.finish_reason") or ""),
        consumed={k for k in attrs if k in _READ or _FLAT.match(k)
                  or k.startswith("llm.token_count.")}, invalid=invalid)
