"""The greedy refinement loop: mode -> propose -> verify -> accept, under one hard budget.

    result = refine(seed("math"), tasks, llm=LLM("qwen2.5-coder-0.5b"), budget=Budget(calls=800))

Before any proposal each input gets a role (`splits.assign_roles`, recorded through the
journal): `shown` inputs are all a proposer may read (failing examples, expected answers,
traces, mode labels, the anti-overfit screen); `verification` inputs judge candidates and
are never shown. Each round maps the current version's shown failures (modes), aims at the
densest mode not yet tried on this version, gathers candidate edits (operator prior and LLM
proposer; `scalar` and `random` swap these, see `baselines.py`), verifies each on one paired
sample of the verification role (`verify.py`) and judges it (`acceptance.py`): accepted only
on complete evidence, a positive lower bound of the mass drop, breaks within the limit, cost
within the bounds shared with the gate (`cost.py`), and a family-wise corrected sign test;
the accepted candidate with the best drop per extra token wins. The mass the loop tracks is the
verification role's. It stops when the mass has not fallen for `patience` rounds, the target
mass is reached, or the next step cannot be paid for: every step's calls and worst-case
tokens (judge calls included) are projected before it starts, from the nodes it re-runs, and
a step that may not fit is not started. The budget (`Budget`) covers execution, proposals,
judges and labels alike: one meter, shared by every LLM of the run.

Every step is journaled as it happens (`Journal`); running the same refinement again
resumes it (see `journal.py`). Ctrl-C raises `KeyboardInterrupt` out of `refine` after the
last completed step is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cegraph.batch import FanOut
from cegraph.evaluators import evaluate
from cegraph.executor import Executor, stable_run_id
from cegraph.fss.failure import Failure, failure_from_trace
from cegraph.fss.failure_space import Analysis, analyze_failures
from cegraph.fss.signature import Embedder, SignatureBuilder
from cegraph.graph import Workflow
from cegraph.llm import LLM, BudgetExceeded, Meter
from cegraph.operators import REGISTRY
from cegraph.progress import Progress as RunCounts
from cegraph.refine.acceptance import (
    AcceptanceRule,
    DenseNewMode,
    PairedRule,
    Verdict,
    decision_counts,
)
from cegraph.refine.cost import CostBounds
from cegraph.refine.demonstrations import materialize
from cegraph.refine.edits import Applied
from cegraph.refine.journal import ChargingStore, Journal, MemoryJournal
from cegraph.refine.memory import (
    NOT_CHOSEN,
    edit_key,
    forget_rejected,
    mode_state,
    rejected_keys,
)
from cegraph.refine.proposer import (
    Candidate,
    LLMProposer,
    PriorProposer,
    Proposals,
    Proposer,
    RuleProposer,
    Target,
    screen,
)
from cegraph.refine.splits import Role, assign_roles
from cegraph.refine.stopping import Convergence, StopRule
from cegraph.refine.targets import AggregateTarget, ModeTargets, TargetSelector, untried
from cegraph.refine.verify import (
    CertainlyWorse,
    Evaluate,
    Plan,
    Verification,
    Verifier,
    stratified_sample,
)
from cegraph.task import Task
from cegraph.trace import INFRASTRUCTURE, Trace

Method = Literal["cegraph", "scalar", "random"]


class RefineError(ValueError):
    """A refinement that cannot start; the message says what to change."""


@dataclass(frozen=True)
class Budget:
    """The one hard budget of a run: LLM calls, tokens and/or dollars (None: no limit)."""

    calls: int | None = None
    tokens: int | None = None
    dollars: float | None = None

    def meter(self) -> Meter:
        return Meter(max_calls=self.calls, max_tokens=self.tokens, max_cost=self.dollars)


@dataclass(frozen=True)
class Settings:
    method: Method = "cegraph"
    k: int = 3  # LLM-proposed candidates per round
    prior_k: int = 3  # operator-prior candidates per round
    patience: int = 2
    target_mass: float = 0.0
    max_rounds: int = 8
    verification: float = 0.5  # share of the inputs in the verification role (never shown)
    regression: int = 24  # verification-role inputs sampled beyond the target's (fails+passes)
    counterexamples: int = 12  # the target mode's verification-role members per verification
    alpha: float = 0.05
    max_break_rate: float = 0.1
    seed: int = 0
    concurrency: int | None = None  # None: the LLM's (a local model's engine slots)
    proposer_tokens: int = 512
    heartbeat_s: float = 20.0  # a progress event at least this often while verifying
    cost: CostBounds = CostBounds()  # one cost rule with the gate (cegraph.refine.cost)
    # skip candidates an earlier refinement of this workflow rejected for the same mode
    # (cegraph only). A benchmark turns it off: its methods share one warehouse, and one
    # method's rejections would be evidence another never paid for.
    remember: bool = True


@dataclass(frozen=True)
class Progress:
    """What the loop is doing, for a progress display."""

    round: int
    step: str  # evaluate | propose | verify | accept | stop
    target: str = ""
    candidate: str = ""  # "2/5 set_param (prior)"
    calls: int = 0
    budget_calls: int | None = None
    message: str = ""


@dataclass
class Accepted:
    round: int
    edit_id: str
    op: str
    source: str
    target: str
    version_id: str
    verdict: Verdict
    diff: list[str]


@dataclass
class RefineResult:
    refine_id: str
    seed: Workflow
    workflow: Workflow
    mass_before: float
    mass_after: float
    masses: list[float]
    accepted: list[Accepted]
    stop_reason: str
    llm_calls: int
    tokens: int
    cost: float
    wall_s: float
    verification_calls: int = 0  # calls verification paid for
    verification_replayed: int = 0
    verification_full: int = 0  # calls a full re-execution of the same candidates would make
    invalid: int = 0
    candidates: int = 0
    verdicts: list[tuple[str, str, Verdict]] = field(default_factory=list)  # (edit id, op, ..)

    @property
    def verification_saving(self) -> float:
        """Share of a full re-execution's calls that incremental verification did not make."""
        full = self.verification_full
        return 1 - self.verification_calls / full if full else 0.0

    def summary(self) -> dict[str, Any]:
        return {"refine_id": self.refine_id, "seed_version": self.seed.version_id,
                "version": self.workflow.version_id, "mass_before": round(self.mass_before, 4),
                "mass_after": round(self.mass_after, 4),
                "accepted_edits": [a.op for a in self.accepted], "llm_calls": self.llm_calls,
                "tokens": self.tokens, "cost": round(self.cost, 6),
                "wall_s": round(self.wall_s, 2), "stop_reason": self.stop_reason,
                "candidates": self.candidates, "invalid_candidates": self.invalid,
                "verification_calls": self.verification_calls,
                "verification_full_calls": self.verification_full,
                "verification_saving": round(self.verification_saving, 3),
                "verdicts": decision_counts([d for _, _, d in self.verdicts])}


