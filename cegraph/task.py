"""The unit of work a workflow runs on: one benchmark problem or one production input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["math", "code", "qa"]

#: Which answer format each dataset expects; a custom dataset names its kind in metadata.
DATASET_KIND: dict[str, Kind] = {
    "gsm8k": "math",
    "math": "math",
    "humaneval": "code",
    "mbpp": "code",
    "hotpotqa": "qa",
    "drop": "qa",
}


@dataclass(frozen=True)
class Task:
    """One input to a workflow together with what a correct run must produce.

    `reference` is the gold answer (math, QA) or the hidden grading test code (code tasks);
    `public_tests` are asserts a `Test` operator may run (never the grading tests).
    """

    id: str
    dataset: str
    input: str
    reference: str
    public_tests: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        return self.metadata.get("kind") or DATASET_KIND.get(self.dataset, "qa")

    @property
    def entry_point(self) -> str | None:
        return self.metadata.get("entry_point")
