"""One answered request as OpenTelemetry GenAI spans (semantic conventions `gen_ai.*`): an
`invoke_workflow` span for the run, a child span per node that ran, inside it a `chat` span
per LLM call (model, usage, input and output messages, finish reason), a failed node's error
status and `exception` event, and the online evaluation as a `gen_ai.evaluation.result`
event on the run span. Spans carry the run's real timings.

Two attributes go beyond the conventions, read by the ingest mapping of `ingest_mapping`:
`cegraph.operator` (the node's operator) and `cegraph.reference` (the reference answer the
evaluation used). The task id is `gen_ai.conversation.id`; the workflow version is the
resource's `service.version`."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode, Tracer, set_span_in_context

from cegraph.llm import Completion
from cegraph.task import Task
from cegraph.trace import Span as NodeSpan
from cegraph.trace import Trace

OPERATOR = "cegraph.operator"
REFERENCE = "cegraph.reference"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _messages(messages: list[dict[str, str]]) -> str:
    return json.dumps([{"role": m.get("role", "user"),
                        "parts": [{"type": "text", "content": m.get("content", "")}]}
                       for m in messages])


def _output(text: str, finish_reason: str = "stop") -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}],
                        "finish_reason": finish_reason}])


def _call(tracer: Tracer, parent: Span, node: NodeSpan, c: Completion) -> None:
    # a call replayed from the call store took no time now: a zero-length span at the node's
    # start; a paid one spans its latency, kept inside its node
    end = node.started if c.cached else min(max(c.created_at, node.started), node.ended)
    start = node.started if c.cached else max(node.started, end - c.latency_s)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": c.model,
        "gen_ai.response.model": c.model, "gen_ai.usage.input_tokens": c.tokens_in,
        "gen_ai.usage.output_tokens": c.tokens_out,
        "gen_ai.input.messages": _messages(c.messages),
        "gen_ai.output.messages": _output(c.text, c.finish_reason or "stop"),
        "gen_ai.response.finish_reasons": [c.finish_reason or "stop"]}
    span = tracer.start_span(f"chat {c.model}", context=set_span_in_context(parent),
                             start_time=_ns(start), attributes=attrs)
    span.end(end_time=_ns(end))


def emit_run(tracer: Tracer, trace: Trace, task: Task) -> None:
    """Emit the spans of one run (`trace`) of `task` through `tracer`."""
    root = tracer.start_span(f"invoke_workflow {trace.workflow}", start_time=_ns(trace.started),
                             attributes={
                                 "gen_ai.operation.name": "invoke_workflow",
                                 "gen_ai.workflow.name": trace.workflow,
                                 "gen_ai.conversation.id": task.id,
                                 "gen_ai.input.messages": _messages(
                                     [{"role": "user", "content": task.input}]),
                                 "gen_ai.output.messages": _output(trace.output or ""),
                                 REFERENCE: task.reference or ""})
    for node in trace.spans:
        if node.skipped:  # a node that did not run leaves no span
            continue
        step = tracer.start_span(f"{trace.workflow}.{node.node_id}",
                                 context=set_span_in_context(root),
                                 start_time=_ns(node.started),
                                 attributes={OPERATOR: node.operator})
        for c in node.calls:
            _call(tracer, step, node, c)
        if node.error:
            step.set_attribute("error.type", node.error_type or "Error")
            step.add_event("exception", {"exception.type": node.error_type or "Error",
                                         "exception.message": node.error},
                           timestamp=_ns(node.ended))
            step.set_status(Status(StatusCode.ERROR, node.error))
        step.end(end_time=_ns(node.ended))
    o = trace.outcome
    if o is not None:  # the online evaluation: the label names the failure class
        root.add_event("gen_ai.evaluation.result", {
            "gen_ai.evaluation.name": o.grader or "reference",
            "gen_ai.evaluation.score.value": float(o.score),
            "gen_ai.evaluation.score.label": "pass" if o.passed else o.failure_class or "fail",
            "gen_ai.evaluation.explanation": o.message}, timestamp=_ns(trace.ended))
    root.end(end_time=_ns(trace.ended))
