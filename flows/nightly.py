"""The nightly refinement: for each registered workflow, refine its active version from the
failures logged since the last night, gate the result on inputs the refinement never
touched, and promote it (or only propose it).

Steps of one workflow's night (each completed step is stored in `night_steps`, so a crashed
night, run again, resumes after its last completed step and reaches the same decision):

1. gather: production runs ingested since the last finished night (batches whose ingest gate
   failed are skipped) plus the counterexamples earlier nights still failed, made gradeable
   under the workflow's evaluator (`gradeable`; exclusions counted by reason). Carried
   counterexamples are re-checked on the active version when it changed since they were
   carried, and retire when they pass. Nothing logged since the last night and the same
   active version: the night has nothing new, says so and spends nothing (nights are
   idempotent per day, not per input set). Then the gate's **holdout** is drawn (seeded, by
   task-id hash, among inputs no refinement of the workflow ran, `cegraph.refine.holdout`)
   and recorded in `input_roles`;
2. budget: the night's least spend projected from the call history; a budget that cannot pay
   it refuses the night before any call (fails closed);
3. refine: the Propose-and-Verify loop (`cegraph.refine`) on the inputs left after the
   holdout, journaled in the warehouse as it goes, charged only for calls this night made;
4. verify: the active version and the candidate run on the holdout, fanned out as concurrent
   `verify-chunk` tasks whose inputs and outputs are plain data; the active version's runs
   may replay stored calls, the candidate's make new calls; each chunk spends at most its
   share of the calls, tokens and dollars left, and a chunk hit by an outage is retried,
   replaying (and charging once) what its first attempt paid for;
5. gate: the Great Expectations edit gate (`cegraph.refine.gate`, the one cost rule of
   `cegraph.refine.cost`), stored in `gate_results`; evidence too small or partial is
   `undecided`;
6. decide: promote through the registry by compare-and-swap on the version the night
   started from, or stop at a proposal (`propose_only`), or record why not.

Decisions (`night_runs.decision`): promoted | proposed | gated_out | undecided | stale |
no_edit | no_failures | refused. A night resumed after the active version changed (a human
promoted meanwhile) stops as `stale` and promotes nothing.

The flow holds the catalog while it writes (waiting, bounded, while an ingest holds it);
after every step (and every few seconds of refinement) it leaves a snapshot for `cegraph
sql` (see `Warehouse.snapshot`). Two nights of one workflow never interleave: the night's
lock is a lease its heartbeat renews (`cegraph.storage.nights`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cegraph.batch import FanOut, ModelSpec, completion_dict, task_dict, task_from
from cegraph.evaluator_spec import LoggedRun, gradeable, grader
from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow
from cegraph.llm import LLM, Completion, resolve_model
from cegraph.refine import gate, holdout
from cegraph.refine.cost import CostBounds, CostPerRun
from cegraph.refine.journal import Journal
from cegraph.refine.loop import (
    Budget,
    Refinement,
    Settings,
    least_verification,
    llm_calls_per_run,
)
from cegraph.refine.projection import Projection, project
from cegraph.storage import Warehouse
from cegraph.storage.nights import LEASE_S, Night, NightStore, open_catalog
from cegraph.storage.refinement import RefinementJournal
from cegraph.storage.registry import Registry, Stale
from cegraph.storage.warehouse import _now
from cegraph.task import Task
from cegraph.tasks.batch import journaled, prefect_batch, prune_journals
from cegraph.tasks.verification import verify_chunk
from cegraph.trace import INFRASTRUCTURE, Trace

DATASET = SOURCE = "production"


@dataclass(frozen=True)
class NightSettings:
    """What a night may do (the flow's parameters, as one value)."""

    model: str
    budget: Budget
    propose_only: bool = False
    include_marked: bool = False  # also use batches whose ingest gate failed
    max_inputs: int = 60
    holdout: float = 0.25  # share of the fresh failing and passing inputs held out for the gate
    chunk: int = 4  # inputs per verify-chunk task
    chunk_retries: int = 2  # re-submissions of a chunk an outage left incomplete
    concurrency: int | None = None  # None: as many as the engine has slots
    patience: int = 2
    seed: int = 0
    # candidates a round verifies: the operator prior's (no call) and the LLM proposers'
    prior_candidates: int = 3
    llm_candidates: int = 3
    max_rounds: int = 8
    counterexamples: int = 12  # the target mode's verification-role members per candidate
    regression: int = 24  # other verification-role inputs per candidate (fails and passes)
    bounds: gate.GateBounds = field(default_factory=gate.GateBounds)
    lease_s: float = LEASE_S
    # where the refinement's evaluations and verifications run (`cegraph.config.NightConfig`):
    # local (here), or fanned out as run-chunk tasks on the flow's task runner
    runner: str = "local"
    served: ModelSpec | None = None  # how a worker reaches the model (None: `model` itself)
    llm_extra: dict[str, Any] = field(default_factory=dict)  # this process's (api_base)
    forward_env: tuple[str, ...] = ()  # variables the workers get from this process

    def llm(self, **kw: Any) -> LLM:
        return LLM(self.model, **kw, **self.llm_extra)

    def loop(self) -> Settings:
        """The refinement loop's settings for this night (also what its projection assumes)."""
        return Settings(patience=self.patience, seed=self.seed, concurrency=self.concurrency,
                        cost=self.bounds.cost, prior_k=self.prior_candidates,
                        k=self.llm_candidates, max_rounds=self.max_rounds,
                        counterexamples=self.counterexamples, regression=self.regression)


class SnapshotJournal:
    """The refinement's journal in the warehouse, leaving a snapshot for readers every few
    seconds as steps complete."""

    def __init__(self, inner: RefinementJournal, wh: Warehouse) -> None:
        self.inner, self.wh = inner, wh

    def _after(self) -> None:
        self.wh.snapshot(min_interval_s=3.0)

    def start(self, refine_id: str, spec: dict[str, Any]) -> float:
        return self.inner.start(refine_id, spec)

    def record_version(self, wf: Workflow, *, parent: str | None, created_by: str) -> None:
        self.inner.record_version(wf, parent=parent, created_by=created_by)

    def record_edits(self, rows: Sequence[dict[str, Any]]) -> None:
        self.inner.record_edits(rows)
        self._after()

    def record_verification(self, row: dict[str, Any]) -> None:
        self.inner.record_verification(row)
        self._after()

    def record_traces(self, traces: Sequence[Trace], *, source: str) -> None:
        self.inner.record_traces(traces, source=source)
        self._after()

    def record_roles(self, scope_id: str, roles: Mapping[str, str], seed: int) -> None:
        self.inner.record_roles(scope_id, roles, seed)

    def finish(self, refine_id: str, row: dict[str, Any]) -> None:
        self.inner.finish(refine_id, row)

    def rejected_edits(self, workflow: str, *, exclude: str) -> list[dict[str, Any]]:
        return self.inner.rejected_edits(workflow, exclude=exclude)


def logged_input(workflow_attrs: str | None, record: str | None,
                 first_inputs: str | None) -> str | None:
    """A logged run's input as the workflow received it: the run span's input (GenAI
    `gen_ai.input.messages`' last user message, OpenInference `input.value`), a cegraph JSONL
    record's `input`, else the first node's input (a run the workflow itself logged)."""
    from cegraph.ingest.conventions import last_user

    attrs = json.loads(workflow_attrs) if workflow_attrs else {}
    if attrs.get("gen_ai.input.messages"):
        return last_user(attrs["gen_ai.input.messages"]) or None
    if attrs.get("input.value"):
        return str(attrs["input.value"])
    run = json.loads(record) if record else {}
    if isinstance(run, dict) and isinstance(run.get("input"), str):
        return run["input"]
    values = json.loads(first_inputs) if first_inputs else {}
    if not isinstance(values, dict) or not values:
        return None
    found = values.get("input", next(iter(values.values())))
    return found if isinstance(found, str) else None


def _epoch(at: Any) -> float:
    """A catalog timestamp (naive UTC) as epoch seconds."""
    return at.replace(tzinfo=dt.UTC).timestamp()


def _fan_out(wh: Warehouse, night: Night, s: NightSettings, llm: LLM, judge: LLM,
             spec: Any) -> FanOut | None:
    """Where a batch of this night's runs goes: None (here) or run-chunk tasks."""
    if s.runner == "local":
        return None
    model = s.served or ModelSpec(s.model)
    # a local model is served to the workers as `openai/<name>`: its calls are theirs too
    return FanOut(prefect_batch, model, chunk=s.chunk, evaluator_json=spec.model_dump_json(),
                  judge=_judge(spec, s), known=known_calls(
                      wh, night.workflow, {llm.model, judge.model, model.model},
                      _epoch(night.started_at)))


def _judge(spec: Any, s: NightSettings) -> ModelSpec | None:
    """How a worker reaches the evaluator's judge model, with its key."""
    from cegraph.credentials import forwarded

    if not spec.judge_model:
        return None
    return ModelSpec(spec.judge_model,
                     credentials=forwarded([spec.judge_model], None, s.forward_env))


def recheck(wh: Warehouse, night: Night, active: Workflow, tasks: list[Task],
            s: NightSettings) -> tuple[set[str], list[float]]:
    """Run the active version on carried counterexamples (replaying stored calls); returns
    the ids it still fails and what the new calls cost [calls, tokens, dollars]."""
    llm = s.llm(store=wh, concurrency=s.concurrency, meter=s.budget.meter())
    spec = Registry(wh).evaluator(night.workflow)
    judge = LLM(spec.judge_model, store=wh, meter=llm.meter) if spec.judge_model else llm
    fan_out = _fan_out(wh, night, s, llm, judge, spec)
    executor = (Executor(llm, concurrency=s.concurrency) if fan_out is None
                else fan_out.executor(llm, concurrency=s.concurrency))
    traces = asyncio.run(executor.run_many(
        active, tasks, evaluate=grader(spec, judge),
        run_id=lambda t: stable_run_id(active.version_id, llm.identity, t.id)))
    wh.record_traces(traces, night_id=night.night_id, source="verification", dataset=DATASET,
                     model=llm.identity)
    m = llm.meter
    failing = {t.task_id for t in traces if not (t.outcome and t.outcome.passed)}
    return failing, [m.calls, m.tokens_in + m.tokens_out, m.cost]


def logged_runs(wh: Warehouse, workflow: str, *, since: Any,
                include_marked: bool) -> list[LoggedRun]:
    """The workflow's graded production runs logged after `since` (None: all), skipping
    batches whose ingest gate failed unless `include_marked`; failing ones first. A passing
    run's own output is its reference: it passed against the one its log carried."""
    from cegraph.storage.ingest import IngestStore

    marked = [] if include_marked else sorted(IngestStore(wh).marked_batches())
    rows = wh.rows(
        "SELECT r.run_id, r.task_id, r.passed, r.output, f.expected, src.wattrs, "
        "src.record, s.inputs FROM runs r JOIN batches b ON r.batch_id = b.batch_id "
        "LEFT JOIN failures f ON f.run_id = r.run_id "
        "LEFT JOIN (SELECT run_id, arg_min(inputs, position) AS inputs FROM spans GROUP BY "
        "run_id) s ON s.run_id = r.run_id "
        "LEFT JOIN (SELECT run_id, any_value(attributes) FILTER (WHERE kind = 'workflow') "
        "AS wattrs, any_value(attributes) FILTER (WHERE kind = 'run') AS record FROM "
        "source_spans GROUP BY run_id) src ON src.run_id = r.run_id "
        "WHERE r.workflow = ? AND r.source = ? AND r.outcome NOT IN ('infrastructure', "
        "'unevaluated') AND (?::TIMESTAMP IS NULL OR b.committed_at > ?::TIMESTAMP) "
        "AND NOT list_contains(?::VARCHAR[], r.batch_id) ORDER BY r.passed, r.task_id",
        [workflow, SOURCE, since, since, marked])
    return [LoggedRun(run_id, task_id, logged_input(wattrs, record, inputs),
                      output if passed else expected, passed)
            for run_id, task_id, passed, output, expected, wattrs, record, inputs in rows]


def touched(wh: Warehouse, workflow: str) -> set[str]:
    """The inputs any refinement of the workflow ran (shown to a proposer, or judging its
    candidates): never held out for a gate."""
    return {t for (t,) in wh.rows(
        "SELECT DISTINCT task_id FROM runs WHERE night_id IN (SELECT refine_id FROM "
        "refinements WHERE workflow = ?)", [workflow])}


def gather(wh: Warehouse, store: NightStore, night: Night, active: Workflow,
           s: NightSettings) -> dict[str, Any]:
    """The night's inputs and the gate's holdout (see the module docstring), as plain data."""
    since = store.last_started(night.workflow)
    logged = logged_runs(wh, night.workflow, since=since, include_marked=s.include_marked)
    previous = store.previous_output(night.workflow, "gather", night.night_id) or {}
    base = {"since": str(since) if since else None, "logged": len(logged), "excluded": {},
            "spent": [0, 0, 0.0], "checked_on": night.active_version_id}
    if not logged and previous.get("checked_on") == night.active_version_id:
        # the same version on the same counterexamples: the last night's verdict stands
        return {**base, "nothing_new": True, "carried": len(previous.get("carry", [])),
                "tasks": [], "failing": [], "holdout": [], "retired": 0,
                "carry": previous.get("carry", [])}
    carry = [task_from(t) for t in previous.get("carry", [])]
    retired = 0
    if carry and previous.get("checked_on") != night.active_version_id:
        still, base["spent"] = recheck(wh, night, active, carry, s)
        retired = len(carry) - len(still & {t.id for t in carry})
        carry = [t for t in carry if t.id in still]
    logged += [LoggedRun(f"carried:{t.id}", t.id, t.input, t.reference, False)
               for t in carry if t.id not in {r.task_id for r in logged}]
    spec = Registry(wh).evaluator(night.workflow)
    tasks, excluded = gradeable(logged, spec)
    failing = {r.task_id for r in logged if r.passed is False}
    tasks = ([t for t in tasks if t.id in failing] + [t for t in tasks if t.id not in failing]
             )[:s.max_inputs]
    ids = [t.id for t in tasks]
    held = holdout.draw(ids, failing=failing, touched=touched(wh, night.workflow),
                        share=s.holdout, seed=s.seed)
    wh.insert("input_roles", [{"scope_id": night.night_id, "task_id": t, "role": "holdout",
                               "seed": s.seed, "recorded_at": _now()} for t in held])
    failing_ids = sorted(failing & set(ids))
    return {**base, "nothing_new": False, "carried": len(carry), "retired": retired,
            "excluded": excluded, "tasks": [task_dict(t) for t in tasks],
            "failing": failing_ids, "holdout": held,
            # what the next night carries: every failing input, until a version passes it
            "carry": [task_dict(t) for t in tasks if t.id in set(failing_ids)]}


def _history(wh: Warehouse, model: str) -> tuple[int, float, float]:
    [(n, tokens, cost)] = wh.rows("SELECT count(*), coalesce(avg(tokens_in + tokens_out), 0), "
                                  "coalesce(avg(cost), 0) FROM llm_calls WHERE model = ?",
                                  [model])
    return int(n), float(tokens), float(cost)


def refine_step(wh: Warehouse, night: Night, active: Workflow, tasks: list[Task],
                budget: Budget, s: NightSettings) -> dict[str, Any]:
    llm = s.llm(store=wh, concurrency=s.concurrency)
    spec = Registry(wh).evaluator(night.workflow)  # re-runs graded as production's are
    judge = LLM(spec.judge_model, store=wh) if spec.judge_model else llm
    fan_out = _fan_out(wh, night, s, llm, judge, spec)
    journal: Journal = SnapshotJournal(RefinementJournal(wh, dataset=DATASET,
                                                         model=llm.identity), wh)
    # charged for the calls this night made (a resumed night: its earlier attempt's too),
    # never for an earlier night's that an identical refinement would replay
    run = Refinement(active, tasks, llm=llm, budget=budget, journal=journal,
                     settings=s.loop(),
                     evaluate=grader(spec, judge),
                     judge_llm=judge if spec.kind == "judge" else None,  # its calls projected
                     charge_since=_epoch(night.started_at), fan_out=fan_out)
    log = get_run_logger()
    run.on_progress = lambda p: log.info("round %d %s %s %s %s (calls %d/%s)", p.round, p.step,
                                         p.target[:50], p.candidate, p.message, p.calls,
                                         p.budget_calls)
    result = asyncio.run(run.run())
    from cegraph.storage.night_summary import to_mode_table

    # the refinement names its modes among its own failures: one id everywhere, the table's
    renamed = to_mode_table(wh, result.refine_id, night.workflow)
    return {"refine_id": result.refine_id, "summary": result.summary(),
            "accepted": [{"edit_id": a.edit_id, "op": a.op, "source": a.source,
                          "target": renamed.get(a.target, a.target),
                          "version_id": a.version_id,
                          "reason": a.verdict.reason, "diff": a.diff} for a in result.accepted],
            "candidate": result.workflow.model_dump_json() if result.accepted else None,
            "calls": result.llm_calls, "tokens": result.tokens, "cost": result.cost}


def known_calls(wh: Warehouse, workflow: str, models: set[str], since: float) -> Any:
    """The stored calls a batch of `workflow` runs may replay: those of every stored run of
    it on the same inputs, and every call of `models` made since `since` (this night's,
    a resumed night's earlier attempt's included)."""
    def known(wf: Workflow, tasks: Sequence[Task]) -> list[Completion]:
        return [Completion(r[0], r[1], json.loads(r[2]), json.loads(r[3]), *r[4:])
                for r in wh.rows(
            "SELECT key, model, messages, params, sample, text, tokens_in, tokens_out, cost, "
            "latency_s, finish_reason, epoch(created_at) FROM llm_calls WHERE "
            "list_contains(?::VARCHAR[], model) AND (epoch(created_at) >= ? OR key IN ("
            "SELECT unnest(s.call_keys) FROM spans s JOIN runs r USING (run_id) WHERE "
            "r.workflow = ? AND list_contains(?::VARCHAR[], r.task_id)))",
            [sorted(models), since, workflow, [t.id for t in tasks]])]
    return known


def _chunks(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _share(left: float | None, parts: int) -> Any:
    return None if left is None else type(left)(max(0, left) / max(1, parts))


def verify_step(wh: Warehouse, night: Night, refined: dict[str, Any], active: Workflow,
                tasks: list[Task], left: Budget, s: NightSettings) -> dict[str, Any]:
    """Run the holdout on the active version (replaying stored calls) and on the candidate
    (new calls only), fanned out in chunks that each spend at most their share of `left`;
    a chunk an outage left incomplete is re-submitted, replaying its own earlier calls."""
    llm = s.llm(store=wh)
    identity = llm.identity
    sample = [task_dict(t) for t in tasks]
    # what the active version may replay: the calls its stored runs of these inputs made, and
    # the model's stored calls that quote one of the inputs (an ingested span's call keys are
    # its log's, not the call store's; a replay still needs the exact key)
    known = [completion_dict(Completion(r[0], r[1], json.loads(r[2]), json.loads(r[3]),
                                        *r[4:])) for r in wh.rows(
        "SELECT key, model, messages, params, sample, text, tokens_in, tokens_out, cost, "
        "latency_s, finish_reason, epoch(created_at) FROM llm_calls WHERE key IN (SELECT "
        "unnest(s.call_keys) FROM spans s JOIN runs r USING (run_id) WHERE r.version_id = ? "
        "AND list_contains(?::VARCHAR[], r.task_id)) OR (model = ? AND EXISTS (SELECT 1 FROM "
        "unnest(?::VARCHAR[]) AS q(text) WHERE contains(messages, q.text)))",
        [active.version_id, [t.id for t in tasks], llm.model,
         [json.dumps(t.input)[1:-1] for t in tasks if t.input]])]
    chunks = _chunks(sample, s.chunk)
    parts = 2 * len(chunks)
    share = {"max_calls": _share(left.calls, parts), "max_tokens": _share(left.tokens, parts),
             "max_dollars": _share(left.dollars, parts)}
    evaluator = Registry(wh).evaluator(night.workflow)
    spec = evaluator.model_dump_json()
    sides = {"active": active.model_dump_json(), "candidate": refined["candidate"]}
    out: dict[str, Any] = {"holdout": [t.id for t in tasks], "active": [], "candidate": [],
                           "calls": 0, "tokens": 0, "cost": 0.0, "retried": 0,
                           "exhausted": False}
    traces: dict[str, list[Trace]] = {"active": [], "candidate": []}
    # the candidate replays nothing but its own gate calls: its evidence is new calls
    replay = {"active": known, "candidate": []}
    pending = {(side, i): [] for side in sides for i in range(len(chunks))}
    for attempt in range(1 + s.chunk_retries):
        futures = {(side, i): verify_chunk.submit(
            sides[side], chunks[i], model=s.model, evaluator_json=spec, served=s.served,
            judge=_judge(evaluator, s),
            known=replay[side] + made, concurrency=s.concurrency, **share)
            for (side, i), made in pending.items()}
        # verify-chunk journals under its task run's id (`cegraph.tasks.verification`)
        journaled([f"gate-{f.task_run_id}" for f in futures.values()])
        retry: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for key, future in sorted(futures.items()):
            got = future.result()
            for c in got["calls"]:  # every call an attempt made is paid for, once
                wh.put(Completion(**c))
            out["calls"] += len(got["calls"])
            out["tokens"] += sum(c["tokens_in"] + c["tokens_out"] for c in got["calls"])
            out["cost"] += sum(c["cost"] for c in got["calls"])
            out["exhausted"] |= got["exhausted"]
            incomplete = any(r["infrastructure"] for r in got["runs"])
            if incomplete and not got["exhausted"] and attempt < s.chunk_retries:
                retry[key] = pending[key] + got["calls"]
                out["retried"] += 1
                continue
            wh.record_traces(got["traces"], night_id=night.night_id, source="verification",
                             dataset=DATASET, model=identity)
            out[key[0]] += got["runs"]
            traces[key[0]] += got["traces"]
        if not retry:
            break
        pending = retry
    graded = {side: {t.task_id: t for t in traces[side]
                     if t.outcome is not None and t.outcome.failure_class != INFRASTRUCTURE}
              for side in sides}
    both = sorted(set(graded["active"]) & set(graded["candidate"]))
    out["cost_per_run"] = {side: CostPerRun.of([graded[side][t] for t in both]).to_dict()
                           for side in sides}
    return out


def evidence(wh: Warehouse, night: Night, verified: dict[str, Any],
             failing: set[str]) -> gate.GateEvidence:
    """The gate's evidence: candidate vs active on the holdout (pairs graded on both sides;
    `failing`: the inputs whose logged run failed), and the active version's live modes (its
    latest production night) against the modes the holdout represents."""
    act = {r["task_id"]: r for r in verified["active"] if not r["infrastructure"]}
    cand = {r["task_id"]: r for r in verified["candidate"] if not r["infrastructure"]}
    both = set(act) & set(cand)
    regression = [t for t in both if t not in failing and act[t]["passed"]]
    target = [t for t in both if t in failing]
    modes = wh.rows(
        "WITH last AS (SELECT night_id FROM nights WHERE workflow = ? AND version_id = ? AND "
        "source = ? ORDER BY computed_at DESC LIMIT 1) SELECT m.mode_id, list(f.task_id) "
        "FROM failure_modes m JOIN last USING (night_id) LEFT JOIN failure_mode_members mm "
        "ON mm.night_id = m.night_id AND mm.mode_id = m.mode_id LEFT JOIN failures f ON "
        "f.failure_id = mm.failure_id WHERE m.status <> 'resolved' GROUP BY m.mode_id",
        [night.workflow, night.active_version_id, SOURCE])
    sample = set(verified["holdout"])
    cost = verified["cost_per_run"]
    return gate.GateEvidence(
        outputs=[cand[t]["output"] for t in sorted(both)], regression=len(regression),
        broken=sum(1 for t in regression if not cand[t]["passed"]), target=len(target),
        candidate_target_passed=sum(1 for t in target if cand[t]["passed"]),
        active_target_passed=sum(1 for t in target if act[t]["passed"]),
        candidate_cost=CostPerRun(**cost["candidate"]), active_cost=CostPerRun(**cost["active"]),
        active_modes=[m for m, _ in modes],
        sampled_modes=[m for m, ids in modes if sample & set(ids or [])],
        incomplete=len(sample - both))


class WorkflowNight:
    """One workflow's night: runs the steps not completed yet, in order."""

    def __init__(self, wh: Warehouse, night: Night, s: NightSettings) -> None:
        self.wh, self.night, self.s = wh, night, s
        self.store = NightStore(wh)
        self.registry = Registry(wh)
        self.done = self.store.steps(night.night_id)
        self.log = get_run_logger()

    def step(self, name: str, fn: Any) -> Any:
        if name not in self.done:
            self.log.info("%s: %s", self.night.night_id, name)
            self.done[name] = json.loads(json.dumps(fn(), default=str))
            self.store.complete(self.night.night_id, name, self.done[name])
            self.wh.snapshot()
        return self.done[name]

    def run(self) -> dict[str, Any]:
        s, night = self.s, self.night
        active = self.registry.workflow(night.active_version_id)
        budget = Budget(**night.budget)
        summary: dict[str, Any] = {"night_id": night.night_id, "workflow": night.workflow,
                                   "active_version_id": night.active_version_id,
                                   "model": s.model, "budget": night.budget}
        stale = None if "decide" in self.done else self.stale()
        if stale:  # resumed after a human changed the active version: its work is moot
            return self.finish({**summary, "reason": stale}, "stale")
        gathered = self.step("gather", lambda: gather(self.wh, self.store, night, active, s))
        tasks = [task_from(t) for t in gathered["tasks"]]
        held = set(gathered["holdout"])
        summary.update(inputs=len(tasks), failing=len(gathered["failing"]),
                       logged=gathered["logged"], excluded=gathered["excluded"],
                       carried=gathered["carried"], retired=gathered["retired"],
                       holdout=len(held))
        spent = list(gathered["spent"])
        if gathered["nothing_new"]:
            return self.finish({**summary, "reason": (
                f"nothing new: no run logged since {gathered['since']} and the "
                f"{gathered['carried']} carried counterexamples were already refined on "
                f"{night.active_version_id}")}, "no_failures")
        if not gathered["failing"]:
            return self.finish(summary, "no_failures", spent=spent)
        refine_tasks = [t for t in tasks if t.id not in held]
        # projected once: a resumed night keeps its projection, hence its refinement's budget
        projected = self.step("project", lambda: asdict(project(
            calls_per_run=llm_calls_per_run(active), inputs=len(refine_tasks),
            verification=least_verification(s.loop(), len(refine_tasks)),
            gate_inputs=len(held),
            history=_history(self.wh, s.llm().model))))
        projection = Projection(**projected)
        summary["projection"] = projection.to_dict()
        self.store.update(night.night_id, projection=projection.to_dict())
        refusal = projection.refusal(budget)
        if refusal:
            self.log.warning("%s: refused: %s", night.night_id, refusal)
            return self.finish({**summary, "reason": refusal}, "refused", status="refused",
                               spent=spent)
        refined = self.step("refine", lambda: refine_step(
            self.wh, night, active, refine_tasks, projection.refine_budget(budget), s))
        # the refinement's masses (on its own inputs) stay under `refine`: the night's
        # `mass_before` / `mass_after` are the report's, set with it (`write_summary`)
        summary.update(refine=refined["summary"], edits=refined["accepted"])
        spent = [spent[0] + refined["calls"], spent[1] + refined["tokens"],
                 spent[2] + refined["cost"]]
        if not refined["accepted"]:  # the active version may already pass them all
            return self.finish(summary, "no_failures" if not refined["summary"]["mass_before"]
                               else "no_edit", spent=spent)
        left = Budget(*(None if limit is None else limit - used
                        for limit, used in zip((budget.calls, budget.tokens, budget.dollars),
                                               spent, strict=True)))
        verified = self.step("verify", lambda: verify_step(
            self.wh, night, refined, active, [t for t in tasks if t.id in held], left, s))
        spent = [spent[0] + verified["calls"], spent[1] + verified["tokens"],
                 spent[2] + verified["cost"]]
        candidate = refined["accepted"][-1]
        edit_id, version_id = candidate["edit_id"], candidate["version_id"]
        failing = set(gathered["failing"])
        summary.update(candidate_version_id=version_id, verification={
            "holdout": len(verified["holdout"]), "retried_chunks": verified["retried"],
            "budget_ran_out": verified["exhausted"],
            "calls": verified["calls"], "cost_per_run": verified["cost_per_run"],
            "active_target_passed": sum(r["passed"] for r in verified["active"]
                                        if r["task_id"] in failing),
            "candidate_target_passed": sum(r["passed"] for r in verified["candidate"]
                                           if r["task_id"] in failing)})

        def gate_step() -> dict[str, Any]:
            verdict = gate.check(evidence(self.wh, night, verified, failing), s.bounds)
            self.registry.record_gate(verdict, verification_id=f"{night.night_id}-gate",
                                      edit_id=edit_id)
            return {"passed": verdict.passed, "decision": verdict.decision,
                    "failing": verdict.failing, "results": verdict.results}

        gated = self.step("gate", gate_step)
        summary["gate"] = gated

        def decide() -> dict[str, Any]:
            if gated["decision"] != "passed":
                return {"decision": "undecided" if gated["decision"] == "undecided"
                        else "gated_out", "reason": "; ".join(gated["failing"])}
            if s.propose_only:
                return {"decision": "proposed"}
            try:
                self.registry.promote(version_id, reason=f"nightly {night.night_id}: "
                                      f"{candidate['op']} ({candidate['reason']})",
                                      run_id=night.night_id, edit_id=edit_id,
                                      expected_active=night.active_version_id)
            except Stale as exc:
                return {"decision": "stale", "reason": str(exc)}
            return {"decision": "promoted"}

        decided = self.step("decide", decide)
        if decided.get("reason"):
            summary["reason"] = decided["reason"]
        return self.finish(summary, decided["decision"], spent=spent)

    def stale(self) -> str | None:
        """Why this night's work no longer applies (the active version changed since it
        started), or None."""
        current, _ = self.registry.active(self.night.workflow)
        if current == self.night.active_version_id:
            return None
        return (f"the active version of {self.night.workflow} became {current} after this "
                f"night started from {self.night.active_version_id}; it promotes nothing "
                "(the next night starts from the new version)")

    def finish(self, summary: dict[str, Any], decision: str, *, status: str = "done",
               spent: Sequence[float] = (0, 0, 0.0)) -> dict[str, Any]:
        calls, tokens, cost = spent
        summary = {**summary, "decision": decision, "status": status,
                   "cost": {"calls": int(calls), "tokens": int(tokens), "dollars": cost}}
        self.store.finish(self.night, status=status, decision=decision, summary=summary,
                          calls=int(calls), tokens=int(tokens), cost=float(cost),
                          reason=summary.get("reason"))
        self.wh.snapshot()
        return summary


def write_summary(wh: Warehouse, summary: dict[str, Any]) -> tuple[Path, Path | None]:
    """The night's JSON summary, and its HTML report (`cegraph.report.write_report`) when
    its workflow's failure modes have been mapped (`nights`, by ingest-logs)."""
    from cegraph.report import write_report
    from cegraph.storage.night_summary import NightNotFound, latest_night, summarize

    out = wh.home / "reports" / summary["night_id"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    budget, cost = summary.get("budget") or {}, summary.get("cost") or {}
    reason = (summary.get("reason") or (summary.get("refine") or {}).get("stop_reason")
              or "; ".join((summary.get("gate") or {}).get("failing") or []))
    try:  # the night's modes are those of the workflow's latest mapping
        report = summarize(
            wh, latest_night(wh, summary["workflow"]), workflow=summary["workflow"],
            refine_id=(summary.get("refine") or {}).get("refine_id"),
            decision=summary["decision"],
            decision_reason=reason or summary["decision"],
            cost={"llm_calls": cost.get("calls", 0), "tokens": cost.get("tokens", 0),
                  "dollars": cost.get("dollars", 0.0), "budget_calls": budget.get("calls"),
                  "budget_tokens": budget.get("tokens"),
                  "budget_dollars": budget.get("dollars")})
    except NightNotFound:
        get_run_logger().info("no failure modes mapped for %s yet (ingest-logs maps them): "
                              "JSON summary only", summary["workflow"])
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return path, None
    # one mass figure: the JSON (and the flow's result) says what the report says
    summary.update(mass_before=report.mass_before.model_dump(), mass_after=(
        report.mass_after.model_dump() if report.mass_after else None))
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path, write_report(report.model_copy(update={"night_id": summary["night_id"]}),
                              out)


def _prune(log: Any) -> None:
    """Prune the call journals of the night's chunks (`cegraph.tasks.batch`): its calls are
    stored."""
    try:
        prune_journals()
    except Exception as exc:  # a cluster gone took its journals with it
        log.warning("could not prune the chunks' call journals: %s", exc)


def server_params(api_base: str | None) -> dict[str, Any]:
    """The extra call arguments that reach the model through the server at `api_base`."""
    if not api_base:
        return {}
    return {"api_base": api_base, "api_key": os.environ.get("OPENAI_API_KEY", "none")}


def served(model: str, api_base: str | None, forward_env: Sequence[str] = ()) -> ModelSpec:
    """How the workers reach the model: the server at `api_base`; a local model served from
    this process on loopback (the engine's OpenAI-compatible listener, named by its weights'
    digest so the port stays out of the call keys); else the model string itself. Each
    carries the key it needs and `forward_env` from this process (`cegraph.credentials`)."""
    from cegraph.credentials import forwarded
    from cegraph.local_model import MODELS, fingerprint

    if api_base:
        return ModelSpec(model, {"api_base": api_base},
                         credentials=forwarded([model], api_base, forward_env))
    if model in MODELS:
        from cegraph.engine import ENGINE

        return ModelSpec(f"openai/{model}", {"api_base": ENGINE.address(model)},
                         fingerprint(model), forwarded([], None, forward_env))
    return ModelSpec(model, credentials=forwarded([model], None, forward_env))


def task_runner(runner: str, *, address: str | None = None, workers: int = 2) -> Any:
    """The task runner `[night] runner` names: a `DaskTaskRunner` on the cluster at `address`
    (none: a temporary local cluster of `workers` processes), else Prefect's thread pool."""
    if runner != "dask":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def night_flow(runner: str | None = None, *, address: str | None = None,
               workers: int | None = None) -> Any:
    """`nightly_refinement` on the task runner of `runner` (default: the settings'
    `[night]`), so going from one machine to a Dask cluster is configuration."""
    from cegraph.config import Settings

    config = Settings.load().night
    runner = runner or config.runner
    return nightly_refinement.with_options(task_runner=task_runner(
        runner, address=address or config.dask_address, workers=workers or config.workers))


@flow(name="nightly-refinement", log_prints=True)
def nightly_refinement(home: str | None = None, workflow: str | None = None,
                       model: str = "qwen2.5-coder-1.5b", budget_calls: int | None = 300,
                       budget_tokens: int | None = None, budget_dollars: float | None = None,
                       propose_only: bool = False, include_marked: bool = False,
                       max_inputs: int = 60, holdout_share: float = 0.25,
                       min_failing: int = 3, min_passing: int = 3,
                       concurrency: int | None = None, patience: int = 2, seed: int = 0,
                       prior_candidates: int = 3, llm_candidates: int = 3,
                       max_rounds: int = 8, counterexamples: int = 12, regression: int = 24,
                       max_break_rate: float = 0.05,
                       max_calls_ratio: float | None = CostBounds.max_calls_ratio,
                       max_tokens_ratio: float | None = CostBounds.max_tokens_ratio,
                       max_dollars_ratio: float | None = CostBounds.max_dollars_ratio,
                       max_latency_ratio: float | None = CostBounds.max_latency_ratio,
                       catalog_wait_s: float = 600.0, lease_s: float = LEASE_S,
                       runner: str | None = None, chunk: int | None = None,
                       api_base: str | None = None) -> dict[str, Any]:
    """Refine every registered workflow (or `workflow`) from its logged failures, one hard
    budget per night (calls, tokens, dollars), gated on a holdout of `holdout_share` of the
    night's fresh inputs; the cost bounds (per run, as ratios to the active version's) are
    the ones refinement and gate share. `prior_candidates` and `llm_candidates`: candidates
    a round verifies, each on up to `counterexamples` members of the mode and `regression`
    other inputs; at most `max_rounds` rounds. `runner`, `chunk`, `api_base`: where the batches of
    runs go (default: `[night]` of the settings, `cegraph.config.NightConfig`; the task
    runner itself is `night_flow`'s). Returns the nights' summaries."""
    from cegraph.config import Settings
    from cegraph.preflight import check_model
    from cegraph.storage.nights import NightBusy

    config = Settings.load().night
    runner, chunk = runner or config.runner, chunk or config.chunk
    api_base = api_base or config.api_base
    # a model that cannot be called (as this process reaches it: its server, if named) fails
    # the flow here, before any night is started (it would stay `running` until its lease
    # ended)
    check_model(resolve_model(model), server_params(api_base))

    bounds = gate.GateBounds(max_break_rate, min_failing, min_passing, CostBounds(
        max_calls_ratio, max_tokens_ratio, max_dollars_ratio, max_latency_ratio))
    s = NightSettings(model=model, budget=Budget(budget_calls, budget_tokens, budget_dollars),
                      propose_only=propose_only, include_marked=include_marked,
                      max_inputs=max_inputs, holdout=holdout_share,
                      concurrency=concurrency, patience=patience, seed=seed, bounds=bounds,
                      prior_candidates=prior_candidates, llm_candidates=llm_candidates,
                      max_rounds=max_rounds,
                      counterexamples=counterexamples, regression=regression,
                      lease_s=lease_s, runner=runner, chunk=chunk,
                      served=served(model, api_base, config.forward_env)
                      if runner != "local" or api_base else None,
                      llm_extra=server_params(api_base), forward_env=tuple(config.forward_env))
    log = get_run_logger()
    nights: list[dict[str, Any]] = []
    with open_catalog(home, wait_s=catalog_wait_s, on_wait=log.warning) as wh:
        wh.snapshot()  # readers (`cegraph sql`) read this while the night holds the catalog
        registry = Registry(wh)
        names = [workflow] if workflow else [r.name for r in registry.registered()]
        for name in names:
            active_id, _ = registry.active(name)
            store = NightStore(wh)
            try:
                night = store.acquire(name, budget=asdict(s.budget),
                                      active_version_id=active_id, lease_s=s.lease_s)
            except NightBusy as exc:
                log.warning(str(exc))
                nights.append({"workflow": name, "decision": "busy", "reason": str(exc)})
                continue
            try:
                with store.holding(night, s.lease_s):
                    summary = WorkflowNight(wh, night, s).run()
            finally:
                store.release(night)
                _prune(log)
            json_path, html = write_summary(wh, summary)
            summary["summary_path"] = str(json_path)
            summary["report_path"] = str(html) if html else None
            log.info("%s %s: %s%s", night.night_id, name, summary["decision"],
                     f" ({summary['reason']})" if summary.get("reason") else "")
            nights.append(summary)
    return {"nights": nights}
