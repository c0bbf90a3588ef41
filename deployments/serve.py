"""Serve cegraph's deployments from one process (`cegraph serve`).

`prefect.serve` registers `nightly-refinement` (on a cron, default 02:00 UTC) and
`ingest-logs` (on demand, or on its own cron) with the Prefect API and runs their scheduled
and requested runs in this process; point `PREFECT_API_URL` at a Prefect server to see them
in its UI. The same two deployments are declared for work pools and workers in the repo's
`prefect.yaml` (see the README).
"""

from __future__ import annotations

from typing import Any

from prefect import serve as prefect_serve

from cegraph.flows.ingest import ingest_logs
from cegraph.flows.nightly import nightly_refinement

NIGHTLY = "0 2 * * *"


def deployments(*, home: str, model: str, budget_calls: int | None, cron: str = NIGHTLY,
                inbox: str | None = None, ingest_cron: str | None = None) -> list[Any]:
    """The two deployments as `prefect.serve` takes them."""
    return [
        nightly_refinement.to_deployment(
            name="nightly-refinement", cron=cron, tags=["cegraph", "nightly"],
            parameters={"home": home, "model": model, "budget_calls": budget_calls},
            description="Refine every registered workflow from its logged failures."),
        ingest_logs.to_deployment(
            name="ingest-logs", cron=ingest_cron, tags=["cegraph", "ingest"],
            parameters={"home": home, "paths": [inbox] if inbox else None},
            description="Ingest production logs and map their failures."),
    ]


def serve(*, home: str, model: str, budget_calls: int | None = 300, cron: str = NIGHTLY,
          inbox: str | None = None, ingest_cron: str | None = None) -> None:
    prefect_serve(*deployments(home=home, model=model, budget_calls=budget_calls, cron=cron,
                               inbox=inbox, ingest_cron=ingest_cron))
