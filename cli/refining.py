"""`cegraph refine` and `cegraph eval`: refine a workflow on a dev set, score any version."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, Counterexamples, DataPath, Home, MaxBreakRate, Model
from cegraph.progress import Progress

if TYPE_CHECKING:
    from cegraph.graph import Workflow
    from cegraph.refine.loop import Progress as LoopProgress
    from cegraph.refine.loop import RefineResult
    from cegraph.storage import Warehouse
    from cegraph.task import Task

WorkflowOpt = Annotated[str, typer.Option(
    "--workflow", "-w", help="a seed name (math, code, qa, or a dataset), a reference (io, cot, "
    "cot-sc, pot), a workflow file, or a version id stored in the home")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d")]
JsonOpt = Annotated[bool, typer.Option("--json", help="last line: one JSON object")]


def fail(message: str) -> None:
    render.console.print(f"[red]error:[/red] {render.escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def resolve_workflow(spec: str, wh: Warehouse | None) -> Workflow:
    """A workflow from a file, a seed or reference name, or a stored version id."""
    from cegraph.graph import Workflow, WorkflowError
    from cegraph.refine.baselines import REFERENCES, reference
    from cegraph.seeds import SEEDS, seed
    from cegraph.storage.refinement import RefinementJournal
    from cegraph.task import DATASET_KIND

    try:
        if Path(spec).is_file():
            return Workflow.load(spec)
        if spec in SEEDS or spec in DATASET_KIND:
            return seed(spec)
        if spec in REFERENCES:
            return reference(spec)
    except (WorkflowError, OSError) as exc:
        fail(str(exc))
    found = (RefinementJournal(wh, dataset="", model="").version(spec)
             if wh is not None and len(spec) >= 6 else None)
    if found is None and wh is not None:  # a registered workflow: its active version
        from cegraph.storage.registry import Registry, RegistryError

        with contextlib.suppress(RegistryError):
            found = Registry(wh).active(spec)[1]
    if found is None:
        fail(f"unknown workflow {spec!r}: not a file, a seed ({', '.join(SEEDS)}), a reference "
             f"({', '.join(REFERENCES)}), a registered workflow or a version id stored in "
             "this home; list them with cegraph workflows, or cegraph sql \"SELECT * FROM "
             "workflow_versions\"")
    return found


def load_tasks(dataset: str, data: str | None) -> list[Task]:
    from cegraph.benchmarks import DatasetError, DatasetNotFound, load

    try:
        return load(dataset, path=data)
    except (DatasetNotFound, DatasetError, ValueError) as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def open_home(home: Path) -> Warehouse:
    """The warehouse at `home` for writing, created when missing (and said so: a command run
    in another folder would otherwise start a second history unnoticed)."""
    from cegraph.storage import Warehouse
    from cegraph.storage.warehouse import CatalogLocked

    new = not (home / "catalog.duckdb").exists()
    try:
        wh = Warehouse(home)
    except CatalogLocked as exc:
        fail(str(exc))
    if new:
        typer.echo(f"created a new home at {home.resolve()} (--home or CEGRAPH_HOME to use "
                   "another)", err=True)
    return wh


def read_home(home: Path) -> Warehouse:
    """The warehouse at `home` opened read-only (never created), or a clear error when there
    is none; while a job writes it, the snapshot of its last completed step."""
    from cegraph.storage import Warehouse
    from cegraph.storage.warehouse import CatalogLocked

    try:
        return Warehouse(home, read_only=True)
    except CatalogLocked as exc:
        try:  # a job is writing: read the snapshot it keeps for readers
            wh = Warehouse(home, from_snapshot=True)
        except (FileNotFoundError, CatalogLocked):
            fail(str(exc))
        typer.echo(f"note: {home} is being written by a job; reading the snapshot of its "
                   "last completed step", err=True)
        return wh
    except FileNotFoundError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def progress_line(total: int | None, tokens: Callable[[], int]
                  ) -> Iterator[Callable[[LoopProgress], None]]:
    """A one-line live display: round, target mode, candidate, calls spent / budget,
    generated tok/s and the time left at this pace (`cegraph.progress`)."""
    pace = Progress(total or 0, tokens=tokens)

    def line(p: LoopProgress) -> str:
        pace.done = p.calls
        budget = f"/{total}, ETA {pace.eta()}" if total is not None else ""
        return render.escape(f"round {p.round} | {p.step} | {p.target[:60]} | {p.candidate} | "
                             f"calls {p.calls}{budget} | {pace.rate():.1f} tok/s "
                             f"{p.message[:60]}")

    if not render.console.is_terminal:  # a pipe or log: a printed line per step, or per
        last = [0.0, ""]                # PIPE_EVERY_S within one

        def printed(p: LoopProgress) -> None:
            step = f"{p.round} {p.step} {p.candidate}"
            if step != last[1] or time.monotonic() - last[0] >= render.PIPE_EVERY_S:
                last[:] = [time.monotonic(), step]
                render.console.print(line(p), soft_wrap=True)
        yield printed
        return
    with render.console.status("starting") as status:
        yield lambda p: status.update(line(p))


def print_result(result: RefineResult) -> None:
    for a in result.accepted:
        render.console.print(f"round {a.round}: accepted {a.op} ({a.source}) on "
                             f"{render.escape(a.target)}: {render.escape(a.verdict.reason)}")
        for line in a.diff:
            render.console.print(f"    {render.escape(line)}")
    s = result.summary()
    render.grid(list(s), [[json.dumps(v) if isinstance(v, list) else v for v in s.values()]],
                title="refine")


def refine(workflow: WorkflowOpt = "math", dataset: DatasetOpt = "gsm8k",
           data: DataPath = SETTINGS.data_dir,
           dev: Annotated[int, typer.Option(help="inputs the loop may use (half shown to "
                                                 "the proposer, half verify)")] = 30,
           budget_calls: Annotated[int | None, typer.Option(help="hard budget in LLM calls "
                                                                 "(execution, proposals, "
                                                                 "labels)")] = 300,
           budget_tokens: Annotated[int | None, typer.Option()] = None,
           budget_dollars: Annotated[float | None, typer.Option()] = None,
           model: Model = SETTINGS.model,
           proposer_model: Annotated[str | None, typer.Option(
               help="the proposer's model (default: --model)")] = None,
           method: Annotated[str, typer.Option(help="cegraph | scalar | random")] = "cegraph",
           patience: int = 2, alpha: float = 0.05,
           counterexamples: Counterexamples = 12,
           max_break_rate: MaxBreakRate = 0.1,
           seed: int = 0,
           home: Home = Path(SETTINGS.home), as_json: JsonOpt = False) -> None:
    """Refine a workflow from its failures on a dev set (Propose-and-Verify, one budget).
    Every step is stored as it happens; rerunning the same command resumes it."""
    from cegraph.llm import LLM
    from cegraph.local_model import MODELS, fetch
    from cegraph.refine.loop import Budget, RefineError, Refinement
    from cegraph.refine.loop import Settings as RefineSettings
    from cegraph.refine.splits import dev_test
    from cegraph.storage.refinement import RefinementJournal

    if method not in ("cegraph", "scalar", "random"):
        fail(f"--method {method!r}: choose cegraph, scalar or random")
    if dev <= 0:
        fail("the dev set is empty: give --dev N with N > 0")
    with open_home(home) as wh:
        wf = resolve_workflow(workflow, wh)
        tasks = load_tasks(dataset, data)
        try:
            part = dev_test(tasks, dev=min(dev, len(tasks)), test=0, seed=seed).dev
        except ValueError as exc:
            fail(str(exc))
        if not part:
            fail(f"the dev set is empty: {dataset} has no inputs here")
        llm = LLM(model, store=wh, concurrency=SETTINGS.concurrency)
        proposer = LLM(proposer_model, store=wh) if proposer_model else None
        try:
            run = Refinement(wf, part, llm=llm, proposer_llm=proposer,
                             budget=Budget(budget_calls, budget_tokens, budget_dollars),
                             settings=RefineSettings(method=method, patience=patience,
                                                     alpha=alpha, seed=seed,
                                                     max_break_rate=max_break_rate,
                                                     counterexamples=counterexamples,
                                                     concurrency=SETTINGS.concurrency),
                             journal=RefinementJournal(wh, dataset=dataset,
                                                       model=llm.identity))
        except RefineError as exc:
            fail(str(exc))
        for name in {model, proposer_model} & set(MODELS):
            fetch(name, progress=render.console.print)
        try:
            with progress_line(budget_calls, lambda: run.meter.generated_tokens_out) as show:
                run.on_progress = show
                result = _run(run)
        except KeyboardInterrupt:
            render.console.print("interrupted: every completed step is stored; rerun the same "
                                 "command to resume")
            raise typer.Exit(130) from None
    print_result(result)
    if as_json:
        print(json.dumps(result.summary()))


def _run(run: Any) -> RefineResult:
    import asyncio

    return asyncio.run(run.run())


def evaluate(workflow: WorkflowOpt = "math", dataset: DatasetOpt = "gsm8k",
             data: DataPath = SETTINGS.data_dir, n: Annotated[int, typer.Option("--n")] = 20,
             model: Model = SETTINGS.model, seed: int = 0, home: Home = Path(SETTINGS.home),
             as_json: JsonOpt = False) -> None:
    """Score any workflow version on a benchmark slice; stores its runs and failures and
    computes its failure modes (see them with `cegraph modes`)."""
    from cegraph.flows.evaluation import evaluate_workflow
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import check_model

    if n <= 0:
        fail("--n must be at least 1")
    with open_home(home) as wh:
        wf = resolve_workflow(workflow, wh)
    load_tasks(dataset, data)  # a bad dataset or file fails here, before the flow starts
    if model in MODELS:
        fetch(model, progress=render.console.print)
    check_model(resolve_model(model))  # before the flow: one line, not a failed flow's log
    started = time.time()
    result = evaluate_workflow(dataset=dataset, n=n, model=model, home=str(home),
                               data_dir=data, seed_value=seed,
                               concurrency=SETTINGS.concurrency,
                               locus_weight=SETTINGS.locus_weight,
                               workflow_json=wf.model_dump_json())
    traces = result.traces
    passed = sum(1 for t in traces if t.outcome and t.outcome.passed)
    figures = {"workflow": wf.name, "version": wf.version_id, "dataset": dataset,
               "n": len(traces), "accuracy": passed / max(1, len(traces)),
               "failure_mass": result.analysis.mass.total.mass,
               "llm_calls": sum(t.llm_calls for t in traces),
               "tokens": sum(t.tokens for t in traces),
               "wall_s": round(time.time() - started, 2),
               "modes": len(result.analysis.modes)}
    render.grid(list(figures), [list(figures.values())], title="eval")
    if as_json:
        print(json.dumps(figures))
