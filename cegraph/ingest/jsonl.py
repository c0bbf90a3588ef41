"""Our own JSONL run format, for a user without OpenTelemetry: one run per line with its
spans and outcome. The JSON Schema is `cegraph/ingest/run.schema.json` (generated from
`RunRecord`; `python -m cegraph.ingest.jsonl > cegraph/ingest/run.schema.json`).

```json
{"run_id": "r1", "workflow": "math", "task_id": "q1", "input": "What is 2+3?",
 "output": "6", "started_at": "2025-01-01T00:00:00Z", "ended_at": 1735689601.5,
 "model": "gpt-4o-mini",
 "outcome": {"passed": false, "message": "expected 5, got 6", "expected": "5"},
 "spans": [{"node_id": "solve", "operator": "ChainOfThought", "output": "6",
            "tokens_in": 20, "tokens_out": 5}]}
```
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cegraph.ingest import values
from cegraph.ingest.assemble import EVALUATOR_VERSION
from cegraph.llm import Completion
from cegraph.trace import Outcome, Span, Trace


def _plausible(value: float | dt.datetime) -> float | dt.datetime:
    values.epoch_s(_epoch(value, 0.0), "time")  # what int64 nanoseconds (storage) hold
    return value


Time = Annotated[float | dt.datetime, AfterValidator(_plausible)]
#: a count storage holds (int64); negative ones are stored and flagged by the gate
Count = Annotated[int, Field(ge=-values.INT64_MAX - 1, le=values.INT64_MAX)]


class SpanRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    node_id: str = Field(description="node id in the workflow")
    operator: str = Field("step", description="operator / kind of the step")
    input: str = Field("", description="what the step was given")
    output: str = Field("", description="what the step produced")
    started_at: Time | None = Field(None, description="epoch seconds or ISO 8601")
    ended_at: Time | None = None
    model: str = ""
    tokens_in: Count = Field(0, description="prompt tokens (must be >= 0: the gate checks)")
    tokens_out: Count = 0
    finish_reason: str = Field("", description="'length' marks a truncated call")
    error: str | None = Field(None, description="the step's failure message")
    error_type: str | None = None


class OutcomeRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    passed: bool
    score: float | None = None
    failure_class: str | None = Field(None, description="wrong_answer | no_answer | exception "
                                                        "| ... (default from the spans)")
    message: str = ""
    expected: str = ""
    observed: str = ""


class RunRecord(BaseModel):
    """One run of a workflow, as a line of cegraph's JSONL run format."""

    model_config = ConfigDict(extra="allow", title="cegraph run")
    run_id: str = Field(description="unique run id (re-ingesting it is a no-op)")
    workflow: str
    version: str = "production"
    task_id: str = ""
    input: str = ""
    output: str = ""
    started_at: Time
    ended_at: Time | None = None
    model: str = "unknown"
    outcome: OutcomeRecord | None = None
    spans: list[SpanRecord] = Field(default_factory=list)


def is_run(obj: object) -> bool:
    return isinstance(obj, dict) and "run_id" in obj and "spans" in obj


def _epoch(value: Time | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return float(value)


def to_trace(record: RunRecord) -> Trace:
    started = _epoch(record.started_at, 0.0)
    ended = _epoch(record.ended_at, started)
    spans = []
    for depth, s in enumerate(record.spans):
        s_start = _epoch(s.started_at, started)
        s_end = _epoch(s.ended_at, s_start)
        calls = [Completion(f"{record.run_id}:{depth}", s.model or record.model,
                            [{"role": "user", "content": s.input}], {}, 0, s.output,
                            s.tokens_in, s.tokens_out, 0.0, s_end - s_start,
                            s.finish_reason, s_end)] if (s.tokens_in or s.tokens_out
                                                         or s.finish_reason) else []
        spans.append(Span(s.node_id, s.operator, depth,
                          {"input": s.input} if s.input else {},
                          {"output": s.output} if s.output else {}, s_start, s_end, calls,
                          s.error, s.error_type))
    trace = Trace(record.run_id, record.workflow, record.version,
                  record.task_id or record.run_id, spans, record.output, started, ended)
    o = record.outcome
    if o is not None:
        failed = trace.error_span
        cls = None if o.passed else (o.failure_class or ("exception" if failed else
                                     "no_answer" if not record.output.strip() else
                                     "wrong_answer"))
        message = o.message or (f"{failed.error_type}: {failed.error}" if failed else "")
        trace.outcome = Outcome(o.passed, o.score if o.score is not None else float(o.passed),
                                cls, message, o.expected, o.observed or record.output,
                                grader="log", evaluator_version=EVALUATOR_VERSION)
    return trace


def schema() -> dict[str, Any]:
    return RunRecord.model_json_schema()


if __name__ == "__main__":  # pragma: no cover - regenerates the committed schema
    print(json.dumps(schema(), indent=2))
