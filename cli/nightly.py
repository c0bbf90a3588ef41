"""`cegraph nightly`: run the nightly refinement flow once, here, with progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cegraph.cli import render
from cegraph.cli.options import SETTINGS, Home, Model
from cegraph.cli.refining import fail

#: Decisions of a night that did not run its refinement: the exit code is 3.
REFUSALS = ("refused", "busy", "stale")


def nightly(workflow: Annotated[str | None, typer.Option(
                "--workflow", "-w", help="one registered workflow (default: all)")] = None,
            budget_calls: Annotated[int | None, typer.Option(
                help="the night's hard budget in LLM calls, per workflow")] = 300,
            budget_tokens: Annotated[int | None, typer.Option()] = None,
            budget_dollars: Annotated[float | None, typer.Option()] = None,
            propose_only: Annotated[bool, typer.Option(
                help="verify and gate, but promote nothing")] = False,
            max_inputs: Annotated[int, typer.Option(help="logged inputs per night")] = 60,
            holdout_share: Annotated[float, typer.Option(
                help="share of the night's fresh failing and passing inputs held out for "
                     "the gate (never seen by the refinement)")] = 0.25,
            catalog_wait_s: Annotated[float, typer.Option(
                help="how long to wait while another job (an ingest) holds the catalog")
            ] = 600.0,
            max_rounds: Annotated[int | None, typer.Option(
                help="rounds of propose-and-verify (default 8)")] = None,
            prior_candidates: Annotated[int | None, typer.Option(
                help="the operator prior's candidates a round verifies (default 3)")] = None,
            llm_candidates: Annotated[int | None, typer.Option(
                help="the LLM proposer's candidates a round verifies (default 3)")] = None,
            counterexamples: Annotated[int | None, typer.Option(
                help="members of the mode each candidate is verified on (default 12)")] = None,
            regression: Annotated[int | None, typer.Option(
                help="other inputs each candidate is verified on (default 24)")] = None,
            model: Model = SETTINGS.model, home: Home = Path(SETTINGS.home),
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Refine each registered workflow from the failures logged since the last night: verify,
    gate and promote (the `nightly-refinement` deployment's flow, run once here). Exit code
    0 for any verdict, 3 when a night was refused (budget), busy (locked) or stale."""
    from cegraph.config import Settings
    from cegraph.flows.nightly import night_flow, server_params
    from cegraph.llm import resolve_model
    from cegraph.local_model import MODELS, fetch
    from cegraph.preflight import ModelUnavailable, check_model
    from cegraph.storage.registry import RegistryError
    from cegraph.storage.warehouse import CatalogLocked

    _check_registered(home, workflow)
    if model in MODELS:
        fetch(model, progress=render.console.print)
    try:  # before the flow: one line, and no night started that could not call its model
        check_model(resolve_model(model), server_params(Settings.load().night.api_base))
    except ModelUnavailable as exc:
        fail(str(exc))
    # the flow's own defaults for the round settings not given (one place states them)
    rounds = {k: v for k, v in {"max_rounds": max_rounds, "prior_candidates": prior_candidates,
                                "llm_candidates": llm_candidates,
                                "counterexamples": counterexamples,
                                "regression": regression}.items() if v is not None}
    error = None
    try:
        # the task runner `[night]` of the settings names (cegraph.config.NightConfig)
        result = night_flow()(home=str(home.resolve()), workflow=workflow, model=model,
                                    budget_calls=budget_calls, budget_tokens=budget_tokens,
                                    budget_dollars=budget_dollars, propose_only=propose_only,
                                    max_inputs=max_inputs, holdout_share=holdout_share,
                                    catalog_wait_s=catalog_wait_s,
                                    concurrency=SETTINGS.concurrency, **rounds)
    except (RegistryError, CatalogLocked) as exc:
        error = str(exc).splitlines()[0]
    if error is not None:  # outside the handler: Prefect's exception chain stays out of it
        fail(error)
    rows = [[n.get("workflow"), n.get("night_id", ""), n["decision"], n.get("inputs", ""),
             n.get("failing", ""), (n.get("cost") or {}).get("calls", ""),
             n.get("summary_path") or n.get("reason", "")] for n in result["nights"]]
    if not rows:
        fail("no workflow is registered; add one with: cegraph register WORKFLOW_FILE")
    render.grid(["workflow", "night", "decision", "inputs", "failing", "calls", "summary"],
                rows, title="nightly")
    refused = [n for n in result["nights"] if n["decision"] in REFUSALS]
    for n in refused:  # why, in words, not only in a Prefect log line
        render.console.print(f"{n.get('workflow')}: {n['decision']}: {n.get('reason', '')}",
                             soft_wrap=True)
    if as_json:
        print(json.dumps(result, default=str))
    if refused:  # a script can tell "did not run" from any verdict the night reached
        raise typer.Exit(3)


def _check_registered(home: Path, workflow: str | None) -> None:
    """An unknown --workflow fails here, before the flow starts (when the catalog is free)."""
    from cegraph.storage import Warehouse
    from cegraph.storage.registry import Registry, RegistryError
    from cegraph.storage.warehouse import CatalogLocked

    if workflow is None:
        return
    try:
        wh = Warehouse(home, read_only=True)
    except (FileNotFoundError, CatalogLocked):
        return  # the flow says it, or waits for nothing: a running job holds the catalog
    error = None
    with wh:
        try:
            Registry(wh).active(workflow)
        except RegistryError as exc:
            error = str(exc)
    if error is not None:
        fail(error)
