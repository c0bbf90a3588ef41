"""`cegraph register/promote/rollback/export/workflows`: the workflow registry for a human."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import render
from cli.options import SETTINGS, AsJson, Home
from cli.refining import fail, open_home, read_home

if TYPE_CHECKING:
    from storage.registry import Registry

Reason = Annotated[str, typer.Option("--reason", help="why (kept in `deployments`)")]


@contextlib.contextmanager
def registry(home: Path, *, read_only: bool = False) -> Iterator[Registry]:
    """The registry of `home`; its errors end the command with their one line. Read-only,
    a missing home is an error, not a new empty one."""
    from storage.registry import Registry, RegistryError

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
             home: Home = Path(SETTINGS.home)) -> None:
    """Register a workflow for nightly refinement; its seed version becomes the active one."""
    from pydantic import ValidationError

    from cegraph.evaluator_spec import EvaluatorSpec
    from cli.refining import resolve_workflow

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
    with registry(home) as reg:
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
