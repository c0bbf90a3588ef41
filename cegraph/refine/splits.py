"""Split discipline: the loop optimizes on a dev set, acceptance judges breaks on held-aside
regression inputs, and reports score a test set the loop never saw.

Splits are by a seeded hash of the task id, so the same data and seed always give the same
parts, and dev and test never overlap whatever their sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cegraph.task import Task


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


def hold_aside(tasks: Sequence[Task], fraction: float, *, seed: int = 0
               ) -> tuple[list[Task], list[Task]]:
    """(loop inputs, held-aside regression inputs): `fraction` of `tasks` held aside."""
    order = sorted(tasks, key=lambda t: _rank(t, seed + 1))
    k = round(len(order) * fraction)
    held = {t.id for t in order[:k]}
    return [t for t in tasks if t.id not in held], [t for t in tasks if t.id in held]
