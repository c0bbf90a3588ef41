"""The nightly gate's re-runs, one Prefect task per chunk of inputs and version.

Inputs and outputs are plain data (workflow JSON, task dicts, stored calls as dicts, results
as dicts), so any task runner can run the chunks anywhere (threads, processes, a Dask
cluster with prefect-dask): a chunk opens no database. It replays only the calls it is
given (`known`: for the active version, what the night's call store answered; for the
candidate, nothing but its own earlier attempt's, so its evidence is new calls), spends at
most its share of what the night's budget has left (`Share`: calls, tokens and dollars, so
the chunks together cannot pass it), and returns the calls it made for the flow to store and
charge. It never raises for an outage or a spent share: those runs come back
`infrastructure` (and `exhausted` says the share ran out), and the flow decides whether to
retry the chunk, replaying what this attempt already paid for.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cegraph.evaluator_spec import EvaluatorSpec, grader
from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.llm import LLM, Completion, MemoryCallStore, Meter
from cegraph.task import Task
from cegraph.trace import INFRASTRUCTURE, Trace

#: span errors that mean the chunk's share of the budget ran out
BUDGET_ERRORS = frozenset({"BudgetExceeded", "UnpricedModel"})


def task_dict(t: Task) -> dict[str, Any]:
    return {**asdict(t), "public_tests": list(t.public_tests)}


def task_from(d: dict[str, Any]) -> Task:
    return Task(d["id"], d["dataset"], d["input"], d["reference"],
                tuple(d.get("public_tests") or ()), dict(d.get("metadata") or {}))


def completion_dict(c: Completion) -> dict[str, Any]:
    return {**asdict(c), "cached": False}


def run_result(trace: Trace) -> dict[str, Any]:
    """What the gate needs of one re-run; cost and latency are the recorded calls' (what the
    run costs in production), replayed or not."""
    calls = [c for s in trace.spans for c in s.calls]
    o = trace.outcome
    return {"task_id": trace.task_id, "run_id": trace.run_id, "output": trace.output,
            "passed": bool(o and o.passed),
            "outcome": "unevaluated" if o is None else "pass" if o.passed
            else o.failure_class or "unknown",
            "infrastructure": bool(o and o.failure_class == INFRASTRUCTURE),
            "cost": sum(c.cost for c in calls), "latency_s": sum(c.latency_s for c in calls),
            "calls": len(calls)}


@task(name="verify-chunk", cache_policy=NO_CACHE)
def verify_chunk(workflow_json: str, tasks: list[dict[str, Any]], *, model: str,
                 evaluator_json: str, known: list[dict[str, Any]], max_calls: int | None,
                 max_tokens: int | None = None, max_dollars: float | None = None,
                 concurrency: int | None = None) -> dict[str, Any]:
    """Run `tasks` on the workflow and grade them with the registered workflow's evaluator
    (`EvaluatorSpec` JSON; a judge spends from the chunk's allowance); returns `runs` (see
    `run_result`), the new `calls`, the traces, and whether the allowance ran out."""
    wf = Workflow.model_validate_json(workflow_json)
    store = MemoryCallStore()
    for c in known:
        store.put(Completion(**c))
    before = set(store.records)
    meter = Meter(max_calls=max_calls, max_tokens=max_tokens, max_cost=max_dollars)
    llm = LLM(model, store=store, meter=meter, concurrency=concurrency)
    spec = EvaluatorSpec.model_validate_json(evaluator_json)
    judge = LLM(spec.judge_model, store=store, meter=meter) if spec.judge_model else llm
    identity = llm.identity
    traces = asyncio.run(Executor(llm, concurrency=concurrency).run_many(
        wf, [task_from(t) for t in tasks], evaluate=grader(spec, judge),
        run_id=lambda t: stable_run_id(wf.version_id, identity, t.id)))
    return {"runs": [run_result(t) for t in traces],
            "calls": [completion_dict(c) for k, c in store.records.items() if k not in before],
            "traces": traces,
            "exhausted": any(s.error_type in BUDGET_ERRORS for t in traces for s in t.spans)}