def llm_calls_per_run(wf: Workflow, nodes: Sequence[str] | None = None, *,
                      least: bool = False) -> int:
    """The most LLM calls one run of `nodes` (default: all) can make; with `least`, the
    fewest (nodes that run on a condition and escalations left out)."""
    total = 0
    for nid in nodes if nodes is not None else wf.order:
        n = wf.by_id[nid]
        params = {**REGISTRY[n.op].params, **n.params}
        if n.op == "Test" or (n.op == "Format" and not params.get("llm", True)) or (
                least and n.when):
            continue
        if n.op == "CrossCheck":  # one check, n more samples on a disagreement
            total += 1 if least else 1 + int(params["n"])
        elif n.op == "SelfConsistency":
            total += int(params["n"]) + (1 if params["vote"] == "llm" else 0)
        else:
            total += 1
    return total


def _edit_outcome(verdict: Verdict, picked: bool) -> dict[str, str | None]:
    """An edit row's final status and reason after its round's decision."""
    if picked:
        return {"status": "accepted", "reject_reason": None}
    if verdict.accepted:  # significant too, but another candidate did more per extra token
        return {"status": "rejected",
                "reject_reason": f"{NOT_CHOSEN} another accepted edit drops the mass more per "
                                 f"extra token ({verdict.reason})"}
    return {"status": "undecided" if verdict.decision == "undecided" else "rejected",
            "reject_reason": verdict.reason}


