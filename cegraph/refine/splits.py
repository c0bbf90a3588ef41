"""Split discipline: the roles of inputs, fixed before any proposal.

A refinement's inputs are `shown` (a proposer may read them: failing examples, expected
answers, traces, demonstrations) or `verification` (they judge candidates and are never shown
to a proposer of that refinement). The gate's `holdout` (and a benchmark's test set) is taken
out by the caller before refinement starts (`dev_test`), so refinement never touches it.

Every split is by a seeded hash of the task id, so the same data and seed always give the
same parts, and growing one part never moves an input into another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cegraph.task import Task

Role = Literal["shown", "verification", "holdout"]


def _rank(task: Task, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{task.dataset}:{task.id}".encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    dev: tuple[Task, ...]
    test: tuple[Task, ...]


def dev_test(tasks: Sequence[Task], *, dev: int, test: int, seed: int = 0) -> Split:
    """Disjoint dev and test parts: test from one end of the seeded order, dev from the other,
    so growing one never moves an input into the other."""
    order = sorted(tasks, key=lambda t: _rank(t, seed))
    if dev + test > len(order):
        raise ValueError(f"--dev {dev} + --test {test} exceed the {len(order)} inputs of the "
                         "dataset; lower them")
    return Split(tuple(order[:dev]), tuple(order[len(order) - test:]) if test else ())


def assign_roles(tasks: Sequence[Task], verification: float, *, seed: int = 0
                 ) -> dict[str, Role]:
    """Task id -> `shown` or `verification`: `verification` (a share) of `tasks`, by a seeded
    hash of the task id (at least one of each role when there are two tasks or more)."""
    order = sorted(tasks, key=lambda t: _rank(t, seed + 1))
    k = round(len(order) * verification)
    if len(order) >= 2:
        k = min(max(k, 1), len(order) - 1)
    return {t.id: "verification" if i < k else "shown" for i, t in enumerate(order)}
