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

import json
import uuid
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from cegraph.batch import (
    BUDGET_ERRORS,
    Chunk,
    ModelSpec,
    Share,
    completion_dict,
    run_chunk,
    task_dict,
    task_from,
)
from cegraph.tasks.batch import call_log
from cegraph.trace import INFRASTRUCTURE, Trace

__all__ = ["BUDGET_ERRORS", "completion_dict", "run_result", "task_dict", "task_from",
           "verify_chunk"]


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
                 concurrency: int | None = None,
                 served: ModelSpec | None = None,
                 judge: ModelSpec | None = None) -> dict[str, Any]:
    """Run `tasks` on the workflow and grade them with the registered workflow's evaluator
    (`EvaluatorSpec` JSON; a judge spends from the chunk's allowance); returns `runs` (see
    `run_result`), the new `calls`, the traces, and whether the allowance ran out. `served`:
    how this worker reaches the model (default: `model` as a litellm string or local name);
    `judge`: how it reaches the evaluator's judge model (default: its model string)."""
    spec = json.loads(evaluator_json)
    # journaled under its task run id: the same on a Dask re-run of a lost chunk
    chunk = Chunk(f"gate-{task_run.id or uuid.uuid4().hex}", workflow_json, tasks,
                  served or ModelSpec(model), known,
                  Share(max_calls, max_tokens, max_dollars), evaluator_json,
                  judge or (ModelSpec(spec["judge_model"]) if spec.get("judge_model") else None),
                  concurrency)
    log = call_log()
    got = run_chunk(chunk, prior=log.read(chunk.chunk_id),
                    on_call=lambda call: log.add(chunk.chunk_id, call))
    log.done(chunk.chunk_id)
    return {"runs": [run_result(t) for t in got.traces], "calls": got.calls,
            "traces": got.traces, "exhausted": got.exhausted}
