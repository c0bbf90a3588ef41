"""Small OTLP/JSON traces for the ingest and receiver tests: a run span with a child step
per trace, any field overridable."""

from __future__ import annotations

import json
from typing import Any

T0 = 1_750_000_000_000_000_000  # ns


def attr(key: Any, value: dict) -> dict:
    return {"key": key, "value": value}


def span(trace: int, sid: int, parent: int | None, name: Any = "step", **over: Any) -> dict:
    s = {"traceId": f"{trace:032x}", "spanId": f"{sid:016x}", "name": name,
         "startTimeUnixNano": str(T0 + sid), "endTimeUnixNano": str(T0 + sid + 1000),
         "attributes": [attr("gen_ai.operation.name", {"stringValue": "chat"}),
                        attr("gen_ai.usage.input_tokens", {"intValue": "12"}),
                        attr("gen_ai.usage.output_tokens", {"intValue": "3"})],
         "status": {}}
    if parent is not None:
        s["parentSpanId"] = f"{parent:016x}"
    else:
        s["attributes"] = [attr("gen_ai.operation.name", {"stringValue": "invoke_workflow"}),
                           attr("gen_ai.workflow.name", {"stringValue": "wf"})]
        s["status"] = {"code": 2, "message": "wrong"}
    s.update(over)
    return s


def request(*spans: dict) -> str:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"spans": list(spans)}]}]})


def trace(n: int, **child: Any) -> str:
    """A run (root + one child step) on one line; `child` overrides fields of the step."""
    return request(span(n, 1, None, "run"), span(n, 2, 1, **{"name": "wf.solve", **child}))
