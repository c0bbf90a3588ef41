"""The nightly refinement: for each registered workflow, refine its active version from the
failures logged since the last night, gate the result, and promote it (or only propose it).

Steps of one workflow's night (each completed step is stored in `night_steps`, so a crashed
night, run again, resumes after its last completed step and reaches the same decision):

1. gather: production runs ingested since the last finished night (batches whose ingest gate
   failed are skipped) plus the counterexamples the last night still failed, made gradeable
   under the workflow's evaluator (`gradeable`; exclusions counted by reason);
2. budget: the night's least spend projected from the call history; a budget that cannot pay
   it refuses the night before any call (fails closed);
3. refine: the Propose-and-Verify loop (`cegraph.refine`) on those inputs, journaled in the
   warehouse as it goes (it resumes from its own journal);
4. verify: the active version and the candidate re-run on the gate's sample of the night's
   counterexamples and passing inputs, fanned out as concurrent `verify-chunk` tasks whose
   inputs and outputs are plain data; only the flow writes the warehouse;
5. gate: the Great Expectations edit gate (`cegraph.refine.gate`), stored in `gate_results`;
6. decide: promote through the registry, or stop at a proposal (`propose_only`), or record
   the edit as gated out.

The flow holds the catalog while it writes; after every step (and every few seconds of
refinement) it leaves a snapshot for `cegraph sql` (see `Warehouse.snapshot`). Two nights of
one workflow never interleave (`storage.nights`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cegraph.evaluator_spec import LoggedRun, gradeable, grader
from cegraph.graph import Workflow
from cegraph.llm import LLM, Completion
from cegraph.refine import gate
from cegraph.refine.journal import Journal
from cegraph.refine.loop import Budget, Refinement, Settings, llm_calls_per_run
from cegraph.refine.projection import Projection, project
from cegraph.task import Task
from cegraph.trace import Trace
from storage import Warehouse
from storage.nights import Night, NightStore
from storage.refinement import RefinementJournal
from storage.registry import Registry
from tasks.verification import completion_dict, task_dict, task_from, verify_chunk

DATASET = SOURCE = "production"


@dataclass(frozen=True)
class NightSettings:
    """What a night may do (the flow's parameters, as one value)."""

    model: str
    budget: Budget
    propose_only: bool = False
    include_marked: bool = False  # also use batches whose ingest gate failed
    max_inputs: int = 60
    gate_sample: int = 12  # counterexamples and passing inputs each, re-run for the gate
    chunk: int = 4  # inputs per verify-chunk task
    concurrency: int | None = None  # None: as many as the engine has slots
    patience: int = 2
    seed: int = 0
    bounds: gate.GateBounds = gate.GateBounds()


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

    def finish(self, refine_id: str, row: dict[str, Any]) -> None:
        self.inner.finish(refine_id, row)


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


def gather(wh: Warehouse, store: NightStore, night: Night, s: NightSettings) -> dict[str, Any]:
    """The night's inputs (see the module docstring), as plain data."""
    from storage.ingest import IngestStore

    since = store.last_started(night.workflow)
    marked = [] if s.include_marked else sorted(IngestStore(wh).marked_batches())
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
        [night.workflow, SOURCE, since, since, marked])
    # a passing logged run's own output is a correct answer: it passed against the reference
    logged = [LoggedRun(run_id, task_id, logged_input(wattrs, record, inputs),
                        output if passed else expected, passed)
              for run_id, task_id, passed, output, expected, wattrs, record, inputs in rows]
    carried = store.previous_output(night.workflow, "gather", night.night_id) or {}
    still = set(carried.get("failing", []))
    logged += [LoggedRun(f"carried:{t['id']}", t["id"], t["input"], t["reference"], False)
               for t in carried.get("tasks", []) if t["id"] in still]
    spec = Registry(wh).evaluator(night.workflow)
    tasks, excluded = gradeable(logged, spec)
    failing = {r.task_id for r in logged if r.passed is False}
    tasks = ([t for t in tasks if t.id in failing] + [t for t in tasks if t.id not in failing]
             )[:s.max_inputs]
    return {"since": str(since) if since else None, "logged": len(rows),
            "carried": len(still), "excluded": excluded,
            "tasks": [task_dict(t) for t in tasks],
            "failing": sorted(failing & {t.id for t in tasks})}


def _history(wh: Warehouse, model: str) -> tuple[int, float, float]:
    [(n, tokens, cost)] = wh.rows("SELECT count(*), coalesce(avg(tokens_in + tokens_out), 0), "
                                  "coalesce(avg(cost), 0) FROM llm_calls WHERE model = ?",
                                  [model])
    return int(n), float(tokens), float(cost)


