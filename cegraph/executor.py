"""Runs a workflow on tasks and returns traces; a failing node is a recorded fact, not an
exception escaping to the batch."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cegraph.graph import WORKFLOW_INPUT, Workflow
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

    def __init__(self, llm: LLM, *, concurrency: int | None = None,
                 sandbox: SandboxLimits | None = None) -> None:
        self.llm = llm
        # runs in flight; by default as many as the LLM keeps calls in flight (a local
        # model's engine slots), so the engine batches that many sequences
        self.concurrency = concurrency or llm.concurrency
        self.sandbox = sandbox or SandboxLimits()

    async def run(self, workflow: Workflow, task: Task, *, run_id: str | None = None) -> Trace:
        """Run every node once its upstream nodes are done, independent branches concurrently;
        spans keep the workflow's topological order."""
        started = time.time()
        values: dict[tuple[str, str], Any] = {(WORKFLOW_INPUT, "text"): task.input}
        spans = {nid: Span(nid, workflow.by_id[nid].op, workflow.depth[nid])
                 for nid in workflow.order}
        done = {nid: asyncio.Event() for nid in workflow.order}

        async def node_when_ready(nid: str) -> None:
            for upstream in workflow.by_id[nid].upstream():
                await done[upstream].wait()
            await self._run_node(workflow, nid, task, spans[nid], values)
            done[nid].set()

        async with asyncio.TaskGroup() as group:
            for nid in workflow.order:
                group.create_task(node_when_ready(nid))
        out_node, out_port = workflow.output_ref()
        out = values.get((out_node, out_port))
        return Trace(run_id or uuid.uuid4().hex, workflow.name, workflow.version_id, task.id,
                     list(spans.values()), None if out is None else str(out), started,
                     time.time(), output_ref=f"{out_node}.{out_port}")

    async def _run_node(self, workflow: Workflow, nid: str, task: Task, span: Span,
                        values: dict[tuple[str, str], Any]) -> None:
        node = workflow.by_id[nid]
        op = REGISTRY[node.op]
        span.started = time.time()
        try:
            cond = workflow.condition(node)
            if cond is not None:
                flag = values.get((cond.node, cond.port))
                if flag is None:
                    span.missing = [f"{cond.node}.{cond.port}"]
                if flag is None or bool(flag) == cond.negate:
                    raise _Skipped
            for port in node.inputs:
                span.sources[port] = self._source(workflow, node.sources(port), values, span)
            span.inputs = {port: values[workflow.resolve(ref)]
                           for port, ref in span.sources.items()}
            params = {**op.params, **node.params}
            ctx = NodeContext(task, params, self._recorder(span), self.sandbox)
            span.outputs = await op().run(ctx, span.inputs)
            values.update({(nid, port): v for port, v in span.outputs.items()})
        except _Skipped:
            span.skipped = True
        except Exception as exc:  # a node failure is data: record it, go on
            span.error = str(exc) or exc.__class__.__name__
            span.error_type = exc.__class__.__name__
            # a budget stop or outage is not the workflow's failure (later calls still meet
            # the spent budget: it fails closed without aborting the batch)
            span.infrastructure = is_infrastructure(exc)
        span.ended = time.time()

    @staticmethod
    def _source(workflow: Workflow, refs: list[str], values: dict[tuple[str, str], Any],
                span: Span) -> str:
        """The first ref of a fallback chain whose node produced it, as "node.port"."""
        resolved = [workflow.resolve(ref) for ref in refs]
        for key in resolved:
            if key in values:
                return f"{key[0]}.{key[1]}"
        span.missing = [f"{node}.{port}" for node, port in resolved]
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
