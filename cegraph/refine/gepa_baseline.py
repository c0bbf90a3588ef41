"""GEPA as a peer baseline: reflective prompt evolution (`gepa.optimize`) on our workflow,
in our harness and at our budget.

Its components are the workflow's editable prompt texts (each LLM node's `instruction`,
`prompt` or `system`, keyed `node.param`); its `evaluate` runs the workflow with a
candidate's texts through our `Executor` (so the call store replays and the one meter
charges every call) and scores a run 1 when our grader passes it; its reflective dataset
gives, per component, the input, what that node wrote and our failure message (the same
`expected ..., got ...` text our modes are built from). The reflection model is called
through our `LLM` (litellm, the local engine's endpoint for a local model).

Split discipline as in the loop: the train set is the `shown` role of dev, the validation
set its `verification` role (`splits.assign_roles` with the same share and seed); the
benchmark's test set is never given. The budget is the other methods' in LLM calls: one
meter for task and reflection calls, and a stopper that ends the search when the next
minibatch may not be paid for, so GEPA spends as many calls as the loop may and never more
(`max_metric_calls` counts GEPA's evaluations, replayed ones too: it is set not to bind
first).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cegraph.evaluators import evaluate as grade
from cegraph.executor import Executor, stable_run_id
from cegraph.graph import Workflow, WorkflowError
from cegraph.llm import LLM, BudgetExceeded, Meter
from cegraph.operators import REGISTRY
from cegraph.refine.journal import ChargingStore
from cegraph.refine.splits import assign_roles
from cegraph.refine.verify import Evaluate
from cegraph.task import Task
from cegraph.trace import Trace

PROMPT_PARAMS = ("instruction", "prompt", "system")


def components(wf: Workflow) -> dict[str, str]:
    """The workflow's editable prompt texts, `node.param` -> text (defaults filled in)."""
    out = {}
    for n in wf.nodes:
        params = {**REGISTRY[n.op].params, **n.params}
        for p in PROMPT_PARAMS:
            if p in params and p != "system" and isinstance(params[p], str):
                out[f"{n.id}.{p}"] = params[p]
    return out


def with_components(wf: Workflow, candidate: Mapping[str, str]) -> Workflow:
    """`wf` with a candidate's texts in place; raises `WorkflowError` when one cannot run (a
    template placeholder it may not use)."""
    texts: dict[str, dict[str, str]] = {}
    current = components(wf)
    for key, text in candidate.items():
        if current.get(key) != text:  # an unchanged text stays a default (no diff line)
            node, _, param = key.partition(".")
            texts.setdefault(node, {})[param] = text
    nodes = [n.model_copy(update={"params": {**n.params, **texts.get(n.id, {})}})
             .model_dump(exclude_defaults=True) for n in wf.nodes]
    return Workflow.from_dict({"name": wf.name, "description": wf.description, "nodes": nodes,
                               "output": wf.output})


def _node_output(trace: Trace, node: str) -> str:
    span = next((s for s in trace.spans if s.node_id == node), None)
    if span is None:
        return ""
    if span.error:
        return f"(error: {span.error})"
    return " | ".join(str(v) for v in span.outputs.values())[:1500]


@dataclass
class WorkflowAdapter:
    """`gepa.GEPAAdapter` over a workflow (see module doc). Once the meter cannot pay for a
    run, every further run scores 0 and `exhausted` says why (the stopper then ends GEPA)."""

    base: Workflow
    executor: Executor
    evaluate_run: Evaluate = grade
    exhausted: str = ""
    evaluations: int = 0  # runs made (GEPA's metric calls)
    # GEPA's own reflective proposer writes the new texts (through `ReflectionLM`)
    propose_new_texts: Any = None

    def evaluate(self, batch: list[Task], candidate: dict[str, str],
                 capture_traces: bool = False) -> Any:
        from gepa import EvaluationBatch

        try:
            wf = with_components(self.base, candidate)
        except WorkflowError as exc:
            traj = [{"task": t, "trace": None, "error": str(exc)} for t in batch]
            return EvaluationBatch([""] * len(batch), [0.0] * len(batch),
                                   traj if capture_traces else None)
        traces: list[Trace | None] = [None] * len(batch)
        if not self.exhausted:
            identity = self.executor.llm.identity
            try:
                traces = list(asyncio.run(self.executor.run_many(
                    wf, batch, evaluate=self.evaluate_run,
                    run_id=lambda t: stable_run_id(wf.version_id, identity, t.id))))
            except BudgetExceeded as exc:
                self.exhausted = f"budget: {str(exc).splitlines()[0]}"
        self.evaluations += len(batch)
        scores = [1.0 if t is not None and t.outcome is not None and t.outcome.passed else 0.0
                  for t in traces]
        outputs = [(t.output or "") if t is not None else "" for t in traces]
        traj = [{"task": task, "trace": t, "error": "" if t is not None else self.exhausted}
                for task, t in zip(batch, traces, strict=True)]
        return EvaluationBatch(outputs, scores, traj if capture_traces else None)

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch: Any,
                                components_to_update: list[str]
                                ) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for comp in components_to_update:
            node = comp.partition(".")[0]
            rows = []
            for item, score in zip(eval_batch.trajectories or [], eval_batch.scores,
                                   strict=False):
                trace: Trace | None = item["trace"]
                task: Task = item["task"]
                if trace is None:
                    feedback = item["error"] or "the run did not complete"
                elif score > 0:
                    feedback = "Correct."
                else:  # our failure message: what the modes are built from
                    o = trace.outcome
                    feedback = (f"Wrong ({o.failure_class}): {o.message}" if o is not None
                                else "no verdict")
                rows.append({"Inputs": task.input[:2000],
                             "Generated Outputs": _node_output(trace, node) if trace else "",
                             "Feedback": feedback})
            out[comp] = rows
        return out


