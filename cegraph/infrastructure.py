"""Infrastructure errors: failures of what the workflow runs on, not of the workflow.

A provider outage that outlived its retries, a hard budget stop, or a sandbox that could not
be set up says nothing about the workflow. Such a run gets the outcome `infrastructure`: it
is stored (so the audit shows it) but counts in no mass and yields no failure, and the next
run of the same run id replaces it (see `storage/history.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from cegraph.evaluators import EVALUATOR_VERSION
from cegraph.llm import TRANSIENT_ERRORS, BudgetExceeded
from cegraph.task import Task
from cegraph.trace import Outcome, Trace

INFRASTRUCTURE = "infrastructure"

Grader = Callable[[Task, Trace], Outcome]


def is_infrastructure(exc: BaseException) -> bool:
    """Whether `exc` is the infrastructure's fault: a transient provider error (raised only
    after the LLM's retries), a budget stop, or an OS error (a sandbox that could not start:
    no temp dir, fork or exec failed). A timeout is the workflow's own (`timeout` class)."""
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, (*TRANSIENT_ERRORS, BudgetExceeded, OSError))


def _infrastructure(exc_type: str, message: str) -> Outcome:
    return Outcome(False, 0.0, INFRASTRUCTURE, f"{exc_type}: {message}",
                   evaluator_version=EVALUATOR_VERSION)


def graded(evaluate: Grader) -> Grader:
    """`evaluate`, except that a run a node of which hit an infrastructure error, or whose
    grading did (the grader's sandbox), is `infrastructure`; every outcome carries the
    evaluator version."""

    def grade(task: Task, trace: Trace) -> Outcome:
        hit = next((s for s in trace.spans if s.infrastructure), None)
        if hit is not None:
            return _infrastructure(hit.error_type or "Error", hit.error or "")
        try:
            outcome = evaluate(task, trace)
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            return _infrastructure(exc.__class__.__name__, str(exc))
        outcome.evaluator_version = outcome.evaluator_version or EVALUATOR_VERSION
        return outcome

    return grade
