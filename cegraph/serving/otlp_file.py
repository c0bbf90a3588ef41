"""An OpenTelemetry SDK span exporter writing OTLP/JSON lines, as the Collector's file exporter
does: one `ExportTraceServiceRequest` per export, hex trace and span ids, integer enums. It is
the SDK's own OTLP encoder (`encode_spans`) serialized by protobuf's JSON format, so what
`cegraph ingest` reads is exactly what an OTLP exporter would have sent."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_IDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node: Any) -> None:
    """protobuf JSON writes bytes as base64; OTLP/JSON wants ids in hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _IDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


class OtlpJsonFileExporter(SpanExporter):
    """Appends each export to `path` as one OTLP/JSON line (flushed, so a reader sees whole
    lines only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        _hex_ids(data)
        line = json.dumps(data, separators=(",", ":"))
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(line + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
