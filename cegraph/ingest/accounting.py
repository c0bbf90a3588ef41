"""Lossless accounting of an ingest: every input line ends up stored, a duplicate, or
quarantined with a reason, and span-level faults are counted beside it.

`lines_read == lines_stored + duplicates + sum(quarantined.values())` always holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: why a line (or a span of it) was quarantined; each reason is one line of the README
LINE_REASONS = {
    "invalid_json": "not JSON",
    "truncated": "JSON cut off before its end",
    "not_utf8": "bytes that are not UTF-8",
    "not_otlp": "looks like OTLP (resourceSpans/resourceLogs) but does not decode as OTLP",
    "unknown_format": "JSON of no known format",
    "invalid_run": "our JSONL run format, but the record breaks its JSON Schema",
    "missing_id": "every span of the line lacks its trace or span id",
    "invalid_value": "a field of the wrong type or out of range (a time, a 64-bit integer, a "
                     "name); as a line reason: every span of it, or its resource",
    "oversized_line": "a line over the line cap (its head kept)",
    "gzip_truncated": "a gzip file cut short: the readable part of the cut line is kept, the "
                      "lines after it are lost (one row says so)",
    "gzip_corrupt": "a gzip file corrupt from this point on (as gzip_truncated)",
    "unreadable": "an unforeseen error decoding the line (a cegraph bug: the line is kept)",
    "unstorable_request": "a receiver's request whose store step kept failing by itself "
                          "(kept whole; the spool goes on past it)",
}
SPAN_REASONS = {
    "missing_id": "a span or log record without its trace or span id (dropped, the rest of "
                  "the line kept)",
    "invalid_value": "a span dropped for a bad time or value, or a field of a stored span "
                     "that could not be read (token count, evaluation score: left unread)",
    "oversized_attribute": "an attribute value over the size limit (kept, truncated)",
    "late_span": "a span of a run already stored (kept here for re-ingest)",
    "unassemblable": "an unforeseen error assembling a trace into a run (a cegraph bug: its "
                     "spans are kept here)",
    "unstorable": "a run the warehouse refused (its spans are kept here)",
}
#: bytes of the raw line kept in a quarantine row
RAW_LIMIT = 64 * 1024


@dataclass
class Fault:
    """One quarantine row: a line (level `line`) or one span of a stored line (`span`)."""

    source: str
    line_no: int
    reason: str
    detail: str
    raw: bytes
    level: str = "line"

    def row(self) -> dict[str, Any]:
        return {"source": self.source, "line_no": self.line_no, "reason": self.reason,
                "detail": self.detail, "level": self.level,
                "raw": self.raw[:RAW_LIMIT].decode("utf-8", "backslashreplace"),
                "raw_bytes": len(self.raw), "raw_truncated": len(self.raw) > RAW_LIMIT}


@dataclass
class Counts:
    lines_read: int = 0
    lines_stored: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    span_faults: Counter[str] = field(default_factory=Counter)
    runs_stored: int = 0
    spans_stored: int = 0
    duplicate_spans: int = 0
    staged_incomplete: int = 0

    def line(self, verdict: str, reason: str = "") -> None:
        self.lines_read += 1
        if verdict == "stored":
            self.lines_stored += 1
        elif verdict == "duplicate":
            self.duplicates += 1
        else:
            self.quarantined[reason] += 1

    @property
    def balanced(self) -> bool:
        return self.lines_read == (self.lines_stored + self.duplicates
                                   + sum(self.quarantined.values()))

    @property
    def usable(self) -> bool:
        return self.lines_stored + self.duplicates > 0

    def summary(self) -> dict[str, Any]:
        return {"lines_read": self.lines_read, "lines_stored": self.lines_stored,
                "runs_stored": self.runs_stored, "spans_stored": self.spans_stored,
                "duplicates": self.duplicates, "duplicate_spans": self.duplicate_spans,
                "quarantined": dict(sorted(self.quarantined.items())),
                "span_faults": dict(sorted(self.span_faults.items())),
                "staged_incomplete": self.staged_incomplete}
