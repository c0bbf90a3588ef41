"""Runs a workflow on tasks and returns traces; a failing node is a recorded fact, not an
exception escaping to the batch."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cegraph.graph import WORKFLOW_INPUT, Condition, Workflow
from cegraph.infrastructure import is_infrastructure
from cegraph.llm import LLM, Completion
from cegraph.operators import REGISTRY, NodeContext
from cegraph.sandbox import SandboxLimits
from cegraph.task import Task
from cegraph.trace import Span, Trace

Evaluator = Callable[[Task, Trace], Any]


def stable_run_id(*parts: str) -> str:
    """A run id derived from what identifies the run, for idempotent re-runs."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


class _Skipped(Exception):
    """A node does not run: its condition is false or a source it needs did not run."""


class Executor:
    """Runs workflows with one `LLM` (its store makes reruns replay) and bounded concurrency."""

    def __init__(self, llm: LLM, *, concurrency: int = 4,
                 sandbox: SandboxLimits | None = None) -> None:
        self.llm = llm
        self.concurrency = concurrency
        self.sandbox = sandbox or SandboxLimits()

    async def run(self, workflow: Workflow, task: Task, *, run_id: str | None = None) -> Trace:
        started = time.time()
        values: dict[tuple[str, str], Any] = {(WORKFLOW_INPUT, "text"): task.input}
        spans: list[Span] = []
        for nid in workflow.order:
            node = workflow.by_id[nid]
            op = REGISTRY[node.op]
            span = Span(nid, node.op, workflow.depth[nid], started=time.time())
            spans.append(span)
            try:
                if node.when:
                    cond = Condition.parse(node.when)
                    flag = values.get((cond.node, cond.port))
                    if flag is None or bool(flag) == cond.negate:
                        raise _Skipped
                span.inputs = {port: self._source(workflow, node.sources(port), values)
                               for port in node.inputs}
                params = {**op.params, **node.params}
                ctx = NodeContext(task, params, self._recorder(span), self.sandbox)
                span.outputs = await op().run(ctx, span.inputs)
                values.update({(nid, port): v for port, v in span.outputs.items()})
            except _Skipped:
                span.skipped = True
            except Exception as exc:  # a node failure is data: record it, go on
                span.error = str(exc) or exc.__class__.__name__
                span.error_type = exc.__class__.__name__
                # a budget stop or outage is not the workflow's failure (later calls still
                # meet the spent budget: it fails closed without aborting the batch)
                span.infrastructure = is_infrastructure(exc)
            span.ended = time.time()
        out = values.get(workflow.output_ref())
        return Trace(run_id or uuid.uuid4().hex, workflow.name, workflow.version_id, task.id,
                     spans, None if out is None else str(out), started, time.time())

    @staticmethod
    def _source(workflow: Workflow, refs: list[str], values: dict[tuple[str, str], Any]) -> Any:
        for ref in refs:
            key = workflow.resolve(ref)
            if key in values:
                return values[key]
        raise _Skipped

    def _recorder(self, span: Span) -> Callable[..., Any]:
        async def complete(messages: list[dict[str, str]], **kw: Any) -> Completion:
            done = await self.llm.complete(messages, **kw)
            span.calls.append(done)
            return done
        return complete

    async def run_many(self, workflow: Workflow, tasks: Sequence[Task], *,
                       evaluate: Evaluator | None = None,
                       on_done: Callable[[Trace], None] | None = None,
                       run_id: Callable[[Task], str] | None = None) -> list[Trace]:
        """Run every task with at most `concurrency` runs in flight; traces keep task order."""
        slots = asyncio.Semaphore(self.concurrency)

        async def one(task: Task) -> Trace:
            async with slots:
                trace = await self.run(workflow, task, run_id=run_id(task) if run_id else None)
            if evaluate is not None:
                # graders may run code in the sandbox: keep the event loop free meanwhile
                trace.outcome = await asyncio.to_thread(evaluate, task, trace)
            if on_done is not None:
                on_done(trace)
            return trace

        return list(await asyncio.gather(*(one(t) for t in tasks)))
