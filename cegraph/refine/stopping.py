"""When the loop stops: the mass has not fallen for `patience` rounds, the target mass is
reached, or there are no rounds left. (The budget stop is separate: every step's cost is
projected before it starts, see `loop.py`.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StopRule(Protocol):
    """Contract: a pure function of the masses after each completed round (index 0 is the
    seed's), returning a one-line reason to stop or None to go on."""

    def reason(self, masses: Sequence[float]) -> str | None: ...


@dataclass(frozen=True)
class Convergence:
    patience: int = 2
    target_mass: float = 0.0
    max_rounds: int = 8

    def reason(self, masses: Sequence[float]) -> str | None:
        if masses and masses[-1] <= self.target_mass:
            return f"target mass {self.target_mass:.3f} reached ({masses[-1]:.3f})"
        rounds = len(masses) - 1
        if rounds >= self.max_rounds:
            return f"{self.max_rounds} rounds done"
        if rounds >= self.patience:
            best_before = min(masses[: len(masses) - self.patience])
            if min(masses[len(masses) - self.patience:]) >= best_before:
                return f"mass has not fallen for {self.patience} rounds"
        return None