def refine_step(wh: Warehouse, night: Night, active: Workflow, tasks: list[Task],
                budget: Budget, s: NightSettings) -> dict[str, Any]:
    llm = LLM(s.model, store=wh, concurrency=s.concurrency)
    spec = Registry(wh).evaluator(night.workflow)  # re-runs graded as production's are
    judge = LLM(spec.judge_model, store=wh) if spec.judge_model else llm
    journal: Journal = SnapshotJournal(RefinementJournal(wh, dataset=DATASET,
                                                         model=llm.identity), wh)
    run = Refinement(active, tasks, llm=llm, budget=budget, journal=journal,
                     settings=Settings(patience=s.patience, seed=s.seed,
                                       concurrency=s.concurrency),
                     evaluate=grader(spec, judge), judge_llm=judge)
    log = get_run_logger()
    run.on_progress = lambda p: log.info("round %d %s %s %s %s (calls %d/%s)", p.round, p.step,
                                         p.target[:50], p.candidate, p.message, p.calls,
                                         p.budget_calls)
    result = asyncio.run(run.run())
    return {"refine_id": result.refine_id, "summary": result.summary(),
            "accepted": [{"edit_id": a.edit_id, "op": a.op, "source": a.source,
                          "target": a.target, "version_id": a.version_id,
                          "reason": a.verdict.reason, "diff": a.diff} for a in result.accepted],
            "candidate": result.workflow.model_dump_json() if result.accepted else None,
            "calls": result.llm_calls, "tokens": result.tokens, "cost": result.cost}


