"""The streaming core of an ingest, pure: lines in, micro-batches of assembled runs and
quarantine rows out. Storage is asked two questions (`Known`) and does all writing.

Per line: decode (UTF-8, JSON, format), stage its spans / log records by trace id. Every
`batch_spans` spans the buffered lines are settled at once (one storage query): each span is
new, a duplicate (same trace and span id already stored or staged) or late (its run is
already stored), each line is stored, a duplicate or quarantined, and every trace whose run
span has arrived is assembled into a run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from cegraph.ingest import jsonl, otlp, values
from cegraph.ingest.accounting import Counts, Fault
from cegraph.ingest.assemble import Run, assemble, run_span
from cegraph.ingest.lines import Cut
from cegraph.ingest.mapping import Mappings
from cegraph.ingest.span import LogRecord, SourceSpan, as_json
from cegraph.ingest.staging import Staging, log_key

FORMATS = ("auto", "otlp", "jsonl")


class Known(Protocol):
    """What the pipeline asks storage, per micro-batch."""

    def known_spans(self, trace_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(trace id, span key) of the source spans of committed runs among `trace_ids`."""
        ...

    def stored_runs(self, run_ids: Sequence[str]) -> set[str]:
        ...


@dataclass
class Line:
    source: str
    line_no: int
    raw: bytes
    items: list[SourceSpan | LogRecord | jsonl.RunRecord]
    faults: list[Fault]


@dataclass
class Batch:
    """One settled micro-batch: runs to store, quarantine rows, spans still staged."""

    runs: list[Run] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    staged: list[SourceSpan | LogRecord] = field(default_factory=list)
    settled_traces: list[str] = field(default_factory=list)  # staged rows to drop once stored
    unmapped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (workflow, key)


def item_key(item: SourceSpan | LogRecord | jsonl.RunRecord) -> tuple[str, str]:
    if isinstance(item, SourceSpan):
        return item.trace_id, item.span_id
    if isinstance(item, LogRecord):
        return item.trace_id, log_key(item)
    return item.run_id, "run"


