"""`cegraph report`: a stored night's HTML report and JSON summary, from the warehouse alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, Home
from cegraph.cli.refining import fail


def report(night: Annotated[str | None, typer.Option(
               "--night", help="night id (nights.night_id); default: the latest")] = None,
           workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
           refine_id: Annotated[str | None, typer.Option(
               "--refinement", help="refinement whose edits to report (default: the "
                                    "night's own)")] = None,
           out: Annotated[Path | None, typer.Option(
               "--out", help="folder for report-<night>.html/.json (default: HOME/reports)")
           ] = None,
           home: Home = Path(SETTINGS.home)) -> None:
    """Write a night's self-contained HTML report (modes and their trend, the signature-space
    map, mass before/after, every candidate edit with its diff, verification, gate, decision,
    cost) and its JSON summary."""
    from cegraph.report import write_report
    from cegraph.storage import Warehouse
    from cegraph.storage.night_summary import NightNotFound, summarize
    from cegraph.storage.warehouse import CatalogLocked

    try:
        with Warehouse(home, read_only=True) as wh:
            summary = summarize(wh, night, workflow=workflow, refine_id=refine_id)
    except (FileNotFoundError, CatalogLocked, NightNotFound) as exc:
        fail(str(exc))
    path = write_report(summary, out or Path(home) / "reports")
    render.console.print(f"{summary.workflow} night {summary.night_id}: {summary.decision}; "
                         f"report {path} (summary {path.with_suffix('.json')})")