def least_verification(s: Settings, inputs: int) -> int:
    """The fewest calls one verification of a one-node edit can take on `inputs` inputs (its
    sample of the verification role, plus one proposal), for budget checks before a run."""
    return min(round(inputs * s.verification), s.regression + s.counterexamples) + 1


def changed_nodes(base: Workflow, cand: Workflow) -> list[str]:
    """Nodes of `cand` that must re-run: changed or new, and everything downstream."""
    old = {n["id"]: n for n in base.resolved()["nodes"]}
    dirty = {n["id"] for n in cand.resolved()["nodes"] if old.get(n["id"]) != n}
    for nid in cand.order:  # topological: a node reading a dirty node is dirty
        if cand.by_id[nid].upstream() & dirty:
            dirty.add(nid)
    return [n for n in cand.order if n in dirty]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


@dataclass
class _Judged:
    """One candidate of a round and its verdict (settled by the family after the round)."""

    cand: Candidate
    applied: Applied
    edit_id: str
    v: Verification
    verdict: Verdict
    verified: bool = True  # False: rejected before verification (its projected cost)


@dataclass
class _State:
    """The loop's working state for the current version."""

    wf: Workflow
    traces: dict[str, Trace]  # task id -> the current version's trace
    mass: float = 1.0  # the verification role's failure rate
    failures: list[Failure] = field(default_factory=list)  # every role's
    shown: list[Failure] = field(default_factory=list)  # the shown role's: all a proposer sees
    shown_runs: int = 0
    analysis: Analysis | None = None  # of the shown failures


