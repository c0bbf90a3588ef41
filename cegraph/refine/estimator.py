"""The one paired estimator of a candidate's change in failure mass, with its interval.

The verification role is a population of N inputs with the base's verdict on each. It is cut
into strata with known sizes N_h: the target mode's members, the other failures, the passes.
Each stratum is sampled (the target usually in full) and every sampled unit is run on the
candidate, so each unit gives a paired difference d = base failed - candidate failed. Within
a stratum d has one sign: a base failure can only be fixed (d = 1), a base pass only broken
(d = -1); so each stratum is a proportion p_h (fixes or breaks among its n_h units).

    drop = sum_h W_h * sign_h * p_h,   W_h = N_h / N   (known weights: the strata's shares)

is the stratified estimate of (base mass - candidate mass) on the verification population.
Its variance sum_h W_h^2 * q_h (1 - q_h) / n_h uses q_h = (x_h + 1) / (n_h + 2), the
Agresti-Coull "add a success and a failure" proportion, because a stratum with 0 breaks in 8
passes would otherwise claim zero variance: the interval must stay honest about what a small
sample cannot rule out. No finite-population correction: the verdict is about the inputs the
workflow will see next, of which the verification role is a sample, not about those N inputs
themselves (a census of the target stratum would otherwise make its variance 0). The
interval is the normal one, drop +- z * se at level 1 - alpha (two-sided); acceptance needs
its lower bound above 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Stratum:
    """One stratum of the verification population: its size, the units run, and the
    discordant ones (fixes of base failures, or breaks of base passes)."""

    population: int  # N_h
    run: int  # n_h: units with a verdict on both sides
    changed: int  # x_h: fixes (failure strata) or breaks (the passes stratum)
    passes: bool = False  # the base passed these: a change is a break


@dataclass(frozen=True)
class Estimate:
    drop: float  # estimated base mass - candidate mass (> 0: the candidate fails less)
    low: float
    high: float
    se: float


def stratified_drop(strata: Mapping[str, Stratum], alpha: float = 0.05) -> Estimate:
    """The stratified paired estimate of the drop in failure mass and its (1 - alpha) interval
    (see module doc). A non-empty stratum with no unit run contributes its worst case to the
    lower bound and its best case to the upper one."""
    total = sum(s.population for s in strata.values())
    if total == 0:
        return Estimate(0.0, 0.0, 0.0, 0.0)
    drop = var = unknown_low = unknown_high = 0.0
    for s in strata.values():
        w = s.population / total
        sign = -1.0 if s.passes else 1.0
        if s.run == 0:
            if s.population:
                unknown_low += min(0.0, sign * w)
                unknown_high += max(0.0, sign * w)
            continue
        drop += w * sign * s.changed / s.run
        q = (s.changed + 1) / (s.run + 2)
        var += w * w * q * (1 - q) / s.run
    se = math.sqrt(var)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return Estimate(drop, max(-1.0, drop - z * se + unknown_low),
                    min(1.0, drop + z * se + unknown_high), se)
