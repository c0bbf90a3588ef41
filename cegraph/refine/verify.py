"""Incremental verification: re-run a candidate on the inputs that can tell it apart.

A candidate runs on (a) the target's counterexamples, (b) a stratified sample of held-aside
inputs the base passed (regression), (c) a few counterexamples of other modes. Nothing
special is needed for unchanged nodes: a node whose prompt and inputs are unchanged makes
the same call, the call store answers it, and only the edited node and what reads it make
new calls. `Verification` counts both, and the calls a full re-execution would have made.

Inputs run in chunks; after each, the `EarlyStop` rule may end a candidate that can no
longer beat the best one so far, so bad candidates cost little (their unrun inputs count
as saved calls, estimated at the calls per run seen).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.task import Task
from cegraph.trace import INFRASTRUCTURE, Trace

STRATA = ("target", "others", "regression")


@dataclass(frozen=True)
class Plan:
    """Which inputs verify a candidate, per stratum, with the base's verdict on each and the
    mass one input of each stratum stands for (its share of the failure mass, or of the
    passing mass for regression)."""

    strata: dict[str, tuple[Task, ...]]
    base_passed: dict[str, bool]
    weight: dict[str, float]

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.strata.values())


def stratified_sample(tasks: Sequence[Task], n: int, key: Callable[[Task], str],
                      seed: int = 0) -> list[Task]:
    """`n` tasks drawn proportionally from each group of `key` (at least one per group while
    n allows), deterministic for a seed."""
    groups: dict[str, list[Task]] = {}
    for t in sorted(tasks, key=lambda t: t.id):
        groups.setdefault(key(t), []).append(t)
    rng = random.Random(seed)
    for g in groups.values():
        rng.shuffle(g)
    if n >= len(tasks):
        return [t for g in groups.values() for t in g]
    out: list[Task] = []
    total = len(tasks)
    quotas = {k: max(1, round(n * len(g) / total)) for k, g in groups.items()}
    for k in sorted(groups, key=lambda k: -len(groups[k])):
        take = min(quotas[k], n - len(out), len(groups[k]))
        out.extend(groups[k][:take])
    return out


@dataclass
class Counts:
    run: int = 0
    fixed: int = 0  # the base failed, the candidate passes
    broken: int = 0  # the base passed, the candidate fails
    still_failing: int = 0


@dataclass
class Verification:
    """A candidate's paired outcomes against the base, and what verifying it cost."""

    version_id: str
    counts: dict[str, Counts] = field(default_factory=lambda: {s: Counts() for s in STRATA})
    traces: list[Trace] = field(default_factory=list)
    calls_made: int = 0  # paid: answered by the provider
    calls_replayed: int = 0  # answered from the call store
    calls_full: int = 0  # what re-running every planned input without a store would make
    tokens: int = 0
    cost: float = 0.0
    stopped_early: bool = False
    stop_reason: str = ""  # why it stopped early (the `EarlyStop` rule's words)
    drop: float = 0.0  # estimated mass drop: weighted fixes minus weighted breaks

    @property
    def fixed(self) -> int:
        return sum(c.fixed for c in self.counts.values())

    @property
    def broken(self) -> int:
        return sum(c.broken for c in self.counts.values())

    @property
    def new_failures(self) -> list[Trace]:
        return [t for t in self.traces if t.outcome is not None and not t.outcome.passed]


class EarlyStop(Protocol):
    """Decides, between chunks, that a candidate is not worth finishing. Contract: returns
    why (a reason) only when the candidate *certainly* cannot win, whatever its unrun inputs
    give (so stopping never changes which candidate the acceptance rule would pick); None
    to go on."""

    def stop(self, v: Verification, plan: Plan, remaining: Sequence[Task],
             best: Verification | None) -> str | None: ...


@dataclass(frozen=True)
class CertainlyWorse:
    """Stop when even all remaining base failures turning into passes (and no regression
    breaking) cannot lift the candidate's estimated drop above the best one's, or when its
    regression breaks already exceed the rate acceptance allows."""

    max_break_rate: float = 0.1

    def stop(self, v: Verification, plan: Plan, remaining: Sequence[Task],
             best: Verification | None) -> str | None:
        reg = len(plan.strata.get("regression", ()))
        broken = v.counts["regression"].broken
        if reg and broken > self.max_break_rate * reg:
            return (f"it broke {broken} of the {reg} regression inputs, over the "
                    f"{self.max_break_rate:.0%} allowed")
        if best is None:
            return None
        upside = sum(plan.weight[_stratum(plan, t)] for t in remaining
                     if not plan.base_passed[t.id])
        if v.drop + upside < best.drop:
            return "it could not beat the best candidate"
        return None


def _stratum(plan: Plan, task: Task) -> str:
    return next(s for s, ts in plan.strata.items() if any(t.id == task.id for t in ts))


Evaluate = Callable[[Task, Trace], object]


@dataclass
class Verifier:
    """Runs candidates through one executor (its LLM's call store makes reruns replay)."""

    executor: Executor
    evaluate: Evaluate
    chunk: int = 4
    early_stop: EarlyStop = field(default_factory=CertainlyWorse)
    on_traces: Callable[[Workflow, list[Trace]], None] | None = None

    async def verify(self, wf: Workflow, plan: Plan, *, best: Verification | None = None,
                     on_progress: Callable[[Verification], None] | None = None
                     ) -> Verification:
        v = Verification(wf.version_id)
        order = [(s, t) for s in STRATA for t in plan.strata.get(s, ())]
        identity = self.executor.llm.identity
        i = 0
        while i < len(order):
            batch = order[i:i + self.chunk]
            traces = await self.executor.run_many(
                wf, [t for _, t in batch], evaluate=self.evaluate,
                run_id=lambda t: stable_run_id(wf.version_id, identity, t.id))
            for (stratum, task), trace in zip(batch, traces, strict=True):
                self._count(v, plan, stratum, task, trace)
            if self.on_traces is not None:
                self.on_traces(wf, traces)
            i += len(batch)
            if on_progress is not None:
                on_progress(v)
            why = self.early_stop.stop(v, plan, [t for _, t in order[i:]], best) \
                if i < len(order) else None
            if why:
                v.stopped_early, v.stop_reason = True, why
                per_run = v.calls_full / max(1, len(v.traces))
                v.calls_full += round(per_run * (len(order) - i))
                break
        return v

    @staticmethod
    def _count(v: Verification, plan: Plan, stratum: str, task: Task, trace: Trace) -> None:
        v.traces.append(trace)
        calls = [c for s in trace.spans for c in s.calls]
        v.calls_made += sum(1 for c in calls if not c.cached)
        v.calls_replayed += sum(1 for c in calls if c.cached)
        v.calls_full += len(calls)
        v.tokens += trace.tokens
        v.cost += trace.cost
        o = trace.outcome
        if o is None or o.failure_class == INFRASTRUCTURE:
            return  # not a verdict on the candidate
        c = v.counts[stratum]
        c.run += 1
        before = plan.base_passed[task.id]
        if o.passed and not before:
            c.fixed += 1
            v.drop += plan.weight[stratum]
        elif before and not o.passed:
            c.broken += 1
            v.drop -= plan.weight[stratum]
        elif not o.passed:
            c.still_failing += 1