class Refinement:
    """One refinement run (see module doc); `run()` does it, `refine()` is the shortcut."""

    def __init__(self, workflow: Workflow, tasks: Sequence[Task], *, llm: LLM,
                 budget: Budget, proposer_llm: LLM | None = None,
                 settings: Settings | None = None, journal: Journal | None = None,
                 embedder: Embedder | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 stop_rule: StopRule | None = None, selector: TargetSelector | None = None,
                 proposers: Sequence[Proposer] | None = None,
                 charge_since: float | None = None, evaluate: Evaluate = evaluate,
                 judge_llm: LLM | None = None, fan_out: FanOut | None = None) -> None:
        self.settings = s = settings or Settings()
        if not tasks:
            raise RefineError("the dev set is empty: give refine some inputs (--dev N > 0)")
        if len(tasks) < 2:
            raise RefineError("refine needs at least 2 inputs: some to show the proposer, "
                              "others to verify its edits on")
        # the roles are fixed here, before any proposal, and recorded when the run starts
        self.roles: dict[str, Role] = assign_roles(tasks, s.verification, seed=s.seed)
        self.seed, self.dev = workflow, list(tasks)
        self.tasks = {t.id: t for t in self.dev}
        self.llm, self.proposer_llm = llm, proposer_llm or llm
        self.budget = budget
        # how a run is graded: the task's own grader, or a registered one (`judge_llm`: the
        # LLM a judging `evaluate` calls, metered and charged like every call of the run)
        self.evaluate, self.judge_llm = evaluate, judge_llm
        # where the evaluations and verifications run (None: here, through `llm`); the
        # fan-out grades as `evaluate` does and its chunks' calls are charged to this run
        self.fan_out = fan_out
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.embedder = embedder
        self.on_progress = on_progress
        self.stop_rule = stop_rule or Convergence(s.patience, s.target_mass, s.max_rounds)
        self.selector = selector or (ModeTargets() if s.method == "cegraph"
                                     else AggregateTarget(s.seed, s.counterexamples))
        self._proposers = proposers
        # stored calls made since this time are charged once when used (default: since the
        # job first started); 0 charges every stored call: the budget then counts the
        # distinct calls the run needs, whatever the store held (equal-budget comparisons)
        self.charge_since = charge_since
        self.refine_id = _digest({
            "seed": workflow.version_id, "llm": llm.identity,
            "proposer": self.proposer_llm.identity, "dev": sorted(t.id for t in self.dev),
            "budget": budget.__dict__, "settings": s.__dict__})
        self._check_budget()
        self.meter = budget.meter()
        self.round = 0
        self.calls_seen = 0

    # --- budget ---------------------------------------------------------------------------
    def _check_budget(self) -> None:
        """Refuse, before any call, a budget that cannot pay the seed's evaluation and one
        verification of a one-node edit."""
        if self.budget.calls is None:
            return
        base = self._calls_per_run(self.seed) * len(self.tasks)
        s = self.settings
        one = least_verification(s, len(self.tasks))
        if self.budget.calls < base + one:
            raise RefineError(
                f"a budget of {self.budget.calls} calls cannot pay for one verification: "
                f"evaluating the seed on {len(self.tasks)} inputs may take {base} calls and "
                f"one verification at least {one}; raise --budget-calls to at least "
                f"{base + one} or lower --dev")

    def _calls_per_run(self, wf: Workflow, nodes: Sequence[str] | None = None) -> int:
        """The most calls one run of `nodes` makes, its judge's call included."""
        return llm_calls_per_run(wf, nodes) + (1 if self.judge_llm is not None else 0)

    def _worst_call_tokens(self, wf: Workflow, traces: dict[str, Trace]) -> int:
        """A call's worst case as the meter reserves it: the largest prompt seen so far plus
        the largest `max_tokens` of the workflow (or the proposer's)."""
        prompt = max((c.tokens_in for t in traces.values() for sp in t.spans
                      for c in sp.calls), default=1000)
        limit = max([int({**REGISTRY[n.op].params, **n.params}.get("max_tokens") or 0)
                     for n in wf.nodes] + [self.settings.proposer_tokens])
        return prompt + limit

    def _affordable(self, calls: int, call_tokens: int) -> bool:
        """Whether a step projected to make `calls` calls of at most `call_tokens` tokens each
        fits what the budget has left."""
        left = self.meter.remaining_calls()
        if left is not None and calls > left:
            return False
        tokens_left = self.meter.remaining_tokens()
        return tokens_left is None or calls * call_tokens <= tokens_left

    def _emit(self, step: str, **kw: Any) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(self.round, step, calls=self.meter.calls,
                                      budget_calls=self.budget.calls, **kw))

    async def _heartbeat(self, beat: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            beat()

    # --- running ---------------------------------------------------------------------------
    async def _evaluate(self, wf: Workflow, tasks: Sequence[Task]) -> dict[str, Trace]:
        identity = self.llm.identity
        counts = RunCounts(len(tasks))

        def on_done(trace: Trace) -> None:  # long evaluations show progress per run
            counts.run_done(trace)
            self._emit("evaluate", message=f"{counts.done}/{counts.total} runs, "
                                           f"{counts.passed} passed")

        traces = await self.executor.run_many(
            wf, tasks, evaluate=self.evaluate, on_done=on_done,
            run_id=lambda t: stable_run_id(wf.version_id, identity, t.id))
        self.journal.record_traces(traces, source="benchmark")
        return {t.task_id: t for t in traces}

    def _counted(self, state: _State, role: Role) -> list[Trace]:
        """The current version's traces with a verdict, of the inputs in `role`."""
        return [tr for t in self.dev if self.roles[t.id] == role
                and (tr := state.traces.get(t.id)) is not None and tr.outcome is not None
                and tr.outcome.failure_class != INFRASTRUCTURE]

    def _analyze(self, state: _State) -> None:
        shown, verifying = self._counted(state, "shown"), self._counted(state, "verification")
        state.failures = [f for t in [*shown, *verifying]
                          if (f := failure_from_trace(t)) is not None]
        state.shown = [f for f in state.failures if self.roles[f.task_id] == "shown"]
        state.shown_runs = len(shown)
        state.mass = (len(state.failures) - len(state.shown)) / max(1, len(verifying))
        state.analysis = None
        if self.settings.method == "cegraph" and state.shown:
            state.analysis = analyze_failures(state.shown, len(shown), self._builder())

    def _builder(self) -> SignatureBuilder:
        if self.embedder is None:
            from cegraph.fss.signature import MiniLMEmbedder

            self.embedder = MiniLMEmbedder()
        if not hasattr(self, "_sig_builder"):
            self._sig_builder = SignatureBuilder(self.embedder)
        return self._sig_builder

    def proposers(self) -> list[Proposer]:
        if self._proposers is not None:
            return list(self._proposers)
        s = self.settings
        if s.method == "random":
            from cegraph.refine.baselines import RandomProposer

            return [RandomProposer(seed=s.seed)]
        llm = LLMProposer(self.proposer_llm, max_tokens=s.proposer_tokens)
        return [llm] if s.method == "scalar" else [PriorProposer(),
                                                   RuleProposer(self.proposer_llm), llm]

    async def _propose(self, state: _State, target: Target) -> tuple[
            list[tuple[Candidate, Applied]], Proposals]:
        kind = self.dev[0].kind
        merged = Proposals()
        for proposer in self.proposers():
            if hasattr(proposer, "round"):
                proposer.round = self.round  # a new round asks anew; a resumed one replays
            if isinstance(proposer, LLMProposer):
                proposer.accuracy = 1 - len(state.shown) / max(1, state.shown_runs)
            if proposer.projected_calls and not self._affordable(
                    proposer.projected_calls, self._worst_call_tokens(state.wf, state.traces)):
                continue
            k = self.settings.prior_k if isinstance(proposer, PriorProposer) else \
                self.settings.k
            if k <= 0:  # this proposer asked for no candidates: it makes no call either
                continue
            self._emit("propose", target=target.label, message=type(proposer).__name__)
            got = await proposer.propose(state.wf, target, kind, k)
            merged.candidates += got.candidates
            merged.invalid += got.invalid
        # demonstrations are picked here, from solved shown inputs only
        merged = materialize(merged, target.task_ids, tasks=self.tasks, roles=self.roles,
                             traces=state.traces,
                             embedder=lambda: self._builder().embedder)
        if self.settings.method == "cegraph" and self.settings.remember:  # rejected before
            merged = forget_rejected(merged, rejected_keys(target, self.journal.rejected_edits(
                state.wf.name, exclude=self.refine_id)))
        # the screen sees only what the proposer saw: the shown role's inputs and answers
        examples = [text for e in target.examples for text in (e.input, e.expected)]
        examples += [self.tasks[i].reference for i in target.task_ids
                     if self.roles[i] == "shown"]
        return screen(state.wf, merged, examples, seen=self.tried_versions)

    def _plan(self, state: _State, target: Target) -> Plan:
        """One sample of the verification role: the target's members there (up to
        `counterexamples`) and a seeded sample of the rest (`regression`), failures and
        passes drawn in proportion (see `verify.py`)."""
        s = self.settings
        verifying = {t.task_id: t for t in self._counted(state, "verification")}
        failures = [f for f in state.failures if f.task_id in verifying]
        member_ids = {f.task_id for f in self.selector.members(
            target, failures, self._builder() if s.method == "cegraph" else None)}
        failing = {f.task_id for f in failures}
        population = [self.tasks[i] for i in sorted(verifying)]
        members = [t for t in population if t.id in member_ids]
        rest = [t for t in population if t.id not in member_ids]
        seed = s.seed + self.round
        chosen = stratified_sample(members, s.counterexamples, key=lambda t: "", seed=seed)
        sample = stratified_sample(rest, s.regression, seed=seed,
                                   key=lambda t: "failed" if t.id in failing else "passed")
        strata = {"target": tuple(chosen),
                  "others": tuple(t for t in sample if t.id in failing),
                  "passes": tuple(t for t in sample if t.id not in failing)}
        sizes = {"target": len(members), "others": len(failing - member_ids),
                 "passes": len(rest) - len(failing - member_ids)}
        base = {t.id: t.id not in failing for ts in strata.values() for t in ts}
        return Plan(strata, base, sizes)

    async def _round(self, state: _State, tried: set[str], result: RefineResult) -> bool:
        """One round; returns whether an edit was accepted."""
        s = self.settings
        shown = {i: t for i, t in self.tasks.items() if self.roles[i] == "shown"}
        targets = untried(self.selector.targets(
            state.shown, state.analysis, state.shown_runs,
            {i: t for i, t in state.traces.items() if i in shown}, shown),
            {t.split("@")[1] for t in tried if t.startswith(state.wf.version_id + "@")})
        if not targets:
            result.stop_reason = "no untried failure target on this version"
            return False
        target = targets[0]
        if isinstance(self.selector, ModeTargets):
            # a mode is aimed at once per version; the aggregate target of the baselines
            # stays open, each round asking its proposer anew
            tried.add(f"{state.wf.version_id}@{target.target_id}")
        cands, proposals = await self._propose(state, target)
        edit_rows = []
        ids = [f"{self.refine_id}-{self.round}-{i}" for i in range(len(proposals.candidates))]
        invalid_at = {inv.raw: inv.reason for inv in proposals.invalid}
        for (cand, edit_id) in zip(proposals.candidates, ids, strict=True):
            raw = cand.edit.model_dump_json()
            applied = next((a for c, a in cands if c is cand), None)
            if applied is not None:  # every candidate is a stored version a human may gate
                self.journal.record_version(applied.workflow, parent=state.wf.version_id,
                                            created_by=edit_id)
            edit_rows.append(self._edit_row(edit_id, state, target, cand.edit.op, raw,
                                            cand.rationale, cand.source, applied,
                                            invalid_at.get(raw)))
        for j, inv in enumerate(proposals.invalid):
            if not any(inv.raw == r["payload"] for r in edit_rows):
                edit_rows.append(self._edit_row(f"{self.refine_id}-{self.round}-x{j}", state,
                                                target, "", inv.raw, "", inv.source, None,
                                                inv.reason))
        self.journal.record_edits(edit_rows)
        result.invalid += sum(1 for r in edit_rows if r["status"] == "invalid")
        result.candidates += len(edit_rows)
        if not cands:
            return False
        plan = self._plan(state, target)
        rule = self._rule(state)
        verifier = Verifier(self.executor, self.evaluate,
                            chunk=max(2, self.executor.concurrency),
                            early_stop=CertainlyWorse(s.max_break_rate),
                            on_traces=lambda _wf, tr: self.journal.record_traces(
                                tr, source="verification"))
        best: Verification | None = None  # the best candidate already certain to be accepted
        judged: list[_Judged] = []
        edit_of = {id(c): eid for c, eid in zip(proposals.candidates, ids, strict=True)}
        for n, (cand, applied) in enumerate(cands, start=1):
            self.tried_versions.add(applied.version_id)
            eid = edit_of[id(cand)]
            if too_costly := self._projected_cost(state.wf, applied.workflow):
                judged.append(_Judged(cand, applied, eid, Verification(applied.version_id),
                                      too_costly, verified=False))
                continue
            projected = plan.size * self._calls_per_run(
                applied.workflow, changed_nodes(state.wf, applied.workflow))
            if not self._affordable(projected, self._worst_call_tokens(applied.workflow,
                                                                       state.traces)):
                result.stop_reason = (f"budget: verifying the next candidate may take "
                                      f"{projected} calls, {self.meter.remaining_calls()} left")
                self.out_of_budget = True
                break
            label = f"{n}/{len(cands)} {cand.edit.op} ({cand.source})"
            said = [""]  # the last chunk's counts, repeated by the heartbeat

            def show(v: Verification | None, label: str = label, said: list[str] = said
                     ) -> None:
                if v is not None:
                    said[0] = (f"{len(v.traces)}/{plan.size} runs: {v.fixed} fixed, "
                               f"{v.broken} broken")
                self._emit("verify", target=target.label, candidate=label, message=said[0])

            show(None)
            # a chunk of ensemble runs on a local model can take minutes: the heartbeat
            # shows the calls count moving in between
            beat = asyncio.create_task(self._heartbeat(lambda: show(None)))
            try:
                v = await verifier.verify(applied.workflow, plan, best=best, on_progress=show)
            finally:
                beat.cancel()
            broken = [f for t in v.traces if plan.base_passed.get(t.task_id)
                      and (f := failure_from_trace(t)) is not None]
            verdict = rule.judge(v, plan, [state.traces[t.task_id] for t in v.traces], broken)
            judged.append(_Judged(cand, applied, eid, v, verdict))
            result.verification_calls += v.calls_made
            result.verification_replayed += v.calls_replayed
            result.verification_full += v.calls_full
            # early stop may only compare against a candidate certain to be accepted, so the
            # order candidates are verified in never changes the pick; and only against one
            # with no extra tokens to speak of: then a smaller drop never wins per token
            free = verdict.cost_ratios.get("tokens", 1.0) - 1 <= s.cost.free_tokens_ratio
            if rule.certain(verdict, len(cands), self.round) and free and (
                    best is None or v.drop > best.drop):
                best = v
        family = [j for j in judged if j.verified]  # every candidate tested is a test
        for j, verdict in zip(family, rule.decide([j.verdict for j in family], self.round),
                              strict=True):
            j.verdict = verdict
        for j in judged:
            self.journal.record_verification(self._verification_row(j, plan, state.mass))
            result.verdicts.append((j.edit_id, j.cand.edit.op, j.verdict))
        # ties broken by version id, not by the order of verification
        judged.sort(key=lambda j: j.applied.version_id)
        pick = rule.choose([j.verdict for j in judged])
        # every judged candidate's edit row ends as its verdict, not `proposed`
        row_of = {r["edit_id"]: r for r in edit_rows}
        self.journal.record_edits([{**row_of[j.edit_id], **_edit_outcome(j.verdict, i == pick)}
                                   for i, j in enumerate(judged)])
        if pick is None:
            return False
        j = judged[pick]
        cand, applied, verdict, eid = j.cand, j.applied, j.verdict, j.edit_id
        self.journal.record_version(applied.workflow, parent=state.wf.version_id,
                                    created_by=eid)
        result.accepted.append(Accepted(self.round, eid, cand.edit.op, cand.source,
                                        target.target_id, applied.version_id, verdict,
                                        applied.diff))
        self._emit("accept", target=target.label, candidate=cand.edit.op,
                   message=verdict.reason)
        state.wf = applied.workflow
        if self.round >= self.settings.max_rounds:
            # the last round: no later round needs the new version's failures, so its mass is
            # the verified estimate rather than a re-run of every input
            state.mass = max(0.0, state.mass - verdict.drop)
            return True
        projected = len(self.tasks) * self._calls_per_run(
            applied.workflow, changed_nodes(self.seed, applied.workflow))
        if not self._affordable(projected, self._worst_call_tokens(applied.workflow,
                                                                   state.traces)):
            result.stop_reason = "budget: no calls left to evaluate the accepted version"
            self.out_of_budget = True
            state.mass = max(0.0, state.mass - verdict.drop)  # the verified estimate
            return True
        state.traces = await self._evaluate(state.wf, list(self.tasks.values()))
        self._analyze(state)
        return True

    def _projected_cost(self, base: Workflow, cand: Workflow) -> Verdict | None:
        """A rejection, before any verification, of a candidate whose calls per run surely
        break the cost bound (its fewest calls; what conditional calls cost, and tokens,
        dollars and latency, are measured once it has run)."""
        bound = self.settings.cost.max_calls_ratio
        ratio = llm_calls_per_run(cand, least=True) / max(1, llm_calls_per_run(base))
        if bound is None or ratio <= bound:
            return None
        return Verdict("rejected", 1.0, 0, 0, 0.0, 0.0,
                       f"not verified: its projected calls per run are x{ratio:.2f} the "
                       f"base's, over the cost bound x{bound:g}", cost_ratios={"calls": ratio})

    def _rule(self, state: _State) -> AcceptanceRule:
        s = self.settings
        return PairedRule(s.alpha, s.max_break_rate, self._new_mode_check(state), s.cost)
    def _new_mode_check(self, state: _State) -> DenseNewMode | None:
        if self.settings.method != "cegraph" or state.analysis is None:
            return None
        return DenseNewMode(self._builder(), [m.centroid for m in state.analysis.modes])

    def _edit_row(self, edit_id: str, state: _State, target: Target, op: str, payload: str,
                  rationale: str, source: str, applied: Applied | None,
                  reason: str | None) -> dict[str, Any]:
        return {"edit_id": edit_id, "night_id": self.refine_id, "workflow": state.wf.name,
                "base_version_id": state.wf.version_id,
                "candidate_version_id": applied.version_id if applied else None,
                "target_mode_id": target.target_id, "operation": op, "payload": payload,
                "rationale": rationale, "status": "proposed" if applied else "invalid",
                "reject_reason": reason, "round": self.round, "source": source,
                "diff": "\n".join(applied.diff) if applied else None,
                "edit_key": edit_key(applied.edits[0]) if applied else None,
                "mode_state": mode_state(target)}

    def _verification_row(self, j: _Judged, plan: Plan, mass: float) -> dict[str, Any]:
        v, d, c = j.v, j.verdict, j.v.counts
        return {"verification_id": f"{j.edit_id}-v", "edit_id": j.edit_id,
                "candidate_version_id": j.applied.version_id,
                "counterexamples": c["target"].run, "regression": c["passes"].run,
                "others": c["others"].run, "fixed": v.fixed, "broken": v.broken,
                "mass_before": mass, "mass_after": max(0.0, mass - d.drop),
                "p_value": d.p_value, "accepted": d.accepted, "reason": d.reason,
                "tokens": v.tokens, "cost": v.cost, "calls_made": v.calls_made,
                "calls_replayed": v.calls_replayed, "calls_full": v.calls_full,
                "stopped_early": v.stopped_early, "decision": d.decision,
                "p_adjusted": d.p_adjusted, "ci_low": d.ci_low, "ci_high": d.ci_high,
                "cost_ratios": json.dumps(d.cost_ratios), "planned": plan.size if j.verified
                else 0}

    async def run(self) -> RefineResult:
        started = time.perf_counter()
        first_start = self.journal.start(self.refine_id, {
            "workflow": self.seed.name, "seed_version_id": self.seed.version_id,
            "method": self.settings.method, "budget": self.budget.__dict__,
            "settings": self.settings.__dict__, "dev": len(self.dev),
            "verification": sum(r == "verification" for r in self.roles.values())})
        self.journal.record_roles(self.refine_id, self.roles, self.settings.seed)
        if self.charge_since is not None:
            first_start = self.charge_since
        llms = {id(x): x for x in (self.llm, self.proposer_llm, self.judge_llm) if x}
        saved = {k: (x.meter, x.store) for k, x in llms.items()}
        for x in llms.values():  # one meter for the run; replays of this job's calls charged
            x.meter = self.meter
            x.store = ChargingStore(x.store, self.meter, first_start)
        self.executor = (Executor(self.llm, concurrency=self.settings.concurrency)
                         if self.fan_out is None else
                         self.fan_out.executor(self.llm, concurrency=self.settings.concurrency))
        self.tried_versions: set[str] = {self.seed.version_id}
        self.out_of_budget = False
        result = RefineResult(self.refine_id, self.seed, self.seed, 0.0, 0.0, [], [], "", 0, 0,
                              0.0, 0.0)
        status = "interrupted"
        state: _State | None = None
        try:
            self.journal.record_version(self.seed, parent=None, created_by="seed")
            self._emit("evaluate", message=f"seed on {len(self.tasks)} inputs")
            state = _State(self.seed, await self._evaluate(self.seed, list(self.tasks.values())))
            self._analyze(state)
            result.mass_before = state.mass
            result.masses.append(state.mass)
            tried: set[str] = set()
            while True:
                why = self.stop_rule.reason(result.masses)
                if why:
                    result.stop_reason = why
                    break
                if not state.shown:
                    result.stop_reason = "no failures left among the shown inputs"
                    break
                self.round += 1
                await self._round(state, tried, result)
                result.masses.append(state.mass)
                if self.out_of_budget or result.stop_reason:
                    break
            status = "done"
        except BudgetExceeded as exc:  # a projection fell short: stop, keep what was accepted
            result.stop_reason = f"budget: {str(exc).splitlines()[0]}"
            status = "done"
        finally:
            for k, x in llms.items():
                x.meter, x.store = saved[k]
            result.workflow = state.wf if state is not None else self.seed
            result.mass_after = result.masses[-1] if result.masses else 0.0
            result.llm_calls = self.meter.calls
            result.tokens = self.meter.tokens_in + self.meter.tokens_out
            result.cost = self.meter.cost
            result.wall_s = time.perf_counter() - started
            self.journal.finish(self.refine_id, {**result.summary(), "status": status})
        self._emit("stop", message=result.stop_reason)
        return result


def refine(workflow: Workflow, tasks: Sequence[Task], *, llm: LLM, budget: Budget,
           **kwargs: Any) -> RefineResult:
    """Refine `workflow` on `tasks` (blocking; see `Refinement` for the options)."""
    return asyncio.run(Refinement(workflow, tasks, llm=llm, budget=budget, **kwargs).run())
