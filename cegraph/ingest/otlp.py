"""OTLP traces and logs, decoded from either JSON encoding exporters write:

- OTLP/JSON (what the Collector's file exporter writes): hex trace/span ids, integer enums,
  64-bit integers as strings;
- protobuf's canonical JSON (some exporters, and `MessageToDict` of a protobuf request):
  base64 ids and enum names.

Protobuf bodies (the OTLP/HTTP receiver) are parsed with `opentelemetry-proto` and then read
through the same decoder, so there is one reader of OTLP's shape."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cegraph.ingest import values
from cegraph.ingest.span import LogRecord, SourceSpan, SpanEvent

_STATUS = {0: "unset", 1: "ok", 2: "error", "STATUS_CODE_UNSET": "unset",
           "STATUS_CODE_OK": "ok", "STATUS_CODE_ERROR": "error"}


class NotOtlp(ValueError):
    """An object shaped like an OTLP request that does not decode as one."""


@dataclass
class SpanFault:
    """A span or log record that cannot be kept (ids missing or malformed, a field of the
    wrong type or out of range)."""

    reason: str
    detail: str


def kind(obj: object) -> str | None:
    """`traces` or `logs` for an OTLP request object, else None."""
    if isinstance(obj, dict):
        if "resourceSpans" in obj or "resource_spans" in obj:
            return "traces"
        if "resourceLogs" in obj or "resource_logs" in obj:
            return "logs"
    return None


def decode_id(value: object, size: int) -> str | None:
    """A trace (16 bytes) or span (8 bytes) id as lower-case hex, from hex or base64; None
    when absent or all zero (OTLP's "no id")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotOtlp(f"id {value!r} is not a string")
    if len(value) == 2 * size:
        try:
            int(value, 16)
            out = value.lower()
        except ValueError:
            out = ""
        if out:
            return None if not out.strip("0") else out
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise NotOtlp(f"id {value!r} is neither hex nor base64") from None
    if len(raw) != size:
        raise NotOtlp(f"id {value!r} has {len(raw)} bytes, expected {size}")
    return None if not any(raw) else raw.hex()


def any_value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue as a Python value (64-bit integers may come as strings)."""
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value:  # most attributes: no list built
        return value["stringValue"]
    ((key, v),) = list(value.items())[:1]
    if key in ("stringValue", "string_value", "doubleValue", "double_value", "boolValue",
               "bool_value", "bytesValue", "bytes_value"):
        return v
    if key in ("intValue", "int_value"):
        return values.integer(v, "intValue")
    if key in ("arrayValue", "array_value"):
        return [any_value(x) for x in (v or {}).get("values", [])]
    if key in ("kvlistValue", "kvlist_value"):
        return {values.text(kv["key"], "key"): any_value(kv.get("value", {}))
                for kv in (v or {}).get("values", [])}
    raise NotOtlp(f"unknown AnyValue field {key!r}")


def attributes(items: list[dict[str, Any]] | None, limit: int = 0,
               oversized: list[str] | None = None) -> dict[str, Any]:
    """KeyValue list -> dict; string values longer than `limit` (when set) are cut to it and
    reported in `oversized` as `key:original_length`."""
    out: dict[str, Any] = {}
    for kv in items or []:
        key = kv["key"]
        if type(key) is not str:
            key = values.text(key, "attribute key")
        v = kv.get("value", {})
        # most values are strings: read without a call per attribute
        value = v["stringValue"] if type(v) is dict and "stringValue" in v else any_value(v)
        if limit and type(value) is str and len(value) > limit:
            if oversized is not None:
                oversized.append(f"{key}:{len(value)}")
            value = value[:limit]
        out[key] = value
    return out


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def spans(request: dict[str, Any], *, limit: int = 0) -> Iterator[SourceSpan | SpanFault]:
    """The spans of one ExportTraceServiceRequest; a span without usable ids is a fault."""
    try:
        for rs in _get(request, "resourceSpans", "resource_spans") or []:
            resource = attributes((rs.get("resource") or {}).get("attributes"))
            for ss in _get(rs, "scopeSpans", "scope_spans") or []:
                scope = (ss.get("scope") or {}).get("name", "")
                for s in ss.get("spans") or []:
                    yield _span(s, resource, scope, limit)
    except (AttributeError, TypeError, KeyError) as exc:
        raise NotOtlp(f"malformed OTLP traces: {exc}") from None


def _span(s: dict[str, Any], resource: dict[str, Any], scope: str,
          limit: int) -> SourceSpan | SpanFault:
    try:
        trace_id = decode_id(_get(s, "traceId", "trace_id"), 16)
        span_id = decode_id(_get(s, "spanId", "span_id"), 8)
        parent = decode_id(_get(s, "parentSpanId", "parent_span_id"), 8)
    except NotOtlp as exc:
        return SpanFault("missing_id", str(exc))
    if trace_id is None or span_id is None:
        return SpanFault("missing_id", f"span {s.get('name', '?')!r} has no "
                                       f"{'trace' if trace_id is None else 'span'} id")
    oversized: list[str] = []
    status = s.get("status") or {}
    try:
        events = [SpanEvent(values.text(e.get("name"), "event name"),
                            values.unix_ns(_get(e, "timeUnixNano", "time_unix_nano"),
                                           "event timeUnixNano"),
                            attributes(e.get("attributes"), limit, oversized))
                  for e in s.get("events") or ()] if "events" in s else []
        return SourceSpan(
            trace_id, span_id, parent, values.text(s.get("name"), "name"),
            values.unix_ns(_get(s, "startTimeUnixNano", "start_time_unix_nano"),
                           "startTimeUnixNano"),
            values.unix_ns(_get(s, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
            _STATUS.get(status.get("code", 0), "unset"),
            values.text(status.get("message"), "status message"),
            attributes(s.get("attributes"), limit, oversized), events, resource, scope,
            oversized)
    except values.BadValue as exc:
        return SpanFault("invalid_value", f"span {span_id}: {exc}")


def logs(request: dict[str, Any]) -> Iterator[LogRecord | SpanFault]:
    """The log records of one ExportLogsServiceRequest; one not tied to a span (no trace or
    span id) or with a bad field is a fault, counted like a span's."""
    try:
        for rl in _get(request, "resourceLogs", "resource_logs") or []:
            for sl in _get(rl, "scopeLogs", "scope_logs") or []:
                for r in _get(sl, "logRecords", "log_records") or []:
                    yield _log(r)
    except (AttributeError, TypeError, KeyError) as exc:
        raise NotOtlp(f"malformed OTLP logs: {exc}") from None


def _log(r: dict[str, Any]) -> LogRecord | SpanFault:
    try:
        trace_id = decode_id(_get(r, "traceId", "trace_id"), 16)
        span_id = decode_id(_get(r, "spanId", "span_id"), 8)
    except NotOtlp as exc:
        return SpanFault("missing_id", f"log record: {exc}")
    if trace_id is None or span_id is None:
        return SpanFault("missing_id", "log record without a trace and span id")
    try:
        attrs = attributes(r.get("attributes"))
        name = values.text(_get(r, "eventName", "event_name") or attrs.get("event.name"),
                           "eventName")
        return LogRecord(trace_id, span_id, name,
                         values.unix_ns(_get(r, "timeUnixNano", "time_unix_nano"),
                                        "timeUnixNano"),
                         attrs, any_value(r.get("body") or {}))
    except values.BadValue as exc:
        return SpanFault("invalid_value", f"log record of span {span_id}: {exc}")


def from_protobuf(body: bytes, signal: str) -> dict[str, Any]:
    """A protobuf ExportTraceServiceRequest / ExportLogsServiceRequest as canonical JSON."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    message = (trace_service_pb2.ExportTraceServiceRequest() if signal == "traces"
               else logs_service_pb2.ExportLogsServiceRequest())
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise NotOtlp(f"not an OTLP protobuf {signal} request: {exc}") from None
    return json_format.MessageToDict(message)


def partial_success(signal: str, rejected: int, message: str, *, protobuf: bool) -> bytes:
    """OTLP's Export*ServiceResponse, with `partial_success` when records were rejected."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    if signal == "traces":
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = message
    else:
        response = logs_service_pb2.ExportLogsServiceResponse()
        if rejected:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = message
    if protobuf:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()
