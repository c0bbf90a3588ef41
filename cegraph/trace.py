"""What one workflow run leaves behind: a span per node with its LLM calls, and the outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cegraph.llm import Completion

#: The outcome of a run whose infrastructure failed (see cegraph.infrastructure).
INFRASTRUCTURE = "infrastructure"


@dataclass
class Span:
    """One node's execution. `error` is set when the node failed; `skipped` when its `when`
    condition was false or an upstream node it needs failed.

    `sources` says where each input actually came from (`port -> "node.port"`, the chosen
    entry of a fallback chain); `missing` names what a skipped node waited for in vain (the
    refs of an input none of whose sources ran, or its condition's ref)."""

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
    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
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
    message that tells failures apart (`expected 18, got 16`, the failing assert, ...).

    `grader` names the rule that judged it (see `cegraph.answers`), `evaluator_version` the
    grading code's version; `score_all` is a code task's score on its full test suite (the
    verdict is on the hidden asserts only), else equal to `score`."""

    passed: bool
    score: float
    failure_class: str | None = None
    message: str = ""
    expected: str = ""
    observed: str = ""
    score_all: float | None = None
    grader: str = ""
    evaluator_version: str = ""

    def __post_init__(self) -> None:
        if self.score_all is None:
            self.score_all = self.score


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
    output_ref: str = ""  # "node.port" the output was read from

    def data_path(self) -> list[tuple[Span, frozenset[str]]]:
        """The spans the output actually came through, in execution order, each with the ports
        of it that were read on the way: walked back from the output along `sources`. With no
        output, the path leads through skipped nodes (`missing`) to the ones that raised."""
        by_id = {s.node_id: s for s in self.spans}
        ports: dict[str, set[str]] = {}
        todo = [self.output_ref] if self.output_ref else []
        while todo:
            node, _, port = todo.pop().partition(".")
            span = by_id.get(node)
            if span is None:  # the workflow input
                continue
            first_visit = node not in ports
            ports.setdefault(node, set()).add(port)
            if first_visit:
                todo.extend(span.missing if span.skipped else span.sources.values())
        return [(s, frozenset(ports[s.node_id])) for s in self.spans if s.node_id in ports]

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
