"""CE-Graph: failure-driven refinement of LLM workflows, as a library (no Prefect here).

Notebook use:

    from cegraph import Workflow, LLM, load, run_workflow, seed
    traces = run_workflow(seed("math"), load("gsm8k", n=5), llm=LLM("qwen2.5-coder-1.5b"))

The names below are imported on first use (PEP 562), so `import cegraph.graph` stays light:
the LLM runtime (litellm) and the failure space (scikit-learn) load only when used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# The layers (cegraph.cli, .storage, .tasks, .flows, .deployments) are folders inside this
# package once installed from a wheel, and folders beside it in a checkout (setup.py maps
# them): there the checkout's root joins this package's path, so that a source tree on
# sys.path imports its own layers, never another install's.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if (not os.path.isdir(os.path.join(__path__[0], "storage"))
        and os.path.isfile(os.path.join(_checkout, "storage", "__init__.py"))):
    __path__.append(_checkout)

if TYPE_CHECKING:
    from cegraph.benchmarks import load
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.fss.failure import Failure, failure_from_trace
    from cegraph.fss.failure_space import Analysis, analyze_failures
    from cegraph.graph import Workflow, WorkflowError
    from cegraph.llm import LLM, MemoryCallStore, Meter
    from cegraph.seeds import seed
    from cegraph.task import Task
    from cegraph.trace import Outcome, Span, Trace

_HOME = {
    "load": "benchmarks", "evaluate": "evaluators", "Executor": "executor",
    "Failure": "fss.failure", "failure_from_trace": "fss.failure", "Analysis": "fss.failure_space",
    "analyze_failures": "fss.failure_space", "Workflow": "graph", "WorkflowError": "graph",
    "LLM": "llm", "MemoryCallStore": "llm", "Meter": "llm", "seed": "seeds", "Task": "task",
    "Outcome": "trace", "Span": "trace", "Trace": "trace",
}

__all__ = ["LLM", "Analysis", "Executor", "Failure", "Meter", "MemoryCallStore", "Outcome",
           "Span", "Task", "Trace", "Workflow", "WorkflowError", "analyze_failures", "evaluate",
           "failure_from_trace", "load", "run_workflow", "seed"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"cegraph.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def run_workflow(workflow: Workflow, tasks: Sequence[Task], *, llm: LLM,
                 concurrency: int = 4) -> list[Trace]:
    """Run and grade `tasks` (blocking; inside a running event loop use `Executor`)."""
    import asyncio

    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor

    return asyncio.run(Executor(llm, concurrency=concurrency).run_many(
        workflow, tasks, evaluate=evaluate))
