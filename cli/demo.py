"""`cegraph demo` (what `make demo` runs): the nightly pipeline end to end on the embedded
defaults. Register the seed math workflow; let a small "production" service answer a GSM8K
slice with its active version, logging OpenTelemetry GenAI spans; ingest those logs; run one
nightly refinement (the `nightly-refinement` flow: refine, verify, gate, promote); then
print the report's path and four audit queries with their output."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli import render
from cli.options import SETTINGS, DataPath, Home, Model

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


def _start_from_seed(home: Path) -> str:
    """Register the seed math workflow (once) and make its seed version active again, so
    every demo serves the same version and a second demo replays from the call store."""
    from cegraph.evaluator_spec import EvaluatorSpec
    from cegraph.seeds import seed
    from cli.refining import open_home
    from storage.registry import Registry

    wf = seed("math")
    with open_home(home) as wh:
        registry = Registry(wh)
        seed_version = registry.register(wf, evaluator=EvaluatorSpec(kind="numeric"))
        active, _ = registry.active(wf.name)
        if active != seed_version:
            registry.rollback(wf.name, to=seed_version, reason="demo: start from the seed")
    return wf.name


def _serve(name: str, home: Path, *, n: int, seed_value: int, model: str,
           data_dir: str | None) -> tuple[Path, Path]:
    """The production service answers `n` questions; returns its log and ingest mapping."""
    from cegraph.benchmarks import load
    from cli.refining import open_home
    from cli.service import answer_slice, default_log, write_mapping
    from storage.registry import Registry

    tasks = load("gsm8k", path=data_dir, n=n, seed=seed_value)
    log = default_log(home, name)
    mapping = write_mapping(log.parent, name)  # creates the logs folder too
    with open_home(home) as wh:
        _, wf = Registry(wh).active(name)
        traces = answer_slice(wf, tasks, model=model, target=str(log), wh=wh,
                              label="production service")
    right = sum(1 for t in traces if t.outcome and t.outcome.passed)
    render.console.print(f"[bold]1/3 production[/bold]: {name} answered {len(traces)} "
                         f"questions, {right} right; spans -> {log}", soft_wrap=True)
    return log, mapping


def demo(n: Annotated[int, typer.Option(
             "--n", help="questions the production service answers")] = 12,
         budget_calls: Annotated[int, typer.Option(
             help="the night's hard budget in LLM calls")] = 100,
         model: Model = SETTINGS.model, home: Home = Path(SETTINGS.home),
         data_dir: DataPath = SETTINGS.data_dir, seed: int = 0) -> None:
    """The main job on the embedded defaults: serve the seed math workflow on a GSM8K slice
    (OpenTelemetry logs), ingest the logs, run one nightly refinement (verify, gate,
    promote), and print the report and four audit queries. Run it bigger with --n and
    --budget-calls."""
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import check_model
    from flows.ingest import ingest_logs
    from flows.nightly import nightly_refinement
    from storage.audit import audit_query

    if model in MODELS:
        fetch(model, progress=render.console.print)
    check_model(resolve_model(model))
    started = time.time()
    home = home.resolve()
    name = _start_from_seed(home)
    log, mapping = _serve(name, home, n=n, seed_value=seed, model=model,
                          data_dir=data_dir)
    ingested = ingest_logs([str(log)], home=str(home), mapping=str(mapping))
    s = ingested.summary
    render.console.print(f"[bold]2/3 ingest[/bold]: {s['lines_read']} lines, {s['runs_stored']} "
                         f"runs and {s['spans_stored']} spans stored, quarantined: "
                         f"{sum(s['quarantined'].values())}")
    result = nightly_refinement(home=str(home), workflow=name, model=model,
                                budget_calls=budget_calls, max_inputs=n,
                                concurrency=SETTINGS.concurrency)
    [night] = result["nights"]
    render.console.print(
        f"[bold]3/3 nightly refinement[/bold]: {night['decision']}"
        f" ({night.get('reason') or (night.get('refine') or {}).get('stop_reason') or ''}); "
        f"{(night.get('cost') or {}).get('calls', 0)} LLM calls", soft_wrap=True)
    from cli.refining import read_home

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
        f"\ndemo done in {time.time() - started:.0f}s. Bigger: cegraph demo --n 100 "
        f"--budget-calls 400 --home {home}; every night: cegraph serve --home {home}",
        soft_wrap=True)
