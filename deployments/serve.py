"""Serve the evaluation flow on a nightly cron with Prefect (`cegraph serve`).

`evaluate_workflow.serve` registers a deployment with the Prefect API and polls for its
scheduled runs in this process; point `PREFECT_API_URL` at a Prefect server to see them in
its UI. The nightly refinement flow joins this schedule when it exists.
"""

from __future__ import annotations

from flows.evaluation import evaluate_workflow

NIGHTLY = "0 2 * * *"


def serve(*, dataset: str = "gsm8k", n: int = 50, model: str = "qwen2.5-coder-1.5b",
          home: str = ".cegraph", cron: str = NIGHTLY) -> None:
    evaluate_workflow.serve(
        name=f"nightly-evaluate-{dataset}", cron=cron,
        parameters={"dataset": dataset, "n": n, "model": model, "home": home},
        tags=["cegraph", "nightly"], description="Evaluate the workflow and map its failures.")
