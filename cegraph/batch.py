"""A batch of workflow runs as chunks of plain data, so any task runner can run them anywhere.

Every batch of runs a night makes (the refinement's evaluations and verifications, the
gate's re-runs) can be fanned out: `FannedExecutor` is an `Executor` for the refinement loop
whose `run_many` cuts the batch into `Chunk`s and hands them to an injected `RunBatch`. A
chunk is plain data in (workflow JSON, task dicts, the model, the evaluator spec, the calls
it may replay, its share of the budget) and `ChunkResult` plain data out (traces, the calls
it paid for, the stored calls it replayed). `run_chunk` runs one chunk in whatever process
gets it and opens no database; the process that owns the call store and the meter (the
night's flow, the only writer) stores and charges each result once.

The budget holds across chunks in flight: each carries a share of what the meter has left,
the shares together never pass it, and what a chunk did not spend returns to the pool. A
chunk whose share ran out while others left some over is run again with the leftovers,
replaying what it already paid for, until it completes or no chunk can go further.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cegraph.credentials import Credentials
from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.llm import LLM, CallStore, Completion, MemoryCallStore, Meter
from cegraph.task import Task
from cegraph.trace import Trace

#: span errors that mean a chunk's share of the budget ran out
BUDGET_ERRORS = frozenset({"BudgetExceeded", "UnpricedModel"})


def task_dict(t: Task) -> dict[str, Any]:
    return {**asdict(t), "public_tests": list(t.public_tests)}


def task_from(d: dict[str, Any]) -> Task:
    return Task(d["id"], d["dataset"], d["input"], d["reference"],
                tuple(d.get("public_tests") or ()), dict(d.get("metadata") or {}))


def completion_dict(c: Completion) -> dict[str, Any]:
    return {**asdict(c), "cached": False}


@dataclass(frozen=True)
class Share:
    """What one chunk may spend at most (None: no limit of that kind)."""

    calls: int | None = None
    tokens: int | None = None
    dollars: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How a worker reaches the model: a litellm model string or a local model name, and
    the litellm keywords that go with it (`api_base`, ...); `fingerprint` names the weights
    when the server's address should not (a local model served on loopback);
    `credentials`: the keys it needs, forwarded from the flow's process."""

    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    credentials: Credentials = Credentials()

    def llm(self, *, store: CallStore, meter: Meter, concurrency: int | None) -> LLM:
        self.credentials.apply()
        extra = dict(self.extra)
        if "api_base" in extra:  # a server that checks no key still wants one sent
            extra.setdefault("api_key", os.environ.get("OPENAI_API_KEY", "none"))
        return LLM(self.model, store=store, meter=meter, concurrency=concurrency,
                   fingerprint=self.fingerprint, **extra)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a batch, as plain data. `known`: stored calls it may replay (already
    paid for or charged by the writer); `evaluator_json`: the registered evaluator's spec
    (`EvaluatorSpec` JSON; None: each task's own grader)."""

    chunk_id: str
    workflow_json: str
    tasks: list[dict[str, Any]]
    model: ModelSpec
    known: list[dict[str, Any]] = field(default_factory=list)
    share: Share = Share()
    evaluator_json: str | None = None
    judge: ModelSpec | None = None
    concurrency: int | None = None


@dataclass
class ChunkResult:
    """What a chunk did: traces in task order; `calls` it paid for (an earlier lost
    attempt's included, see `run_chunk`'s `prior`); `replayed`: keys of `known` calls it
    used; `exhausted`: its share ran out."""

    chunk_id: str
    traces: list[Trace]
    calls: list[dict[str, Any]]
    replayed: list[str]
    exhausted: bool

    @property
    def spent(self) -> tuple[int, int, float]:
        return (len(self.calls), sum(c["tokens_in"] + c["tokens_out"] for c in self.calls),
                sum(c["cost"] for c in self.calls))


class _Recording:
    """A call store over the chunk's known calls that notes which ones it answered and
    reports each new call as it is paid (so a lost attempt's calls are not paid again)."""

    def __init__(self, known: Sequence[dict[str, Any]],
                 on_call: Callable[[dict[str, Any]], None] | None) -> None:
        self.inner = MemoryCallStore()
        for c in known:
            self.inner.put(Completion(**c))
        self.replayed: list[str] = []
        self.made: dict[str, Completion] = {}
        self.on_call = on_call

    def get(self, key: str) -> Completion | None:
        found = self.made.get(key) or self.inner.get(key)
        if found is not None and key not in self.made and key not in self.replayed:
            self.replayed.append(key)
        return found

    def put(self, record: Completion) -> None:
        if record.key in self.made:
            return
        self.made[record.key] = record
        if self.on_call is not None:
            self.on_call(completion_dict(record))


def run_chunk(chunk: Chunk, *, prior: Sequence[dict[str, Any]] = (),
              on_call: Callable[[dict[str, Any]], None] | None = None) -> ChunkResult:
    """Run and grade one chunk here, with no database: it replays only `known` and `prior`
    (the calls an earlier attempt of this very chunk paid for before it was lost: replayed,
    counted against the share and returned as this chunk's, so they are charged once) and
    calls `on_call` with each call it pays for, as it is paid. Never raises for an outage or
    a spent share: those runs come back `infrastructure`."""
    from cegraph.evaluator_spec import EvaluatorSpec, grader
    from cegraph.evaluators import evaluate

    wf = Workflow.model_validate_json(chunk.workflow_json)
    store = _Recording(chunk.known, on_call)
    for c in prior:
        store.made[c["key"]] = Completion(**c)
    s = chunk.share
    meter = Meter(max_calls=s.calls, max_tokens=s.tokens, max_cost=s.dollars)
    for c in store.made.values():
        meter.charge(1, c.tokens_in, c.tokens_out, c.cost)
    llm = chunk.model.llm(store=store, meter=meter, concurrency=chunk.concurrency)
    grade: Any = evaluate
    if chunk.evaluator_json is not None:
        spec = EvaluatorSpec.model_validate_json(chunk.evaluator_json)
        judge = (chunk.judge.llm(store=store, meter=meter, concurrency=chunk.concurrency)
                 if chunk.judge is not None else llm)
        grade = grader(spec, judge)
    identity = llm.identity
    traces = asyncio.run(Executor(llm, concurrency=chunk.concurrency).run_many(
        wf, [task_from(t) for t in chunk.tasks], evaluate=grade,
        run_id=lambda t: stable_run_id(wf.version_id, identity, t.id)))
    return ChunkResult(chunk.chunk_id, traces,
                       [completion_dict(c) for c in store.made.values()], store.replayed,
                       any(sp.error_type in BUDGET_ERRORS for t in traces for sp in t.spans))


class RunBatch(Protocol):
    """Runs chunks, anywhere. Contract: returns one `ChunkResult` per chunk, in order, each
    what `run_chunk` returns for it (a chunk whose worker was lost is run again with the
    calls the lost attempt paid for as `prior`); never writes to a database; may run the
    chunks concurrently. Called from a worker thread of the writer's event loop."""

    def __call__(self, chunks: Sequence[Chunk]) -> list[ChunkResult]: ...


def in_process(chunks: Sequence[Chunk]) -> list[ChunkResult]:
    """The default `RunBatch`: one chunk after the other, here."""
    return [run_chunk(c) for c in chunks]


KnownCalls = Callable[[Workflow, Sequence[Task]], list[Completion]]


def shares(meter: Meter, parts: int) -> list[Share]:
    """`parts` equal shares of what `meter` has left: together they never pass it."""
    left_dollars = (None if meter.max_cost is None else
                    max(0.0, meter.max_cost - meter.cost - meter.reserved_cost))
    calls, tokens = meter.remaining_calls(), meter.remaining_tokens()
    n = max(1, parts)
    return [Share(None if calls is None else calls // n + (1 if i < calls % n else 0),
                  None if tokens is None else tokens // n,
                  None if left_dollars is None else left_dollars / n) for i in range(n)]


class FannedExecutor(Executor):
    """An `Executor` whose `run_many` runs through a `RunBatch` in chunks of `chunk` inputs.

    The writer keeps the call store and the meter: each chunk gets the calls `known` finds
    for its inputs (default: every call the store can list), its results' new calls are
    stored and charged to the meter, and its replays go through the store's `get` (a
    `ChargingStore` charges a replay of this job's own calls once). Runs are graded by
    `evaluator_json` (the same grader the caller's `evaluate` is: the caller's is not
    called), and run ids are the caller's `run_id`."""

    def __init__(self, llm: LLM, runner: RunBatch, model: ModelSpec, *, chunk: int = 4,
                 evaluator_json: str | None = None, judge: ModelSpec | None = None,
                 known: KnownCalls | None = None, concurrency: int | None = None) -> None:
        super().__init__(llm, concurrency=concurrency)
        self.runner, self.model, self.chunk = runner, model, max(1, chunk)
        self.evaluator_json, self.judge = evaluator_json, judge
        self.known = known
        self.chunks_run = 0  # chunks handed to the runner (re-runs included)

    def _known(self, wf: Workflow, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        if self.known is not None:
            return [completion_dict(c) for c in self.known(wf, tasks)]
        store = getattr(self.llm.store, "store", self.llm.store)  # under a ChargingStore
        records = getattr(store, "records", {})
        return [completion_dict(c) for c in records.values()]

    async def run_many(self, workflow: Workflow, tasks: Sequence[Task], *,
                       evaluate: Any = None, on_done: Callable[[Trace], None] | None = None,
                       run_id: Callable[[Task], str] | None = None) -> list[Trace]:
        if not tasks:
            return []
        base = uuid.uuid4().hex[:12]
        wf_json = workflow.model_dump_json()
        known = await asyncio.to_thread(self._known, workflow, tasks)
        groups = [list(tasks[i:i + self.chunk]) for i in range(0, len(tasks), self.chunk)]
        done: dict[int, ChunkResult] = {}
        pending = list(range(len(groups)))
        paid: dict[int, list[dict[str, Any]]] = {i: [] for i in pending}
        attempt = 0
        while pending:
            chunks = [Chunk(f"{base}-{i}-{attempt}", wf_json, [task_dict(t) for t in groups[i]],
                            self.model, known + paid[i], share, self.evaluator_json,
                            self.judge, self.concurrency)
                      for i, share in zip(pending, shares(self.llm.meter, len(pending)),
                                          strict=True)]
            self.chunks_run += len(chunks)
            results = await asyncio.to_thread(self.runner, chunks)
            progressed, again = False, []
            for i, result in zip(pending, results, strict=True):
                self._absorb(result)
                progressed |= bool(result.calls)
                paid[i] += result.calls
                done[i] = result
                if result.exhausted:
                    again.append(i)
            # leftovers of the others pay for another go, replaying what was paid for
            pending = again if progressed and self._left() else []
            attempt += 1
        traces = [t for i in range(len(groups)) for t in done[i].traces]
        for t, task in zip(traces, tasks, strict=True):
            if run_id is not None:
                t.run_id = run_id(task)
            if on_done is not None:
                on_done(t)
        return traces

    def _left(self) -> bool:
        m = self.llm.meter
        return all(x is None or x > 0 for x in (m.remaining_calls(), m.remaining_tokens()))

    def _absorb(self, result: ChunkResult) -> None:
        """Store and charge what a chunk paid for, and charge its replays (once)."""
        store, meter = self.llm.store, self.llm.meter
        for key in result.replayed:
            store.get(key)  # a ChargingStore charges this job's own calls here, once
            meter.count_cached()
        for c in result.calls:
            call = Completion(**c)
            store.put(call)
            meter.charge(1, call.tokens_in, call.tokens_out, call.cost, generated=True)


@dataclass(frozen=True)
class FanOut:
    """How a job's batches of runs are fanned out: what `FannedExecutor` needs besides the
    job's LLM (whose store and meter stay with the writer)."""

    runner: RunBatch
    model: ModelSpec
    chunk: int = 4
    evaluator_json: str | None = None
    judge: ModelSpec | None = None
    known: KnownCalls | None = None

    def executor(self, llm: LLM, *, concurrency: int | None = None) -> FannedExecutor:
        return FannedExecutor(llm, self.runner, self.model, chunk=self.chunk,
                              evaluator_json=self.evaluator_json, judge=self.judge,
                              known=self.known, concurrency=concurrency)
