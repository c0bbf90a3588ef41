"""OpenTelemetry GenAI semantic conventions: `gen_ai.operation.name` says what a span is
(`invoke_workflow` = a run, `chat` etc. = an LLM call, `execute_tool` = a tool), with the
model, `gen_ai.usage.*` (input and output tokens, and the parts of them read from or written
to a provider's cache and spent reasoning), `gen_ai.conversation.id`, the messages (a JSON
string on the span, or structured values in a `gen_ai.client.inference.operation.details`
log record of the span) and evaluations (`gen_ai.evaluation.result` events on the span or as
log records). Names as in open-telemetry/semantic-conventions-genai, model/gen-ai."""

from __future__ import annotations

from collections.abc import Sequence

from cegraph.ingest import values
from cegraph.ingest.conventions import last_user, text
from cegraph.ingest.span import LogRecord, Reading, SourceSpan

LLM_OPERATIONS = {"chat", "text_completion", "generate_content", "embeddings"}
EVALUATION = "gen_ai.evaluation.result"
_KIND = {"invoke_workflow": "workflow", "execute_tool": "tool"}
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"
_READ = {"gen_ai.operation.name", "gen_ai.workflow.name", "gen_ai.request.model",
         "gen_ai.response.model", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
         CACHE_READ, CACHE_CREATION, REASONING,
         "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.response.finish_reasons",
         "gen_ai.system_instructions", "gen_ai.conversation.id"}  # the task id (assemble)


def evaluation(attrs: dict, invalid: list[str]) -> dict:
    return {"name": attrs.get("gen_ai.evaluation.name", ""),
            "score": values.lenient(values.number, attrs.get("gen_ai.evaluation.score.value"),
                                    "gen_ai.evaluation.score.value", invalid, None),
            "label": attrs.get("gen_ai.evaluation.score.label"),
            "explanation": attrs.get("gen_ai.evaluation.explanation", "")}


def count(attrs: dict, key: str, invalid: list[str]) -> int:
    """A token count attribute (0 when absent or unreadable, the latter reported)."""
    value = attrs.get(key)
    if value is None:
        return 0
    if type(value) is int:  # as OTLP's intValue decodes: already checked for int64
        return value
    return values.lenient(values.integer, value, key, invalid, 0)


def read(span: SourceSpan, logs: Sequence[LogRecord] = ()) -> Reading:
    attrs = dict(span.attributes) if logs else span.attributes  # copied only to be filled
    invalid: list[str] = []
    evaluations = [evaluation(e.attributes, invalid) for e in span.events
                   if e.name == EVALUATION]
    for record in logs:  # content events fill what the span left out
        if record.event_name == EVALUATION:
            evaluations.append(evaluation(record.attributes, invalid))
        else:
            for key, value in record.attributes.items():
                attrs.setdefault(key, value)
    op = str(attrs.get("gen_ai.operation.name", ""))
    kind = "llm" if op in LLM_OPERATIONS else _KIND.get(op, "step")
    reasons = attrs.get("gen_ai.response.finish_reasons") or []
    return Reading(
        kind=kind,
        model=str(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or ""),
        tokens_in=count(attrs, "gen_ai.usage.input_tokens", invalid),
        tokens_out=count(attrs, "gen_ai.usage.output_tokens", invalid),
        cache_read_tokens=count(attrs, CACHE_READ, invalid),
        cache_creation_tokens=count(attrs, CACHE_CREATION, invalid),
        reasoning_tokens=count(attrs, REASONING, invalid),
        conversation_id=str(attrs.get("gen_ai.conversation.id") or ""),
        input=last_user(attrs.get("gen_ai.input.messages")),
        output=text(attrs.get("gen_ai.output.messages")),
        finish_reason=str(reasons[0]) if isinstance(reasons, list) and reasons else "",
        evaluations=evaluations,
        consumed={k for k in attrs if k in _READ}, invalid=invalid)
