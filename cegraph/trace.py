"""What one workflow run leaves behind: a span per node with its LLM calls, and the outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cegraph.llm import Completion


@dataclass
class Span:
    """One node's execution. `error` is set when the node failed; `skipped` when its `when`
    condition was false or an upstream node it needs failed."""

    node_id: str
    operator: str
    depth: int
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    calls: list[Completion] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    skipped: bool = False
    infrastructure: bool = False  # the error was the infrastructure's (cegraph.infrastructure)

    @property
    def tokens_in(self) -> int:
        return sum(c.tokens_in for c in self.calls if not c.cached)

    @property
    def tokens_out(self) -> int:
        return sum(c.tokens_out for c in self.calls if not c.cached)

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.calls if not c.cached)

    @property
    def latency_s(self) -> float:
        return self.ended - self.started

    @property
    def truncated(self) -> bool:
        return any(c.finish_reason == "length" for c in self.calls)


@dataclass
class Outcome:
    """The evaluation of a run: pass/fail, a score in [0, 1], and for a failure its class and a
    message that tells failures apart (`expected 18, got 16`, the failing assert, ...)."""

    passed: bool
    score: float
    failure_class: str | None = None
    message: str = ""
    expected: str = ""
    observed: str = ""
    evaluator_version: str = ""  # cegraph.evaluators.EVALUATOR_VERSION of the grader


@dataclass
class Trace:
    run_id: str
    workflow: str
    version_id: str
    task_id: str
    spans: list[Span]
    output: str | None
    started: float
    ended: float
    outcome: Outcome | None = None

    @property
    def error_span(self) -> Span | None:
        """The first node that failed, if any."""
        return next((s for s in self.spans if s.error), None)

    @property
    def tokens(self) -> int:
        return sum(s.tokens_in + s.tokens_out for s in self.spans)

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.spans)

    @property
    def llm_calls(self) -> int:
        return sum(1 for s in self.spans for c in s.calls if not c.cached)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
