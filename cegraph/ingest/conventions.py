"""Which semantic convention a span follows, and what holds for all of them: OpenTelemetry's
`exception` events and span status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from cegraph.ingest.span import LogRecord, Reading, SourceSpan


def read(span: SourceSpan, logs: Sequence[LogRecord] = ()) -> Reading:
    """The span read by its convention (GenAI, OpenInference, else a plain step)."""
    from cegraph.ingest import genai, openinference

    if "gen_ai.operation.name" in span.attributes or logs:
        reading = genai.read(span, logs)
    elif "openinference.span.kind" in span.attributes:
        reading = openinference.read(span)
    else:
        reading = Reading(kind="step")
    add_feedback(span, reading)
    add_error(span, reading)
    return reading


def add_feedback(span: SourceSpan, reading: Reading) -> None:
    """OpenInference's annotation / evaluation attributes, whatever convention the span
    otherwise follows (a GenAI run span may carry them too)."""
    from cegraph.ingest.openinference import feedback

    grades, trace_grades, keys = feedback(span.attributes, reading.invalid)
    if keys:
        reading.evaluations += grades
        reading.trace_evaluations += trace_grades
        reading.consumed |= keys


def add_error(span: SourceSpan, reading: Reading) -> None:
    """A span failed when its status is error or it carries an `exception` event: the message
    is the exception's (else the status message), the type `error.type` or the exception's."""
    exc = next((e for e in span.events if e.name == "exception"), None)
    if span.status != "error" and exc is None:
        return
    attrs = exc.attributes if exc else {}
    reading.error = str(attrs.get("exception.message") or span.status_message
                        or attrs.get("exception.type") or "error")
    reading.error_type = str(span.attributes.get("error.type") or attrs.get("exception.type")
                             or "Error")
    reading.consumed.add("error.type")


def text(value: Any) -> str:
    """Text out of a message list (GenAI parts or OpenAI-style content), a JSON string of
    one, or a plain value."""
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped[:1] in ("[", "{"):
            try:
                return text(orjson.loads(value))
            except orjson.JSONDecodeError:
                return value
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        out = []
        for message in value:
            if not isinstance(message, dict):
                out.append(str(message))
                continue
            parts = message.get("parts")
            if isinstance(parts, list):
                out += [str(p.get("content", "")) for p in parts
                        if isinstance(p, dict) and p.get("type", "text") == "text"]
            elif "content" in message:
                out.append(text(message["content"]))
        return "\n".join(o for o in out if o)
    return "" if value is None else str(value)


def last_user(value: Any) -> str:
    """The last user message's text (the task a chat call was asked), else all of it."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if isinstance(value, list):
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return text(users[-1])
    return text(value)
