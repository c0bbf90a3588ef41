"""Evaluate a workflow on a benchmark slice and map its failures: the main job of the demo."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from prefect import flow

from cegraph.benchmarks import load
from cegraph.fss.failure_space import Analysis
from cegraph.fss.recipe import DEFAULT_RECIPE, check_recipe
from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT
from cegraph.graph import Workflow
from cegraph.llm import Meter, resolve_model
from cegraph.preflight import check_model
from cegraph.seeds import seed
from cegraph.tasks.execution import run_workflow, store_traces
from cegraph.tasks.failure_space import analyze_and_store
from cegraph.trace import Trace


@dataclass
class Evaluation:
    workflow: str
    version_id: str
    night_id: str
    traces: list[Trace]
    analysis: Analysis


@flow(name="evaluate", log_prints=True)
def evaluate_workflow(dataset: str = "gsm8k", n: int = 8, model: str = "qwen2.5-coder-1.5b",
                      home: str | None = None, workflow_path: str | None = None,
                      data_dir: str | None = None, seed_value: int = 0,
                      concurrency: int | None = None, llm_labels: bool = False,
                      locus_weight: float = DEFAULT_LOCUS_WEIGHT, max_tokens: int | None = None,
                      max_cost: float | None = None, recipe: str = DEFAULT_RECIPE,
                      diagnosis_model: str | None = None,
                      workflow_json: str | None = None) -> Evaluation:
    """Run the workflow (default: the dataset's seed) on `n` problems, store every run,
    span and failure, embed and index the signatures, and compute the failure modes; runs,
    failures, the pool and the mode history are keyed on (workflow, model, dataset).
    `max_tokens`/`max_cost` are the job's hard budget, kept across task retries. `recipe`
    picks the signature recipe; under `message+features+diagnosis` the failures are
    diagnosed by `diagnosis_model` (default: `model`) within the same budget.
    `workflow_json` gives the workflow itself (a stored version)."""
    check_recipe(recipe)
    for name in {model, diagnosis_model or model}:
        check_model(resolve_model(name))  # one line saying what to do, before any task runs
    wf = (Workflow.model_validate_json(workflow_json) if workflow_json else
          Workflow.load(workflow_path) if workflow_path else seed(dataset))
    tasks = load(dataset, path=data_dir, n=n, seed=seed_value)
    night_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    meter = Meter(max_tokens=max_tokens, max_cost=max_cost)
    executed = run_workflow(home, wf, tasks, model=model, concurrency=concurrency,
                            meter=meter)
    pool = {"dataset": dataset, "source": "benchmark", "model": executed.model}
    store_traces(home, wf, executed.traces, night_id=night_id, **pool)
    analysis = analyze_and_store(home, workflow=wf.name, version_id=wf.version_id,
                                 night_id=night_id, locus_weight=locus_weight,
                                 label_model=model if llm_labels else None,
                                 recipe=recipe, diagnosis_model=diagnosis_model or model,
                                 meter=meter, **pool)
    return Evaluation(wf.name, wf.version_id, night_id, executed.traces, analysis)
