"""A failed run as a counterexample: which node most plausibly went wrong (its locus) and how.

Locus attribution follows the data: only nodes whose outputs actually reached the output
(walked back from it through the source each input was read from, `Span.sources`) can be
blamed; a node that raised while a fallback source answered, or a truncated call in a branch
the output did not use, is not on that path. Along the path, in order:

1. the node that raised (when the run has no output, the path leads to it);
2. the earliest node with an LLM call cut off at its token limit;
3. the earliest node whose output already gives the graded answer as its own answer, by
   the grader's own equivalence (`\\$16` or `16.0` upstream is the `16` Format passed on;
   code by hash of the extracted code): the answer was born there, later nodes carried it;
4. else the earliest that mentions it verbatim;
5. else the node the output was read from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cegraph.answers import GRADER_KIND, extract_answer, gives
from cegraph.trace import INFRASTRUCTURE, Span, Trace


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


def locate(trace: Trace) -> Span:
    """The span a failed run is attributed to (see module docstring)."""
    path = trace.data_path() or [(s, frozenset(s.outputs)) for s in trace.spans]
    for rule in (lambda s: s.error is not None, lambda s: not s.skipped and s.truncated):
        hit = next((s for s, _ in path if rule(s)), None)
        if hit is not None:
            return hit
    ran = [(s, [str(s.outputs[p]) for p in ports if p in s.outputs])
           for s, ports in path if not s.skipped]
    outcome = trace.outcome
    grader = outcome.grader if outcome else ""
    judged = (extract_answer(GRADER_KIND[grader], trace.output or "")
              if grader in GRADER_KIND else None)
    if judged:  # where the graded answer was first given
        hit = next((s for s, texts in ran if any(gives(grader, t, judged) for t in texts)), None)
        if hit is not None:
            return hit
    observed = outcome.observed if outcome else ""
    if observed:  # else where it was first mentioned
        hit = next((s for s, texts in ran if any(observed in t for t in texts)), None)
        if hit is not None:
            return hit
    return path[-1][0] if path else trace.spans[-1]


def failure_from_trace(trace: Trace) -> Failure | None:
    """The counterexample a graded trace yields, or None if it passed or the infrastructure,
    not the workflow, failed (such a run is retried, never pooled)."""
    outcome = trace.outcome
    if outcome is None or outcome.passed or outcome.failure_class == INFRASTRUCTURE:
        return None
    span = locate(trace)
    fid = hashlib.sha256(f"{trace.run_id}:failure".encode()).hexdigest()[:16]
    return Failure(fid, trace.run_id, trace.workflow, trace.version_id, trace.task_id,
                   span.node_id, span.operator, span.depth, outcome.failure_class or "unknown",
                   outcome.message, outcome.expected, outcome.observed, trace.ended)
