"""The demo's "production" service: answers questions with one workflow version (the active
one of the registry) and the model, grades each answer online against the reference it was
given (as a service with user feedback or an online evaluator would), and emits one GenAI
trace per answer through the OpenTelemetry SDK to an OTLP/JSON file or an OTLP/HTTP endpoint
(`cegraph collect`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.graph import Workflow
from cegraph.llm import LLM
from cegraph.serving.telemetry import OPERATOR, REFERENCE, emit_run
from cegraph.task import Task
from cegraph.trace import Trace


def ingest_mapping(workflow: str) -> str:
    """The `cegraph ingest --mapping` TOML that reads this service's spans without loss."""
    return (f'[workflow."{workflow}"]\noperator_attribute = "{OPERATOR}"\n'
            f'reference_attribute = "{REFERENCE}"\n')


def exporter_for(target: str) -> SpanExporter:
    """An OTLP/HTTP exporter for an `http(s)://` endpoint, else an OTLP/JSON file."""
    if target.startswith(("http://", "https://")):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=target.rstrip("/") + "/v1/traces")
    from cegraph.serving.otlp_file import OtlpJsonFileExporter

    return OtlpJsonFileExporter(Path(target))


class Service:
    """Answers with `workflow` through `llm`; `close()` flushes the spans."""

    def __init__(self, workflow: Workflow, llm: LLM, exporter: SpanExporter, *,
                 concurrency: int = 2) -> None:
        self.workflow = workflow
        self.llm = llm
        self.provider = TracerProvider(resource=Resource.create({
            "service.name": f"{workflow.name}-service", "service.version": workflow.version_id}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("cegraph.serving")
        self.executor = Executor(llm, concurrency=concurrency)

    def answer_all(self, tasks: Sequence[Task],
                   on_done: Callable[[Trace], None] | None = None) -> list[Trace]:
        """Answer every task (graded against its reference), emitting a trace per answer."""
        by_id = {t.id: t for t in tasks}

        def done(trace: Trace) -> None:
            emit_run(self.tracer, trace, by_id[trace.task_id])
            if on_done:
                on_done(trace)

        return asyncio.run(self.executor.run_many(self.workflow, tasks, evaluate=evaluate,
                                                  on_done=done))

    def close(self) -> None:
        self.provider.shutdown()  # flushes every span still batched

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
