"""The gate's holdout: inputs of a night that its refinement never touches.

Drawn before any proposal, by a seeded hash of each task id (so the same input falls on the
same side every time it is logged), separately among failing and passing inputs so both
kinds reach the gate: of each, the `share` whose hashes rank lowest. Inputs an earlier
refinement of the workflow ran (`touched`: shown to its proposer, or judging its candidates)
are never held out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence


def rank(task_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x1f{task_id}".encode()).hexdigest()


def draw(task_ids: Sequence[str], *, failing: Collection[str], touched: Collection[str],
         share: float, seed: int) -> list[str]:
    """The held-out task ids, sorted."""
    fresh = [t for t in task_ids if t not in touched]
    out: list[str] = []
    for stratum in ([t for t in fresh if t in failing], [t for t in fresh if t not in failing]):
        out += sorted(stratum, key=lambda t: rank(t, seed))[:round(share * len(stratum))]
    return sorted(out)