class Pipeline:
    def __init__(self, known: Known, mappings: Mappings | None = None, *, fmt: str = "auto",
                 batch_spans: int = 20_000,
                 staged: Sequence[SourceSpan | LogRecord] = ()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
        self.known = known
        self.mappings = mappings or Mappings()
        self.fmt = fmt
        self.batch_spans = batch_spans
        self.counts = Counts()
        self.staging = Staging(self.mappings)
        self.runs: dict[str, jsonl.RunRecord] = {}
        self.persisted: set[tuple[str, str]] = set()  # staged rows already in the warehouse
        for item in staged:
            self._stage(item)
            self.persisted.add(item_key(item))
        self.lines: list[Line] = []
        self.buffered = 0

    # --- decoding ---------------------------------------------------------------------
    def decode(self, source: str, line_no: int, raw: bytes, cut: Cut | None = None) -> Line:
        """One line -> its spans / log records / run and its faults. Never raises: a value
        of the wrong type is `invalid_value` and anything unforeseen `unreadable`, for this
        line only (the per-record guard)."""
        line = Line(source, line_no, raw, [], [])
        if cut is not None:
            line.faults.append(Fault(source, line_no, cut.reason, cut.detail, raw))
            return line
        try:
            self._decode(line)
        except values.BadValue as exc:
            self._reject(line, "invalid_value", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must cost one line, not the ingest
            self._reject(line, "unreadable", f"{type(exc).__name__}: {exc}")
        return line

    @staticmethod
    def _reject(line: Line, reason: str, detail: str) -> None:
        line.items.clear()
        line.faults[:] = [Fault(line.source, line.line_no, reason, detail, line.raw)]

    def _parse(self, line: Line) -> Any:
        """The line's JSON, else None with the line rejected: not UTF-8, cut short, or not
        JSON. orjson checks the UTF-8 itself: a good line is not decoded to a copy first."""
        try:
            return orjson.loads(line.raw)
        except orjson.JSONDecodeError:
            pass
        try:
            text = line.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._reject(line, "not_utf8", str(exc))
            return None
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            near_end = getattr(exc, "pos", 0) >= len(text.rstrip()) - 1
            self._reject(line, "truncated" if near_end and text.lstrip()[:1] in "{["
                         else "invalid_json", str(exc).splitlines()[0])
            return None

    def _decode(self, line: Line) -> None:
        obj = self._parse(line)
        if obj is None and line.faults:
            return None
        signal = otlp.kind(obj)
        if self.fmt == "otlp" and signal is None:
            return self._reject(line, "not_otlp", "no resourceSpans or resourceLogs")
        if signal is not None and self.fmt != "jsonl":
            try:
                self._items(line, otlp.spans(obj, limit=self.mappings.max_attribute_chars)
                            if signal == "traces" else otlp.logs(obj))
            except otlp.NotOtlp as exc:
                return self._reject(line, "not_otlp", str(exc))
            return None
        if jsonl.is_run(obj) or self.fmt == "jsonl":
            try:
                line.items.append(jsonl.RunRecord.model_validate(obj))
            except ValidationError as exc:
                first = exc.errors()[0]
                return self._reject(line, "invalid_run", f"{'.'.join(map(str, first['loc']))}"
                                                         f": {first['msg']}")
            return None
        return self._reject(line, "unknown_format", "not OTLP traces/logs nor a cegraph run "
                                                    "(run_id + spans)")

    def _items(self, line: Line, items: Iterable[SourceSpan | LogRecord | otlp.SpanFault]
               ) -> None:
        for item in items:
            if isinstance(item, otlp.SpanFault):
                line.faults.append(Fault(line.source, line.line_no, item.reason, item.detail,
                                         line.raw, "span"))
                continue
            line.items.append(item)
            if isinstance(item, SourceSpan):
                line.faults += [Fault(line.source, line.line_no, "oversized_attribute",
                                      f"span {item.span_id} {o}", line.raw, "span")
                                for o in item.oversized]

    def feed(self, source: str, line_no: int, raw: bytes, cut: Cut | None = None
             ) -> Iterator[Batch]:
        """Take one line; yields a settled batch when enough spans are buffered."""
        yield from self.add(self.decode(source, line_no, raw, cut))

    def add(self, line: Line) -> Iterator[Batch]:
        """Take a decoded line (see `feed`)."""
        self.lines.append(line)
        self.buffered += max(1, len(line.items))
        if self.buffered >= self.batch_spans:
            yield self.settle()

    # --- settling ---------------------------------------------------------------------
    def _fault(self, batch: Batch, fault: Fault) -> None:
        """A fault found while assembling: the lines were counted stored, so it is counted
        beside them (`span_faults`) and its raw spans kept in quarantine."""
        self.counts.span_faults[fault.reason] += 1
        batch.faults.append(fault)

    def _stage(self, item: SourceSpan | LogRecord | jsonl.RunRecord) -> None:
        if isinstance(item, SourceSpan):
            self.staging.add_span(item)
        elif isinstance(item, LogRecord):
            self.staging.add_log(item)
        else:
            self.runs[item.run_id] = item

    def settle(self, *, final: bool = False) -> Batch:
        lines, self.lines, self.buffered = self.lines, [], 0
        trace_ids = sorted({item_key(i)[0] for ln in lines for i in ln.items})
        known = self.known.known_spans(trace_ids) if trace_ids else set()
        stored = self.known.stored_runs(trace_ids) if trace_ids else set()
        batch = Batch()
        for ln in lines:
            new = dup = 0
            late: list[str] = []
            for item in ln.items:
                trace_id, key = item_key(item)
                if (trace_id, key) in known or self.staging.holds(trace_id, key) or (
                        trace_id in self.runs):
                    dup += 1
                elif trace_id in stored:
                    late.append(key)
                else:
                    self._stage(item)
                    new += 1
            self.counts.duplicate_spans += dup
            line_faults = [f for f in ln.faults if f.level == "line"]
            span_faults = [f for f in ln.faults if f.level == "span"]
            if line_faults:
                self.counts.line("quarantined", line_faults[0].reason)
                batch.faults += line_faults
            elif new:
                self.counts.line("stored")
                late_faults = [Fault(ln.source, ln.line_no, "late_span",
                                     f"{key} of an already stored run", ln.raw, "span")
                               for key in late]
                for f in span_faults + late_faults:
                    self.counts.span_faults[f.reason] += 1
                batch.faults += span_faults + late_faults
            elif late:
                self.counts.line("quarantined", "late_span")
                batch.faults.append(Fault(ln.source, ln.line_no, "late_span",
                                          f"{len(late)} span(s) of an already stored run",
                                          ln.raw))
            elif dup:
                self.counts.line("duplicate")
            else:  # nothing usable: every span lacked its ids
                reason = span_faults[0].reason if span_faults else "unknown_format"
                self.counts.line("quarantined", reason)
                batch.faults.append(Fault(ln.source, ln.line_no, reason, "no usable span "
                                          "in the line", ln.raw))
        for trace_id, staged in self.staging.ready():
            spans = list(staged.spans.values())
            try:
                root = run_span(spans, self.mappings)
                if root is None:  # only log records so far: keep waiting
                    self.staging.traces[trace_id] = staged
                    staged.has_root = False
                    continue
                run = assemble(spans, list(staged.logs.values()), self.mappings, root)
            except Exception as exc:  # noqa: BLE001 - the per-trace guard: this run only
                self._fault(batch, Fault(f"trace {trace_id}", 0, "unassemblable",
                                         f"{type(exc).__name__}: {exc}",
                                         as_json([*staged.spans.values(),
                                                  *staged.logs.values()]), "span"))
            else:
                batch.runs.append(run)
                for span, why in run.invalid:
                    self._fault(batch, Fault(f"trace {trace_id}", 0, "invalid_value",
                                             f"span {span.span_id}: {why}",
                                             as_json([span]), "span"))
                for key, n in run.unmapped.items():
                    batch.unmapped[(run.trace.workflow, key)] += n
            batch.settled_traces.append(trace_id)
            self.persisted -= {(trace_id, k) for k in [*staged.spans, *staged.logs]}
        for record in self.runs.values():
            run = Run(jsonl.to_trace(record), record.model, [],
                      record=record.model_dump_json())
            batch.runs.append(run)
        self.runs.clear()
        pending = [i for s in self.staging.traces.values()
                   for i in [*s.spans.values(), *s.logs.values()]]
        batch.staged = [i for i in pending if item_key(i) not in self.persisted]
        self.persisted |= {item_key(i) for i in batch.staged}
        if final:
            self.counts.staged_incomplete = len(self.staging)
        return batch
