"""Traces split across lines and files: a BatchSpanProcessor flushes every few seconds, so
one run's spans arrive in several export requests, mixed with other runs (and its GenAI
content in log records of another file). Spans and log records are staged by trace id; a
trace is ready once its run span (or a root span) has arrived. What is still staged at the
end of an ingest is kept in the warehouse (`staged_spans`) and completed by a later ingest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cegraph.ingest.mapping import Mappings
from cegraph.ingest.span import LogRecord, SourceSpan


@dataclass
class Staged:
    spans: dict[str, SourceSpan] = field(default_factory=dict)
    logs: dict[str, LogRecord] = field(default_factory=dict)
    has_root: bool = False


def log_key(record: LogRecord) -> str:
    return f"log:{record.span_id}:{record.time_ns}:{record.event_name}"


class Staging:
    def __init__(self, mappings: Mappings) -> None:
        self.mappings = mappings
        self.traces: dict[str, Staged] = {}

    def holds(self, trace_id: str, key: str) -> bool:
        staged = self.traces.get(trace_id)
        return staged is not None and (key in staged.spans or key in staged.logs)

    def add_span(self, span: SourceSpan) -> None:
        from cegraph.ingest.assemble import is_run_span

        staged = self.traces.setdefault(span.trace_id, Staged())
        staged.spans[span.span_id] = span
        if span.parent_id is None or is_run_span(span, self.mappings.of_span(span)):
            staged.has_root = True

    def add_log(self, record: LogRecord) -> None:
        self.traces.setdefault(record.trace_id, Staged()).logs[log_key(record)] = record

    def ready(self) -> Iterator[tuple[str, Staged]]:
        """Pop the traces whose run span has arrived."""
        for trace_id in [t for t, s in self.traces.items() if s.has_root]:
            yield trace_id, self.traces.pop(trace_id)

    def __len__(self) -> int:
        return len(self.traces)
