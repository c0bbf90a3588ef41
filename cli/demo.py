"""`cegraph demo` (what `make demo` runs): the nightly pipeline end to end on the embedded
defaults. Register the demo's production workflow (cegraph/data/demo/math-service.yaml);
let a small production service answer a day of GSM8K questions with its active version,
logging OpenTelemetry GenAI spans (the default model's calls for that day ship recorded, so
it replays in seconds); ingest those logs; run one nightly refinement (the
`nightly-refinement` flow: refine, verify, gate, promote; every candidate call is new); let
the service answer the next day's questions with whatever version is active then; then
print the report's path and four audit queries with their output."""

from __future__ import annotations

import gzip
import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, DataPath, Home, Model

if TYPE_CHECKING:
    from cegraph.task import Task

#: the production service's workflow, and its first day's calls recorded with the default
#: model (`cegraph demo --record`), so the demo's day of traffic costs no model time
WORKFLOW, RECORDED = "math-service.yaml", "production-calls.jsonl.gz"
DAY = 96  # the recorded day's questions: the first `DAY` of the seeded GSM8K sample
#: the demo's night is one round on the densest mode with the cheapest edit: one
#: operator-prior candidate, verified on up to 20 members of the mode and 6 other inputs (the
#: defaults: up to 8 rounds of 3 prior and 3 LLM-proposed candidates, on 12 and 24), so its
#: verdict and its gate fit in the demo's minutes
NIGHT = {"prior_candidates": 1, "llm_candidates": 0, "max_rounds": 1, "counterexamples": 20,
         "regression": 6}

#: What a user asks the audit first: what changed and why, what the night cost, where the
#: active version comes from, why a candidate was not taken (docs/schema.md).
AUDIT = (
    ("edits deployed, and why",
     "SELECT workflow, action, version_id, edit_id, reason FROM edits_deployed LIMIT 5"),
    ("the cost of each night",
     "SELECT night_id, decision, calls, tokens, budget_calls FROM night_costs LIMIT 5"),
    ("the active version's lineage back to its seed", "SELECT * FROM active_lineage"),
    ("why each candidate edit was accepted or not",
     "SELECT e.operation, e.source, v.counterexamples AS cex, v.fixed, v.broken, "
     "round(v.p_value, 3) AS p, v.reason FROM verifications v JOIN edits e USING (edit_id) "
     "ORDER BY v.created_at DESC LIMIT 5"),
)


def demo_file(name: str) -> Path:
    """A file of the demo's sample data (`cegraph/data/demo`)."""
    import cegraph.data

    return Path(cegraph.data.__file__).parent / "demo" / name


def _start(home: Path) -> str:
    """Register the demo's production workflow (once) and make its first version active
    again, so every demo serves the same version and replays the same recorded calls."""
    from cegraph.cli.refining import open_home
    from cegraph.evaluator_spec import EvaluatorSpec
    from cegraph.graph import Workflow
    from cegraph.storage.registry import Registry

    wf = Workflow.load(demo_file(WORKFLOW))
    with open_home(home) as wh:
        registry = Registry(wh)
        first = registry.register(wf, evaluator=EvaluatorSpec(kind="numeric"))
        active, _ = registry.active(wf.name)
        if active != first:
            registry.rollback(wf.name, to=first, reason="demo: start from the first version")
    return wf.name


def _load_recorded(home: Path) -> int:
    """Put the recorded production day's calls in the home's call store (a key stored
    already keeps its answer); returns how many the file holds."""
    from cegraph.cli.refining import open_home
    from cegraph.llm import Completion

    with gzip.open(demo_file(RECORDED), "rt") as f:
        calls = [Completion(**json.loads(line)) for line in f]
    with open_home(home) as wh:
        for call in calls:
            wh.put(call)
    return len(calls)


def _record(home: Path, out: Path) -> None:
    """Write every call in the home's call store to `out` (gzipped JSON lines)."""
    from cegraph.cli.refining import read_home

    with read_home(home) as wh:
        keys = [k for (k,) in wh.rows("SELECT key FROM llm_calls ORDER BY created_at, key")]
        calls = [c for k in keys if (c := wh.get(k)) is not None]
    with gzip.open(out, "wt") as f:
        for call in calls:
            f.write(json.dumps({k: v for k, v in asdict(call).items() if k != "cached"}) + "\n")
    render.console.print(f"recorded {len(calls)} calls -> {out}", soft_wrap=True)


def _serve(name: str, home: Path, tasks: list[Task], *, model: str,
           step: str) -> tuple[Path, Path]:
    """The production service answers `tasks` with the active version; returns its log and
    ingest mapping."""
    from cegraph.cli.refining import open_home
    from cegraph.cli.service import answer_slice, default_log, write_mapping
    from cegraph.storage.registry import Registry

    log = default_log(home, name)
    mapping = write_mapping(log.parent, name)  # creates the logs folder too
    with open_home(home) as wh:
        version, wf = Registry(wh).active(name)
        traces = answer_slice(wf, tasks, model=model, target=str(log), wh=wh,
                              label="production service")
    right = sum(1 for t in traces if t.outcome and t.outcome.passed)
    render.console.print(f"[bold]{step}[/bold]: {name} {version} answered {len(traces)} "
                         f"questions, {right} right; spans -> {log}", soft_wrap=True)
    return log, mapping


def _days(n: int, next_n: int, seed_value: int, data_dir: str | None
          ) -> tuple[list[Task], list[Task]]:
    """Today's `n` questions and the next day's: `next_n` others of the same split (seeded),
    so the next service run answers inputs the night never saw."""
    from cegraph.benchmarks import load

    today = load("gsm8k", path=data_dir, n=n, seed=seed_value)
    seen = {t.id for t in today}
    rest = [t for t in load("gsm8k", path=data_dir) if t.id not in seen]
    keep = sorted(random.Random(seed_value + 1).sample(range(len(rest)),
                                                       min(next_n, len(rest))))
    return today, [rest[i] for i in keep]