@dataclass
class ReflectionLM:
    """GEPA's reflection model through our `LLM`: each call is a new sample (two identical
    reflection prompts are two calls), charged to the run's meter."""

    llm: LLM
    max_tokens: int = 1024
    temperature: float = 0.7
    calls: int = 0
    exhausted: str = ""

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
            list(prompt)
        self.calls += 1
        try:
            done = asyncio.run(self.llm.complete(messages, temperature=self.temperature,
                                                 max_tokens=self.max_tokens,
                                                 sample=self.calls))
        except BudgetExceeded as exc:
            self.exhausted = f"budget: {str(exc).splitlines()[0]}"
            return "```\n```"
        return done.text


@dataclass
class BudgetStopper:
    """Stops GEPA before a step the meter may not pay for: `reserve` calls (a minibatch's
    runs and a reflection call) must be left."""

    meter: Meter
    reserve: int
    adapter: WorkflowAdapter
    reflection: ReflectionLM
    on_progress: Callable[[str], None] | None = None

    def __call__(self, gepa_state: Any) -> bool:
        left = self.meter.remaining_calls()
        if self.on_progress is not None and gepa_state is not None:  # once per GEPA step
            self.on_progress(f"gepa | calls {self.meter.calls}/{self.meter.max_calls} | "
                             f"{self.adapter.evaluations} evaluations, "
                             f"{self.reflection.calls} reflections")
        return bool(self.adapter.exhausted or self.reflection.exhausted
                    or (left is not None and left < self.reserve))


@dataclass
class GepaResult:
    seed: Workflow
    workflow: Workflow
    val_score_before: float
    val_score_after: float
    llm_calls: int
    tokens: int
    cost: float
    wall_s: float
    metric_calls: int
    reflection_calls: int
    candidates: int
    stop_reason: str
    diff: list[str] = field(default_factory=list)


class _Quiet:
    def log(self, message: str) -> None:
        pass


def optimize_workflow(workflow: Workflow, dev: Sequence[Task], *, llm: LLM, budget_calls: int,
                      reflection_llm: LLM | None = None, verification: float = 0.5,
                      seed: int = 0, minibatch: int = 3, concurrency: int | None = None,
                      charge_since: float | None = None, evaluate: Evaluate = grade,
                      on_progress: Callable[[str], None] | None = None) -> GepaResult:
    """Run GEPA on `workflow` over `dev` within `budget_calls` LLM calls (task and
    reflection alike; blocking: call it outside an event loop); `on_progress` gets a line
    per GEPA step."""
    import gepa

    from cegraph.refine.loop import llm_calls_per_run

    started = time.perf_counter()
    roles = assign_roles(dev, verification, seed=seed)
    train = [t for t in dev if roles[t.id] == "shown"]
    val = [t for t in dev if roles[t.id] == "verification"]
    seed_candidate = components(workflow)
    if not seed_candidate:
        raise ValueError(f"workflow {workflow.name!r} has no prompt text for GEPA to evolve")
    reflection_llm = reflection_llm or llm
    meter = Meter(max_calls=budget_calls)
    llms = {id(x): x for x in (llm, reflection_llm)}
    saved = {k: (x.meter, x.store) for k, x in llms.items()}
    since = time.time() if charge_since is None else charge_since
    for x in llms.values():  # one meter; stored calls charged once when used (as the loop)
        x.meter = meter
        x.store = ChargingStore(x.store, meter, since)
    per_run = max(1, llm_calls_per_run(workflow))
    adapter = WorkflowAdapter(workflow, Executor(llm, concurrency=concurrency), evaluate)
    reflection = ReflectionLM(reflection_llm)
    stopper = BudgetStopper(meter, per_run * 2 * minibatch + 1, adapter, reflection,
                            on_progress)
    # GEPA counts an evaluation it repeats (the parent on a minibatch again) as a metric call;
    # its calls replay from the store and cost nothing. The meter is the budget (`stopper`
    # ends the search); this bound, which a step that pays at least one call cannot reach
    # first, only ends a search whose every step replays.
    metric_calls = budget_calls * (2 * minibatch + len(val))
    try:
        result = gepa.optimize(
            seed_candidate=seed_candidate, trainset=train, valset=val, adapter=adapter,
            reflection_lm=reflection, max_metric_calls=metric_calls,
            reflection_minibatch_size=minibatch, stop_callbacks=[stopper], logger=_Quiet(),
            seed=seed, raise_on_exception=True, display_progress_bar=False)
    finally:
        for k, x in llms.items():
            x.meter, x.store = saved[k]
    best = with_components(workflow, result.best_candidate)
    scores = result.val_aggregate_scores
    why = adapter.exhausted or reflection.exhausted or (
        "budget: the next step may not be paid for" if stopper(None) else
        "max_metric_calls reached")
    return GepaResult(workflow, best, float(scores[0]), float(scores[result.best_idx]),
                      meter.calls, meter.tokens_in + meter.tokens_out, meter.cost,
                      time.perf_counter() - started, adapter.evaluations, reflection.calls,
                      len(result.candidates), why, workflow.diff(best))
