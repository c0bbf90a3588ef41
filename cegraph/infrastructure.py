"""Infrastructure errors: failures of what the workflow runs on, not of the workflow.

A provider outage that outlived its retries, a hard budget stop, or a sandbox that could not
be set up says nothing about the workflow. Such a run gets the outcome `infrastructure`: it
is stored (so the audit shows it) but counts in no mass and yields no failure, and the next
run of the same run id replaces it (see `storage/history.py`).
"""

from __future__ import annotations

from cegraph.llm import BudgetExceeded, transient_errors
from cegraph.trace import INFRASTRUCTURE, Outcome


def is_infrastructure(exc: BaseException) -> bool:
    """Whether `exc` is the infrastructure's fault: a transient provider error (raised only
    after the LLM's retries), a budget stop, or an OS error (a sandbox that could not start:
    no temp dir, fork or exec failed). A timeout is the workflow's own (`timeout` class)."""
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, (*transient_errors(), BudgetExceeded, OSError))


def infrastructure_outcome(exc_type: str, message: str) -> Outcome:
    """The outcome of a run whose infrastructure, not its workflow, failed."""
    return Outcome(False, 0.0, INFRASTRUCTURE, f"{exc_type}: {message}")