def _gate_line(night: dict[str, Any]) -> str | None:
    """What the gate saw on its own fresh evidence (the holdout: inputs the refinement never
    touched, the candidate on new calls), or None when no candidate reached the gate."""
    gated, v = night.get("gate"), night.get("verification")
    if not gated or not v:
        return None
    seen = {column: r.get("observed") for r in gated.get("results") or []
            for column in ("failing_pairs", "passing_pairs", "break_rate")
            if f'"column": "{column}"' in r["expectation"]}
    why = f" ({'; '.join(gated['failing'])})" if gated.get("failing") else ""
    return (f"gate on {v['holdout']} held-out inputs, {v['calls']} new calls: the candidate "
            f"passed {v['candidate_target_passed']} of {seen.get('failing_pairs')} logged "
            f"failures (active {v['active_target_passed']}), break rate "
            f"{seen.get('break_rate')} on {seen.get('passing_pairs')} passes -> "
            f"{gated['decision']}{why}")


def demo(n: Annotated[int, typer.Option(
             "--n", help=f"questions the production service answers (the first {DAY} are "
                         "recorded)")] = DAY,
         next_n: Annotated[int, typer.Option(
             "--next", help="questions the next day's service run answers")] = 6,
         budget_calls: Annotated[int, typer.Option(
             help="the night's hard budget in LLM calls")] = 200,
         record: Annotated[Path | None, typer.Option(
             help="only answer the production day with the model (no recorded calls) and "
                  "write its calls to this file (how the demo's recording was made)")] = None,
         model: Model = SETTINGS.model, home: Home = Path(SETTINGS.home),
         data_dir: DataPath = SETTINGS.data_dir, seed: int = 0) -> None:
    """The main job on the embedded defaults: a production service (cegraph/data/demo/
    math-service.yaml, the 1.5B's answers to 96 GSM8K questions recorded) logs OpenTelemetry
    spans; ingest them; run one nightly refinement (verify, gate, promote); let the service
    answer the next day's questions with whatever version is active then; print the report
    and four audit queries."""
    from cegraph.flows.ingest import ingest_logs
    from cegraph.flows.nightly import nightly_refinement
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import check_model
    from cegraph.storage.audit import audit_query

    if model in MODELS:
        fetch(model, progress=render.console.print)
    check_model(resolve_model(model))
    started = time.time()
    home = home.resolve()
    name = _start(home)
    today, next_day = _days(n, next_n, seed, data_dir)
    if record is not None:
        _serve(name, home, today, model=model, step="production (recording)")
        _record(home, record)
        return
    recorded = _load_recorded(home)
    render.console.print(f"[bold]0/4 setup[/bold]: {name} registered; {recorded} recorded calls "
                         f"of the production day in the call store (home {home})",
                         soft_wrap=True)
    log, mapping = _serve(name, home, today, model=model, step="1/4 production")
    ingested = ingest_logs([str(log)], home=str(home), mapping=str(mapping))
    s = ingested.summary
    render.console.print(f"[bold]2/4 ingest[/bold]: {s['lines_read']} lines, {s['runs_stored']} "
                         f"runs and {s['spans_stored']} spans stored, quarantined: "
                         f"{sum(s['quarantined'].values())}")
    result = nightly_refinement(home=str(home), workflow=name, model=model,
                                budget_calls=budget_calls, max_inputs=n,
                                concurrency=SETTINGS.concurrency, **NIGHT)
    [night] = result["nights"]
    render.console.print(
        f"[bold]3/4 nightly refinement[/bold]: {night['decision']}"
        f" ({night.get('reason') or (night.get('refine') or {}).get('stop_reason') or ''}); "
        f"{(night.get('cost') or {}).get('calls', 0)} LLM calls", soft_wrap=True)
    for edit in night.get("edits") or []:  # judged on verification inputs never shown
        render.console.print(f"  accepted {edit['op']} for mode {edit['target']} on inputs "
                             f"the proposer never saw: {edit['reason']}", soft_wrap=True)
    gate_line = _gate_line(night)
    if gate_line:
        render.console.print(f"  {gate_line}", soft_wrap=True)
    if night["decision"] == "promoted" and not next_day:
        render.console.print("[bold]4/4 next service run[/bold]: promoted, but the split has "
                             "no question the night saw not (--n smaller)")
    elif night["decision"] == "promoted":  # the next day's traffic meets the promoted version
        _serve(name, home, next_day, model=model, step="4/4 next service run")
    else:  # nothing changed: the same version would answer, so it is not re-run here
        render.console.print("[bold]4/4 next service run[/bold]: the active version is "
                             "unchanged; the next service run answers with it")
    from cegraph.cli.refining import read_home

    for title, query in AUDIT:  # each as `cegraph sql` runs it: its own locked-down reader
        render.console.print(f"\n[bold]{title}[/bold]: cegraph sql \"{query}\" "
                             f"--home {home}", soft_wrap=True)
        with read_home(home) as wh:
            render.arrow_table(audit_query(wh, query), "table")
    if night.get("report_path"):
        render.console.print(f"\nreport: {night['report_path']}", soft_wrap=True)
    if not night.get("report_path") and night.get("summary_path"):
        render.console.print(f"\nsummary: {night['summary_path']}", soft_wrap=True)
    render.console.print(
        f"\ndemo done in {time.time() - started:.0f}s. Bigger (questions past the recorded "
        f"{DAY} answered live): cegraph demo --n 200 --budget-calls 400 --home {home}; every "
        f"night: cegraph serve --home {home}",
        soft_wrap=True)
