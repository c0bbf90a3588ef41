"""`cegraph register/promote/rollback/export/workflows`: the workflow registry for a human."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, AsJson, Home, Model
from cegraph.cli.refining import fail, open_home, read_home

if TYPE_CHECKING:
    from cegraph.storage.registry import Registry

Reason = Annotated[str, typer.Option("--reason", help="why (kept in `deployments`)")]


@contextlib.contextmanager
def registry(home: Path, *, read_only: bool = False) -> Iterator[Registry]:
    """The registry of `home`; its errors end the command with their one line. Read-only,
    a missing home is an error, not a new empty one."""
    from cegraph.storage.registry import Registry, RegistryError

    with (read_home if read_only else open_home)(home) as wh:
        try:
            yield Registry(wh)
        except RegistryError as exc:
            fail(str(exc))


def register(workflow_file: Annotated[str, typer.Argument(
                 help="workflow file (YAML/JSON) or a seed name (math, code, qa)")],
             name: Annotated[str | None, typer.Option(
                 "--name", help="registry name (default: the workflow's own)")] = None,
             evaluator: Annotated[str, typer.Option(
                 help="how re-runs of logged inputs are graded: numeric | exact | f1 | code "
                      "(against the log's reference) | judge (an LLM with --rubric)")
             ] = "numeric",
             rubric: Annotated[str | None, typer.Option(
                 help="the judge's rubric (text, or @FILE)")] = None,
             judge_model: Annotated[str | None, typer.Option(
                 help="the judge's model (default: the night's model)")] = None,
             version_of: Annotated[str | None, typer.Option(
                 "--version-of", help="store the file as a new version of this registered "
                 "workflow (an edit of its active version; not active until gated and "
                 "promoted)")] = None,
             reason: Reason = "edited by hand",
             home: Home = Path(SETTINGS.home)) -> None:
    """Register a workflow for nightly refinement; its seed version becomes the active one.
    A file whose name is registered already with another graph (or `--version-of NAME`) is
    stored as a new version of it instead: gate it with `cegraph gate`, then promote it."""
    from pydantic import ValidationError

    from cegraph.cli.refining import resolve_workflow
    from cegraph.evaluator_spec import EvaluatorSpec

    if rubric and rubric.startswith("@"):
        try:
            rubric = Path(rubric[1:]).read_text()
        except OSError as exc:
            fail(f"cannot read the rubric file: {exc}")
    try:
        spec = EvaluatorSpec(kind=evaluator, rubric=rubric, judge_model=judge_model)
    except ValidationError as exc:
        fail(f"--evaluator: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    wf = resolve_workflow(workflow_file, None)
    source = str(Path(workflow_file).resolve()) if Path(workflow_file).is_file() else None
    target = version_of or name or wf.name
    with registry(home) as reg:
        if version_of is not None or reg.another_graph(target, wf):
            version, parent, diff = reg.add_human_version(target, wf, reason=reason,
                                                          source=source)
            render.console.print(
                f"{target} is registered already: stored {workflow_file} as version {version}"
                f", an edit of the active version {parent} ({len(diff)} node change(s); the "
                f"evaluator stays {reg.evaluator(target).kind}). It is not active: cegraph "
                f"workflow diff {parent} {version}; cegraph gate {version}; cegraph promote "
                f"{version}", soft_wrap=True)
            return
        version = reg.register(wf, name=name, evaluator=spec, source=source)
        registered = name or wf.name
    render.console.print(f"registered {registered}: seed version {version} is active "
                         f"(evaluator {spec.kind})")


def promote(version: Annotated[str, typer.Argument(help="version id (or a 6+ char prefix)")],
            reason: Reason = "promoted by hand",
            force: Annotated[bool, typer.Option(
                "--force", help="promote even though its latest gate failed")] = False,
            home: Home = Path(SETTINGS.home)) -> None:
    """Make a stored version of a registered workflow the active one."""
    with registry(home) as reg:
        version_id = reg.promote(version, reason=reason, force=force)
        name = reg.workflow_of(version_id)
    render.console.print(f"{name}: {version_id} is active")


def rollback(workflow: Annotated[str, typer.Argument(help="registered workflow name")],
             to: Annotated[str | None, typer.Option(
                 "--to", help="a version that was active before (default: the previous)")
             ] = None,
             reason: Reason = "rolled back by hand",
             home: Home = Path(SETTINGS.home)) -> None:
    """Make an earlier active version of a workflow active again."""
    with registry(home) as reg:
        version_id = reg.rollback(workflow, to=to, reason=reason)
    render.console.print(f"{workflow}: {version_id} is active")


def export(workflow: Annotated[str, typer.Argument(help="registered workflow name")],
           out: Annotated[Path | None, typer.Option(
               "--out", help="file to write (default: standard output)")] = None,
           home: Home = Path(SETTINGS.home)) -> None:
    """Write the active version's graph as JSON, for the serving system to load."""
    with registry(home) as reg:
        text = reg.export(workflow)
        version_id, _ = reg.active(workflow)
    if out is None:
        print(text, end="")
        return
    out.write_text(text)
    render.console.print(f"{workflow}: active version {version_id} written to {out}")


