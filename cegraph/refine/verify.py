"""Incremental verification: re-run a candidate on one paired sample of the verification role.

The sample (`Plan`) is drawn from the verification-role inputs only (never shown to the
proposer), in three strata with known population sizes: the target mode's members there,
the other failures, the passes. Every planned unit runs on the candidate; the base's verdict
on it is the base's own evaluation of the same unit, so fixes and breaks are counted on the
same population (see `estimator.py`). Nothing special is needed for unchanged nodes: a node
whose prompt and inputs are unchanged makes the same call, the call store answers it, and
only the edited node and what reads it make new calls. `Verification` counts both, and the
calls a full re-execution would have made.

Units run in chunks, strata interleaved with passes first, so breaks are seen before a
budget can end the run. After each chunk the `EarlyStop` rule may end a candidate that
certainly cannot win (its unrun units count as saved calls, estimated at the calls per run
seen). A unit without a verdict (a budget stop, an outage) ends the verification there:
`complete` is then False and the verdict can only be undecided.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.llm import BudgetExceeded
from cegraph.refine.estimator import Stratum
from cegraph.task import Task
from cegraph.trace import INFRASTRUCTURE, Trace

STRATA = ("target", "others", "passes")


@dataclass(frozen=True)
class Plan:
    """Which verification-role inputs verify a candidate, per stratum, with the base's verdict
    on each and each stratum's population size in the verification role (its known weight)."""

    strata: dict[str, tuple[Task, ...]]
    base_passed: dict[str, bool]
    population: dict[str, int]

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.strata.values())

    @property
    def stratum_of(self) -> dict[str, str]:
        """Each planned task id's stratum."""
        return {t.id: s for s, ts in self.strata.items() for t in ts}

    @property
    def weight(self) -> dict[str, float]:
        """The mass one unit of each stratum stands for: W_h / n_h."""
        total = max(1, sum(self.population.values()))
        return {s: self.population.get(s, 0) / total / max(1, len(ts))
                for s, ts in self.strata.items()}

    def order(self) -> list[tuple[str, Task]]:
        """The units, strata interleaved round-robin with passes first, so breaks show up
        early whatever stops the run."""
        lanes = [list(self.strata.get(s, ())) for s in ("passes", "target", "others")]
        names = ("passes", "target", "others")
        out = []
        for i in range(max((len(lane) for lane in lanes), default=0)):
            out += [(name, lane[i]) for name, lane in zip(names, lanes, strict=True)
                    if i < len(lane)]
        return out


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
    planned: int = 0  # units in the plan
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
    incomplete: str = ""  # why some planned unit has no verdict (budget, outage)

    @property
    def fixed(self) -> int:
        return sum(c.fixed for c in self.counts.values())

    @property
    def broken(self) -> int:
        return sum(c.broken for c in self.counts.values())

    @property
    def decided(self) -> int:
        """Units with a verdict on the candidate."""
        return sum(c.run for c in self.counts.values())

    @property
    def complete(self) -> bool:
        """Every planned unit has a verdict (an early stop is not complete either)."""
        return not self.stopped_early and not self.incomplete and self.decided == self.planned

    def strata(self, plan: Plan) -> dict[str, Stratum]:
        """The estimator's view: per stratum its population, units decided and changes."""
        return {s: Stratum(plan.population.get(s, 0), c.run,
                           c.broken if s == "passes" else c.fixed, s == "passes")
                for s, c in self.counts.items()}

    @property
    def new_failures(self) -> list[Trace]:
        return [t for t in self.traces if t.outcome is not None and not t.outcome.passed]


class EarlyStop(Protocol):
    """Decides, between chunks, that a candidate is not worth finishing. Contract: returns
    why (a reason) only when the candidate *certainly* cannot win, whatever its unrun inputs
    give, and `best` is a candidate already certain to be accepted (never a rejected or
    undecided one), so stopping never changes which candidate is picked, whatever the order
    the candidates are verified in; None to go on."""

    def stop(self, v: Verification, plan: Plan, remaining: Sequence[Task],
             best: Verification | None) -> str | None: ...


@dataclass(frozen=True)
class CertainlyWorse:
    """Stop when even all remaining base failures turning into passes (and no pass breaking)
    cannot lift the candidate's estimated drop above the best accepted one's, or when its
    breaks already exceed the rate acceptance allows on the planned passes."""

    max_break_rate: float = 0.1

    def stop(self, v: Verification, plan: Plan, remaining: Sequence[Task],
             best: Verification | None) -> str | None:
        passes = len(plan.strata.get("passes", ()))
        broken = v.counts["passes"].broken
        if passes and broken > self.max_break_rate * passes:
            return (f"it broke {broken} of the {passes} passes sampled, over the "
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
        v = Verification(wf.version_id, planned=plan.size)
        order = plan.order()
        identity = self.executor.llm.identity
        i = 0
        while i < len(order):
            batch = order[i:i + self.chunk]
            try:
                traces = await self.executor.run_many(
                    wf, [t for _, t in batch], evaluate=self.evaluate,
                    run_id=lambda t: stable_run_id(wf.version_id, identity, t.id))
            except BudgetExceeded as exc:
                v.incomplete = f"budget: {str(exc).splitlines()[0]}"
                break
            for (stratum, task), trace in zip(batch, traces, strict=True):
                self._count(v, plan, stratum, task, trace)
            if self.on_traces is not None:
                self.on_traces(wf, traces)
            i += len(batch)
            if on_progress is not None:
                on_progress(v)
            if v.incomplete:  # a unit without a verdict: the evidence can only be partial
                break
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
        if o is None or o.failure_class == INFRASTRUCTURE:  # not a verdict on the candidate
            v.incomplete = v.incomplete or (
                f"no verdict on {task.id}: {o.message if o else 'no outcome'}")[:200]
            return
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
