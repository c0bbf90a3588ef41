"""`cegraph answer`: the demo's "production" service answering a benchmark slice with a
workflow's active version, logging OTLP GenAI spans (to a file or an OTLP/HTTP endpoint)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, DataPath, Home, Model
from cegraph.cli.refining import DatasetOpt, WorkflowOpt, fail, open_home, resolve_workflow

if TYPE_CHECKING:
    from cegraph.graph import Workflow
    from cegraph.storage import Warehouse
    from cegraph.task import Task
    from cegraph.trace import Trace


def default_log(home: Path, workflow: str) -> Path:
    """Where a service run's OTLP/JSON log goes by default: one file per run."""
    return home / "logs" / f"{workflow}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.otlp.jsonl"


def write_mapping(folder: Path, workflow: str) -> Path:
    """The ingest mapping for the service's spans, beside its logs."""
    from cegraph.serving import ingest_mapping

    mapping = folder / f"{workflow}.mapping.toml"
    mapping.parent.mkdir(parents=True, exist_ok=True)
    mapping.write_text(ingest_mapping(workflow))
    return mapping


def answer_slice(wf: Workflow, tasks: list[Task], *, model: str, target: str,
                 wh: Warehouse, label: str) -> list[Trace]:
    """The production service answering `tasks` with `wf`, its spans to `target` (a file or
    an OTLP/HTTP endpoint), the calls through `wh`'s call store, with a live progress line."""
    from cegraph.llm import LLM
    from cegraph.serving import Service
    from cegraph.serving.service import exporter_for

    llm = LLM(model, store=wh, concurrency=SETTINGS.concurrency)
    with Service(wf, llm, exporter_for(target), concurrency=SETTINGS.concurrency) as service, \
            render.progress(len(tasks), label, lambda: llm.meter.tokens_out) as counts:
        return service.answer_all(tasks, on_done=counts.run_done)


def answer(workflow: WorkflowOpt = "math", dataset: DatasetOpt = "gsm8k",
           data: DataPath = SETTINGS.data_dir, n: Annotated[int, typer.Option("--n")] = 20,
           seed: int = 0, model: Model = SETTINGS.model,
           out: Annotated[Path | None, typer.Option(
               "--out", help="OTLP/JSON log file (default: HOME/logs/<workflow>-<time>"
                             ".otlp.jsonl)")] = None,
           endpoint: Annotated[str | None, typer.Option(
               help="send spans over OTLP/HTTP instead (e.g. http://127.0.0.1:4318, "
                    "`cegraph collect`)")] = None,
           home: Home = Path(SETTINGS.home)) -> None:
    """Answer `n` questions as a production service would: the workflow's active version (a
    registered name) or any version, the model's calls through the call store, each answer
    graded online and logged as OpenTelemetry GenAI spans; then ingest them with the printed
    `cegraph ingest` command."""
    from cegraph.benchmarks import DatasetError, DatasetNotFound, load
    from cegraph.local_model import MODELS, fetch

    try:
        tasks = load(dataset, path=data, n=n, seed=seed)
    except (DatasetNotFound, DatasetError, ValueError) as exc:
        fail(str(exc))
    if model in MODELS:
        fetch(model, progress=render.console.print)
    started = time.time()
    with open_home(home) as wh:
        wf = resolve_workflow(workflow, wh)
        target = endpoint or str(out or default_log(Path(home), wf.name))
        traces = answer_slice(wf, tasks, model=model, target=target, wh=wh, label=wf.name)
    mapping = write_mapping((Path(target).parent if not endpoint else Path(home) / "logs"),
                            wf.name)
    passed = sum(1 for t in traces if t.outcome and t.outcome.passed)
    render.console.print(
        f"{wf.name} {wf.version_id} answered {len(traces)} questions ({passed} right) in "
        f"{time.time() - started:.0f}s; spans -> {target}\ningest them: cegraph ingest "
        f"{target if not endpoint else '(received by cegraph collect)'} --mapping {mapping} "
        f"--home {home}", soft_wrap=True)
