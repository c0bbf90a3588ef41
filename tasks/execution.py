"""Running a workflow over tasks, its LLM calls stored in (and replayed from) the warehouse.

The tasks take the project home's path, not an open warehouse, and open it for their own
work: a task is then runnable in any worker, and the flow holds no handle across tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cegraph.evaluators import evaluate
from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.llm import LLM, Meter
from cegraph.progress import Progress, live
from cegraph.storage import Warehouse
from cegraph.task import Task
from cegraph.trace import Trace

#: Seconds between progress lines in a task's log (a line also follows every finished run).
PROGRESS_EVERY_S = 10.0


@dataclass
class Executed:
    traces: list[Trace]
    model: str  # the model as stored with the runs (`LLM.identity`)


@task(name="run-workflow", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def run_workflow(home: str | None, workflow: Workflow, tasks: Sequence[Task], *, model: str,
                 concurrency: int | None = None, meter: Meter | None = None) -> Executed:
    """Run and grade every task; a retry replays finished calls from the call store and
    spends from the same `meter` (the job's budget), not a fresh one. A run that met an
    infrastructure error is graded `infrastructure` (retried by the next job)."""
    log = get_run_logger()
    with Warehouse(Path(home) if home else None) as wh:
        return _run(wh, workflow, tasks, model=model, concurrency=concurrency, meter=meter,
                    log=log)


def _run(wh: Warehouse, workflow: Workflow, tasks: Sequence[Task], *, model: str,
         concurrency: int | None, meter: Meter | None, log: Any) -> Executed:
    llm = LLM(model, store=wh, concurrency=concurrency, meter=meter)
    identity = llm.identity
    progress = Progress(len(tasks), workflow.name, lambda: llm.meter.tokens_out)

    def on_done(trace: Trace) -> None:
        progress.run_done(trace)
        verdict = "pass" if trace.outcome and trace.outcome.passed else (
            trace.outcome.failure_class if trace.outcome else "?")
        log.info("%s: %s | %s", trace.task_id, verdict, progress.line())

    # One run id per (version, model, input): re-running a slice replays from the call store
    # and is recognised as the same run instead of being counted twice.
    with live(progress, log.info, every_s=PROGRESS_EVERY_S):
        traces = asyncio.run(Executor(llm, concurrency=concurrency).run_many(
            workflow, tasks, evaluate=evaluate, on_done=on_done,
            run_id=lambda t: stable_run_id(workflow.version_id, identity, t.id)))
    log.info("LLM meter: %s", llm.meter.summary())
    return Executed(traces, identity)


@task(name="store-traces", cache_policy=NO_CACHE)
def store_traces(home: str | None, workflow: Workflow, traces: Sequence[Trace], *,
                 night_id: str, source: str, dataset: str, model: str) -> int:
    """Write runs, spans and failures to the history as one batch; returns the number of
    new failures."""
    with Warehouse(Path(home) if home else None) as wh:
        wh.record_version(workflow, created_by="seed")
        return len(wh.record_traces(traces, night_id=night_id, source=source,
                                    dataset=dataset, model=model))
