"""What the decoders read from a log, before any convention gives it a meaning: a source span
(with its events), a log record, and what a convention reads from a span."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class SourceSpan:
    """One span as an exporter wrote it; ids are lower-case hex whatever the encoding was.
    `oversized` lists `key:original_length` of attribute values cut to the configured size."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: str  # unset | ok | error
    status_message: str
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    oversized: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSpan:
        events = [SpanEvent(**e) for e in data.get("events", [])]
        return cls(**{**data, "events": events})


@dataclass
class LogRecord:
    """An OTLP log record tied to a span (GenAI content events)."""

    trace_id: str
    span_id: str
    event_name: str
    time_ns: int
    attributes: dict[str, Any]
    body: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reading:
    """What a semantic convention reads from one span. `kind`: workflow | llm | tool | step."""

    kind: str
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    # parts of tokens_in / tokens_out the conventions break out (0 when not reported)
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    conversation_id: str = ""  # gen_ai.conversation.id, else OpenInference's session.id
    input: str = ""
    output: str = ""
    finish_reason: str = ""
    error: str | None = None
    error_type: str | None = None
    # grades: each {name, score, label, explanation}; span-scoped grade this span, trace-scoped
    # (OpenInference's `trace.annotations.*`) the whole trace, whichever span carries them
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    trace_evaluations: list[dict[str, Any]] = field(default_factory=list)
    consumed: set[str] = field(default_factory=set)  # attribute keys the reading used
    invalid: list[str] = field(default_factory=list)  # fields it could not read, and why


def as_json(items: Iterable[SourceSpan | LogRecord]) -> bytes:
    """Spans and log records as one JSON list: the raw bytes a quarantine row keeps of
    records that failed after decoding."""
    import orjson

    return orjson.dumps([i.to_dict() for i in items], default=str)