def workflows(home: Home = Path(SETTINGS.home), as_json: AsJson = False) -> None:
    """The registered workflows with their evaluator and active version."""
    with registry(home, read_only=True) as reg:
        rows = reg.registered()
    if as_json:
        print(json.dumps([{"workflow": r.name, "evaluator": r.evaluator.kind,
                           "active_version_id": r.active_version_id,
                           "seed_version_id": r.seed_version_id,
                           "registered_at": str(r.registered_at), "source": r.source}
                          for r in rows]))
        return
    if not rows:
        render.console.print("no workflow registered yet: cegraph register WORKFLOW_FILE")
        return
    render.grid(["workflow", "evaluator", "active", "seed", "registered_at", "source"],
                [[r.name, r.evaluator.kind, r.active_version_id, r.seed_version_id,
                  r.registered_at, r.source or ""] for r in rows])


def gate(version: Annotated[str, typer.Argument(help="version id (or a 6+ char prefix)")],
         budget_calls: Annotated[int | None, typer.Option(
             help="the gate's hard budget in LLM calls")] = 300,
         budget_tokens: Annotated[int | None, typer.Option()] = None,
         budget_dollars: Annotated[float | None, typer.Option()] = None,
         max_inputs: Annotated[int, typer.Option(
             help="fresh logged inputs to gate on (half failing, half passing)")] = 60,
         catalog_wait_s: Annotated[float, typer.Option(
             help="how long to wait while another job holds the catalog")] = 600.0,
         max_latency_ratio: Annotated[float, typer.Option(
             help="the version's latency per run over the active one's, at most")] = 2.0,
         model: Model = SETTINGS.model, home: Home = Path(SETTINGS.home),
         as_json: AsJson = False) -> None:
    """Gate a stored version (a human's edit, a night's candidate) against the active one,
    as a night gates its candidate: both run on logged inputs no refinement ran, the version
    with new calls only. Exit 0 when it passed (`cegraph promote` it then), 1 when it was
    gated out or undecided; recorded in gate_results and night_runs."""
    from cegraph.flows.gate import gate_version
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import ModelUnavailable, check_model
    from cegraph.storage.registry import RegistryError
    from cegraph.storage.warehouse import CatalogLocked

    with registry(home, read_only=True) as reg:  # an unknown version: one line, at once
        info = reg.info(version)
    if info.active:
        fail(f"{info.version_id} is {info.workflow}'s active version: nothing to gate")
    try:
        check_model(resolve_model(model))
    except ModelUnavailable as exc:
        fail(str(exc))
    if model in MODELS:
        fetch(model, progress=render.console.print)
    error = None
    try:
        result = gate_version(info.version_id, home=str(home.resolve()), model=model,
                              budget_calls=budget_calls, budget_tokens=budget_tokens,
                              budget_dollars=budget_dollars, max_inputs=max_inputs,
                              catalog_wait_s=catalog_wait_s, concurrency=SETTINGS.concurrency,
                              max_latency_ratio=max_latency_ratio)
    except (RegistryError, CatalogLocked) as exc:
        error = str(exc).splitlines()[0]
    if error is not None:  # outside the handler: Prefect's exception chain stays out of it
        fail(error)
    r = result
    render.console.print(
        f"{r['workflow']}: gate {r['verdict']} for {r['version_id']} against the active "
        f"version {r['active_version_id']} on {r['holdout']} fresh inputs "
        f"({r['holdout_failing']} failing), {r['cost']['calls']} LLM calls; decision "
        f"{r['decision']} ({r['gate_id']})", soft_wrap=True)
    for f in r["failing"]:
        render.console.print(f"  {'needs' if r['verdict'] == 'undecided' else 'failed'}: {f}",
                             soft_wrap=True)
    render.console.print(f"promote it: cegraph promote {r['version_id']}" if r["passed"] else
                         "not promoted; only `cegraph promote --force` overrides a gate",
                         soft_wrap=True)
    if as_json:
        print(json.dumps(r, default=str))
    if not r["passed"]:
        raise typer.Exit(1)
