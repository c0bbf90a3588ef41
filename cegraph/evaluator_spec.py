"""How re-runs of a registered workflow's logged inputs are graded.

Verification re-runs a candidate on inputs taken from production logs, so each registered
workflow names its grader (`EvaluatorSpec`, stored in the registry): against the reference
the log carried (`numeric`, `exact`, `f1`, `code` tests: the graders of
`cegraph.evaluators`), or, where logs carry none, an LLM `judge` with a rubric
(`cegraph.judge`). Logged runs that cannot be graded under the spec (no input, no reference
for a reference grader) are excluded before verification and counted by reason
(`gradeable`); re-runs the judge could not grade are counted by `ungradeable`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from cegraph.evaluators import evaluate
from cegraph.judge import UNGRADEABLE, Judge
from cegraph.llm import LLM
from cegraph.task import Kind, Task
from cegraph.trace import INFRASTRUCTURE, Outcome, Trace

EvaluatorKind = Literal["numeric", "exact", "f1", "code", "judge"]
#: The grader of `cegraph.evaluators.GRADERS` behind each reference kind, and the task kind
#: its answers are read as.
_GRADER: dict[str, tuple[str, Kind]] = {"numeric": ("number", "math"), "exact": ("exact", "qa"),
                                        "f1": ("qa", "qa"), "code": ("code", "code")}


class EvaluatorSpec(BaseModel):
    """A workflow's grader for re-runs: a reference kind, or `judge` with a `rubric` (and
    optionally its own `judge_model`; default: the night's model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EvaluatorKind = "numeric"
    rubric: str | None = None
    judge_model: str | None = None

    @model_validator(mode="after")
    def _rubric_iff_judge(self) -> EvaluatorSpec:
        if self.kind == "judge" and not (self.rubric or "").strip():
            raise ValueError("the judge evaluator needs a rubric: give --rubric TEXT")
        if self.kind != "judge" and (self.rubric or self.judge_model):
            raise ValueError(f"--rubric and a judge model go with --evaluator judge, not "
                             f"{self.kind}")
        return self

    @property
    def needs_reference(self) -> bool:
        return self.kind != "judge"

    @property
    def task_kind(self) -> Kind:
        return _GRADER[self.kind][1] if self.kind in _GRADER else "qa"


@dataclass(frozen=True)
class LoggedRun:
    """A logged production run as verification re-runs it: its input, the reference the log
    carried (None: none), and the logged verdict (None: not evaluated)."""

    run_id: str
    task_id: str
    input: str | None
    reference: str | None = None
    passed: bool | None = None
    public_tests: tuple[str, ...] = ()
    metadata: dict[str, object] = field(default_factory=dict)


def gradeable(runs: Sequence[LoggedRun], spec: EvaluatorSpec
              ) -> tuple[list[Task], dict[str, int]]:
    """The runs that can be re-run and graded under `spec`, as tasks (one per task id, the
    first run's), and how many were excluded by reason: `no_input`, `no_reference` (a
    reference grader and a log without one), `duplicate_input` (another run of the same task
    id)."""
    tasks: list[Task] = []
    seen: set[str] = set()
    excluded: Counter[str] = Counter()
    for r in runs:
        if not (r.input or "").strip():
            excluded["no_input"] += 1
        elif spec.needs_reference and not (r.reference or "").strip():
            excluded["no_reference"] += 1
        elif r.task_id in seen:
            excluded["duplicate_input"] += 1
        else:
            seen.add(r.task_id)
            tasks.append(Task(r.task_id, "production", r.input or "", r.reference or "",
                              r.public_tests, {**r.metadata, "kind": spec.task_kind}))
    return tasks, dict(excluded)


@dataclass
class Grader:
    """The `evaluate(task, trace)` function of a spec (`grader(spec, llm)`); `judge` holds
    the judge's records when the spec is a judge."""

    spec: EvaluatorSpec
    judge: Judge | None = None

    def __call__(self, task: Task, trace: Trace) -> Outcome:
        if self.judge is not None:
            return evaluate(task, trace, grader="judge", grade=self.judge)
        return evaluate(task, trace, grader=_GRADER[self.spec.kind][0])


def grader(spec: EvaluatorSpec, llm: LLM | None = None) -> Grader:
    """The grader of `spec`; a judge needs `llm` (the judge model's, sharing the night's call
    store and meter)."""
    if spec.kind != "judge":
        return Grader(spec)
    if llm is None:
        raise ValueError("the judge evaluator needs an LLM")
    return Grader(spec, Judge(spec.rubric or "", llm))


def ungradeable(traces: Sequence[Trace]) -> int:
    """Re-runs whose output the grader could not grade (left out of verification)."""
    return sum(1 for t in traces if t.outcome is not None
               and t.outcome.failure_class == INFRASTRUCTURE
               and t.outcome.message.startswith(f"{UNGRADEABLE}:"))