def _chunks(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def verify_step(wh: Warehouse, night: Night, refined: dict[str, Any], active: Workflow,
                tasks: list[Task], calls_left: int | None, s: NightSettings) -> dict[str, Any]:
    """Re-run the gate's sample on the active version and the candidate (fanned out)."""
    identity = LLM(s.model, store=wh).identity
    verdicts = dict(wh.rows("SELECT task_id, passed FROM runs WHERE night_id = ? AND "
                            "version_id = ? AND outcome <> 'infrastructure'",
                            [refined["refine_id"], active.version_id]))
    target = sorted(t for t, ok in verdicts.items() if not ok)[:s.gate_sample]
    regression = sorted(t for t, ok in verdicts.items() if ok)[:s.gate_sample]
    by_id = {t.id: task_dict(t) for t in tasks}
    sample = [by_id[i] for i in [*target, *regression]]
    known = [completion_dict(Completion(r[0], r[1], json.loads(r[2]), json.loads(r[3]),
                                        *r[4:])) for r in wh.rows(
        "SELECT key, model, messages, params, sample, text, tokens_in, tokens_out, cost, "
        "latency_s, finish_reason, epoch(created_at) FROM llm_calls WHERE key IN (SELECT "
        "unnest(s.call_keys) FROM spans s JOIN runs r USING (run_id) WHERE r.night_id IN "
        "(?, ?)) OR (model = ? AND created_at >= ?)",
        [refined["refine_id"], night.night_id, identity, night.started_at])]
    chunks = _chunks(sample, s.chunk)
    share = None if calls_left is None else max(0, calls_left) // max(1, 2 * len(chunks))
    spec = Registry(wh).evaluator(night.workflow).model_dump_json()
    futures = {(side, i): verify_chunk.submit(wf_json, chunk, model=s.model,
                                              evaluator_json=spec, known=known,
                                              max_calls=share, concurrency=s.concurrency)
               for side, wf_json in (("active", active.model_dump_json()),
                                     ("candidate", refined["candidate"]))
               for i, chunk in enumerate(chunks)}
    out: dict[str, Any] = {"target": target, "regression": regression, "active": [],
                           "candidate": [], "calls": 0, "tokens": 0, "cost": 0.0}
    for (side, _), future in sorted(futures.items()):
        got = future.result()
        for c in got["calls"]:
            wh.put(Completion(**c))
        wh.record_traces(got["traces"], night_id=night.night_id, source="verification",
                         dataset=DATASET, model=identity)
        out[side] += got["runs"]
        out["calls"] += len(got["calls"])
        out["tokens"] += sum(c["tokens_in"] + c["tokens_out"] for c in got["calls"])
        out["cost"] += sum(c["cost"] for c in got["calls"])
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def evidence(wh: Warehouse, night: Night, verified: dict[str, Any]) -> gate.GateEvidence:
    """The gate's evidence: candidate vs active on the sample, and the active version's live
    modes (its latest production night) against the modes the sample represents."""
    act = {r["task_id"]: r for r in verified["active"] if not r["infrastructure"]}
    cand = {r["task_id"]: r for r in verified["candidate"] if not r["infrastructure"]}
    both = set(act) & set(cand)
    regression = [t for t in verified["regression"] if t in both and act[t]["passed"]]
    target = [t for t in verified["target"] if t in both]
    sample = set(verified["target"]) | set(verified["regression"])
    modes = wh.rows(
        "WITH last AS (SELECT night_id FROM nights WHERE workflow = ? AND version_id = ? AND "
        "source = ? ORDER BY computed_at DESC LIMIT 1) SELECT m.mode_id, list(f.task_id) "
        "FROM failure_modes m JOIN last USING (night_id) LEFT JOIN failure_mode_members mm "
        "ON mm.night_id = m.night_id AND mm.mode_id = m.mode_id LEFT JOIN failures f ON "
        "f.failure_id = mm.failure_id WHERE m.status <> 'resolved' GROUP BY m.mode_id",
        [night.workflow, night.active_version_id, SOURCE])
    return gate.GateEvidence(
        outputs=[cand[t]["output"] for t in sorted(both)], regression=len(regression),
        broken=sum(1 for t in regression if not cand[t]["passed"]), target=len(target),
        candidate_target_passed=sum(1 for t in target if cand[t]["passed"]),
        active_target_passed=sum(1 for t in target if act[t]["passed"]),
        candidate_cost_per_run=_mean([cand[t]["cost"] for t in both]),
        active_cost_per_run=_mean([act[t]["cost"] for t in both]),
        candidate_latency_s=_mean([cand[t]["latency_s"] for t in both]),
        active_latency_s=_mean([act[t]["latency_s"] for t in both]),
        active_modes=[m for m, _ in modes],
        sampled_modes=[m for m, ids in modes if sample & set(ids or [])])


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
        gathered = self.step("gather", lambda: gather(self.wh, self.store, night, s))
        tasks = [task_from(t) for t in gathered["tasks"]]
        summary: dict[str, Any] = {"night_id": night.night_id, "workflow": night.workflow,
                                   "active_version_id": night.active_version_id,
                                   "model": s.model, "budget": night.budget,
                                   "inputs": len(tasks), "failing": len(gathered["failing"]),
                                   "logged": gathered["logged"],
                                   "excluded": gathered["excluded"]}
        if not gathered["failing"]:
            return self.finish(summary, "no_failures")
        # projected once: a resumed night keeps its projection, hence its refinement's budget
        projected = self.step("project", lambda: asdict(project(
            calls_per_run=llm_calls_per_run(active), inputs=len(tasks),
            regression=Settings().regression, gate_inputs=min(len(tasks), 2 * s.gate_sample),
            history=_history(self.wh, LLM(s.model).model))))
        projection = Projection(**projected)
        summary["projection"] = projection.to_dict()
        self.store.update(night.night_id, projection=projection.to_dict())
        refusal = projection.refusal(budget)
        if refusal:
            self.log.warning("%s: refused: %s", night.night_id, refusal)
            return self.finish({**summary, "reason": refusal}, "refused", status="refused")
        refined = self.step("refine", lambda: refine_step(
            self.wh, night, active, tasks, projection.refine_budget(budget), s))
        summary.update(refine=refined["summary"], edits=refined["accepted"],
                       mass_before=refined["summary"]["mass_before"],
                       mass_after=refined["summary"]["mass_after"])
        spent = [refined["calls"], refined["tokens"], refined["cost"]]
        if not refined["accepted"]:  # the active version may already pass them all
            return self.finish(summary, "no_failures" if not refined["summary"]["mass_before"]
                               else "no_edit", spent=spent)
        left = None if budget.calls is None else budget.calls - refined["calls"]
        verified = self.step("verify", lambda: verify_step(self.wh, night, refined, active,
                                                           tasks, left, s))
        spent = [spent[0] + verified["calls"], spent[1] + verified["tokens"],
                 spent[2] + verified["cost"]]
        candidate = refined["accepted"][-1]
        edit_id, version_id = candidate["edit_id"], candidate["version_id"]
        summary.update(candidate_version_id=version_id, verification={
            "target": len(verified["target"]), "regression": len(verified["regression"]),
            "active_target_passed": sum(r["passed"] for r in verified["active"]
                                        if r["task_id"] in verified["target"]),
            "candidate_target_passed": sum(r["passed"] for r in verified["candidate"]
                                           if r["task_id"] in verified["target"])})

        def gate_step() -> dict[str, Any]:
            verdict = gate.check(evidence(self.wh, night, verified), s.bounds)
            self.registry.record_gate(verdict, verification_id=f"{night.night_id}-gate",
                                      edit_id=edit_id)
            return {"passed": verdict.passed, "failing": verdict.failing,
                    "results": verdict.results}

        gated = self.step("gate", gate_step)
        summary["gate"] = gated

        def decide() -> dict[str, Any]:
            if not gated["passed"]:
                return {"decision": "gated_out"}
            if s.propose_only:
                return {"decision": "proposed"}
            self.registry.promote(version_id, reason=f"nightly {night.night_id}: "
                                  f"{candidate['op']} ({candidate['reason']})",
                                  run_id=night.night_id, edit_id=edit_id)
            return {"decision": "promoted"}

        decided = self.step("decide", decide)
        return self.finish(summary, decided["decision"], spent=spent)

    def finish(self, summary: dict[str, Any], decision: str, *, status: str = "done",
               spent: Sequence[float] = (0, 0, 0.0)) -> dict[str, Any]:
        calls, tokens, cost = spent
        summary = {**summary, "decision": decision, "status": status,
                   "cost": {"calls": int(calls), "tokens": int(tokens), "dollars": cost}}
        self.store.finish(self.night, status=status, decision=decision, summary=summary,
                          calls=int(calls), tokens=int(tokens), cost=float(cost))
        self.wh.snapshot()
        return summary


#: the report's word (`cegraph.report.summary.Decision`) for each decision of a night
REPORT_DECISION = {"promoted": "promoted", "proposed": "propose_only",
                   "gated_out": "gated_out", "no_edit": "rejected",
                   "no_failures": "no_candidate", "refused": "budget_stopped"}


def write_summary(wh: Warehouse, summary: dict[str, Any]) -> tuple[Path, Path | None]:
    """The night's JSON summary, and its HTML report (`cegraph.report.write_report`) when
    its workflow's failure modes have been mapped (`nights`, by ingest-logs)."""
    from cegraph.report import write_report
    from storage.night_summary import NightNotFound, latest_night, summarize

    out = wh.home / "reports" / summary["night_id"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    budget, cost = summary.get("budget") or {}, summary.get("cost") or {}
    reason = (summary.get("reason") or (summary.get("refine") or {}).get("stop_reason")
              or "; ".join((summary.get("gate") or {}).get("failing") or []))
    try:  # the night's modes are those of the workflow's latest mapping
        report = summarize(
            wh, latest_night(wh, summary["workflow"]), workflow=summary["workflow"],
            refine_id=(summary.get("refine") or {}).get("refine_id"),
            decision=REPORT_DECISION[summary["decision"]],
            decision_reason=reason or summary["decision"],
            cost={"llm_calls": cost.get("calls", 0), "tokens": cost.get("tokens", 0),
                  "dollars": cost.get("dollars", 0.0), "budget_calls": budget.get("calls"),
                  "budget_tokens": budget.get("tokens"),
                  "budget_dollars": budget.get("dollars")})
    except NightNotFound:
        get_run_logger().info("no failure modes mapped for %s yet (ingest-logs maps them): "
                              "JSON summary only", summary["workflow"])
        return path, None
    return path, write_report(report.model_copy(update={"night_id": summary["night_id"]}),
                              out)


@flow(name="nightly-refinement", log_prints=True)
def nightly_refinement(home: str | None = None, workflow: str | None = None,
                       model: str = "qwen2.5-coder-1.5b", budget_calls: int | None = 300,
                       budget_tokens: int | None = None, budget_dollars: float | None = None,
                       propose_only: bool = False, include_marked: bool = False,
                       max_inputs: int = 60, gate_sample: int = 12, concurrency: int | None = None,
                       patience: int = 2, seed: int = 0, max_break_rate: float = 0.05,
                       max_cost_ratio: float = 1.5, max_latency_ratio: float = 1.5
                       ) -> dict[str, Any]:
    """Refine every registered workflow (or `workflow`) from its logged failures, one hard
    budget per night (calls, tokens, dollars); returns the nights' summaries."""
    from storage.nights import NightBusy

    s = NightSettings(model=model, budget=Budget(budget_calls, budget_tokens, budget_dollars),
                      propose_only=propose_only, include_marked=include_marked,
                      max_inputs=max_inputs, gate_sample=gate_sample,
                      concurrency=concurrency, patience=patience, seed=seed,
                      bounds=gate.GateBounds(max_break_rate, max_cost_ratio,
                                             max_latency_ratio))
    log = get_run_logger()
    nights: list[dict[str, Any]] = []
    with Warehouse(Path(home) if home else None) as wh:
        wh.snapshot()  # readers (`cegraph sql`) read this while the night holds the catalog
        registry = Registry(wh)
        names = [workflow] if workflow else [r.name for r in registry.registered()]
        for name in names:
            active_id, _ = registry.active(name)
            store = NightStore(wh)
            try:
                night = store.acquire(name, budget=asdict(s.budget),
                                      active_version_id=active_id)
            except NightBusy as exc:
                log.warning(str(exc))
                nights.append({"workflow": name, "decision": "busy", "reason": str(exc)})
                continue
            try:
                summary = WorkflowNight(wh, night, s).run()
            finally:
                store.release(night)
            json_path, html = write_summary(wh, summary)
            summary["summary_path"] = str(json_path)
            summary["report_path"] = str(html) if html else None
            log.info("%s %s: %s", night.night_id, name, summary["decision"])
            nights.append(summary)
    return {"nights": nights}
