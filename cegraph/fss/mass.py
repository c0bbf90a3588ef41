"""Expected Failure Mass: M(W) = integral of the failure density of workflow W over the
Failure Signature Space, estimated from the pool as failures / runs.

The mass decomposes exactly into the modes plus the noise (failures in no dense mode):
    M = sum_k |mode_k| / runs  +  |noise| / runs.
Noise is kept and counted: rare, non-clustering failures never vanish from the objective.
Each share carries a Wilson score interval (good at small counts and near 0 or 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class MassEstimate:
    failures: int
    runs: int
    mass: float
    lo: float
    hi: float


def wilson(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(failures: int, runs: int) -> MassEstimate:
    if failures > runs:
        raise ValueError(f"{failures} failures cannot come from {runs} runs")
    lo, hi = wilson(failures, runs)
    return MassEstimate(failures, runs, failures / runs if runs else 0.0, lo, hi)


@dataclass(frozen=True)
class FailureMass:
    total: MassEstimate
    per_mode: dict[str, MassEstimate]
    noise: MassEstimate


def expected_failure_mass(runs: int, mode_sizes: dict[str, int], noise: int) -> FailureMass:
    """The mass of a version on `runs` runs, split into modes (by id) and noise."""
    total = sum(mode_sizes.values()) + noise
    return FailureMass(estimate(total, runs),
                       {mid: estimate(size, runs) for mid, size in mode_sizes.items()},
                       estimate(noise, runs))
