"""A counterexample: one failed run, reduced to where it went wrong (its locus) and how.

Locus attribution, in order: the node that raised; else the node whose LLM call hit its
token limit; else the earliest node whose output already gives the wrong final answer as
its own answer (it was born there, later nodes only carried it), else the earliest that
mentions it; else the output node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cegraph.answers import extract_answer
from cegraph.trace import Span, Trace


@dataclass(frozen=True)
class Failure:
    failure_id: str
    run_id: str
    workflow: str
    version_id: str
    task_id: str
    locus_node: str
    locus_operator: str
    locus_depth: int
    failure_class: str
    message: str
    expected: str
    observed: str
    created_at: float


def _final(text: str) -> set[str]:
    """What a text may give as its final answer, for any task kind."""
    return {a for a in (extract_answer("math", text), extract_answer("qa", text), text.strip())
            if a}


def _gives(span: Span, observed: str) -> bool:
    return any(observed in _final(str(v)) for v in span.outputs.values())


def _mentions(span: Span, observed: str) -> bool:
    return any(observed in str(v) for v in span.outputs.values())


def locate(trace: Trace) -> Span:
    """The span a failed run is attributed to (see module docstring)."""
    ran = [s for s in trace.spans if not s.skipped]
    for rule in (lambda s: s.error is not None, lambda s: s.truncated):
        hit = next((s for s in ran if rule(s)), None)
        if hit is not None:
            return hit
    observed = trace.outcome.observed if trace.outcome else ""
    if observed:  # where the wrong answer was first given, else first mentioned
        for shows in (_gives, _mentions):
            hit = next((s for s in ran if shows(s, observed)), None)
            if hit is not None:
                return hit
    return ran[-1] if ran else trace.spans[-1]


def failure_from_trace(trace: Trace) -> Failure | None:
    """The counterexample a graded trace yields, or None if it passed."""
    outcome = trace.outcome
    if outcome is None or outcome.passed:
        return None
    span = locate(trace)
    fid = hashlib.sha256(f"{trace.run_id}:failure".encode()).hexdigest()[:16]
    return Failure(fid, trace.run_id, trace.workflow, trace.version_id, trace.task_id,
                   span.node_id, span.operator, span.depth, outcome.failure_class or "unknown",
                   outcome.message, outcome.expected, outcome.observed, trace.ended)
