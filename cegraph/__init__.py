"""CE-Graph: failure-driven refinement of LLM workflows, as a library (no Prefect here).

Notebook use:

    from cegraph import Workflow, LLM, load, run_workflow, seed
    traces = run_workflow(seed("math"), load("gsm8k", n=5), llm=LLM("qwen2.5-coder-1.5b"))
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cegraph.benchmarks import load
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.failure import Failure, failure_from_trace
from cegraph.failure_space import Analysis, analyze_failures
from cegraph.graph import Workflow, WorkflowError
from cegraph.llm import LLM, MemoryCallStore, Meter
from cegraph.seeds import seed
from cegraph.task import Task
from cegraph.trace import Outcome, Span, Trace

__all__ = ["LLM", "Analysis", "Executor", "Failure", "Meter", "MemoryCallStore", "Outcome",
           "Span", "Task", "Trace", "Workflow", "WorkflowError", "analyze_failures", "evaluate",
           "failure_from_trace", "load", "run_workflow", "seed"]


def run_workflow(workflow: Workflow, tasks: Sequence[Task], *, llm: LLM,
                 concurrency: int = 4) -> list[Trace]:
    """Run and grade `tasks` (blocking; inside a running event loop use `Executor`)."""
    return asyncio.run(Executor(llm, concurrency=concurrency).run_many(
        workflow, tasks, evaluate=evaluate))
