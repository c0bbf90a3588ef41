"""The acceptance rule: accept an edit only if it fixes more than it breaks, with confidence.

Fixes (the base failed, the candidate passes) and breaks (the base passed, the candidate
fails) on the same inputs are the discordant pairs of a paired design; under "the edit does
not help" each is a fix or a break with probability 1/2, so the exact one-sided sign test
(McNemar's exact test) gives P(at least `fixed` fixes among `fixed + broken`). A candidate
is acceptable when that p-value is under `alpha`, its breaks on the held-aside regression
inputs stay under `max_break_rate`, and its new failures do not form a new dense mode; among
acceptable candidates the one with the largest estimated mass drop wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cegraph.fss.failure import Failure
from cegraph.fss.modes import MATCH_DISTANCE, find_modes
from cegraph.fss.signature import SignatureBuilder
from cegraph.refine.verify import Verification


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    p_value: float
    fixed: int
    broken: int
    drop: float  # estimated drop in Expected Failure Mass
    break_rate: float  # breaks / regression inputs run
    reason: str


def sign_test(fixed: int, broken: int) -> float:
    """Exact one-sided p-value of `fixed` successes in `fixed + broken` fair coin flips."""
    n = fixed + broken
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(fixed, n + 1)) / 2**n


class NewModeCheck(Protocol):
    """Whether a candidate's new failures form a dense mode the base did not have. Contract:
    returns a one-line reason when they do, else None; makes no LLM call."""

    def __call__(self, failures: Sequence[Failure]) -> str | None: ...


@dataclass
class DenseNewMode:
    """Embed the new failures; a dense mode among them (min_size within eps) whose centroid is
    farther than `distance` from every existing mode's centroid is a new mode."""

    builder: SignatureBuilder
    existing: Sequence[np.ndarray]
    eps: float = 0.30
    min_size: int = 3
    distance: float = MATCH_DISTANCE

    def __call__(self, failures: Sequence[Failure]) -> str | None:
        if len(failures) < self.min_size:
            return None
        found = find_modes(self.builder.build(failures), eps=self.eps, min_size=self.min_size)
        for mode in found.modes:
            near = min((float(np.linalg.norm(mode.centroid - c)) for c in self.existing),
                       default=math.inf)
            if near > self.distance:
                return (f"its {mode.size} new failures form a new dense mode ({mode.label}) "
                        f"at distance {near:.2f} from every known mode")
        return None


class AcceptanceRule(Protocol):
    """Contract: `judge` is a function of one verification (paired counts, drop, new
    failures) only; `choose` returns the index of the accepted verdict with the largest
    estimated drop, or None when none is accepted. Neither makes an LLM call."""

    def judge(self, v: Verification, new_failures: Sequence[Failure] = ()) -> Verdict: ...

    def choose(self, verdicts: Sequence[Verdict]) -> int | None: ...


@dataclass
class PairedSignRule:
    alpha: float = 0.05
    max_break_rate: float = 0.1
    new_mode: NewModeCheck | None = None

    def judge(self, v: Verification, new_failures: Sequence[Failure] = ()) -> Verdict:
        fixed, broken = v.fixed, v.broken
        p = sign_test(fixed, broken)
        reg = v.counts["regression"]
        rate = reg.broken / reg.run if reg.run else 0.0

        def verdict(ok: bool, reason: str) -> Verdict:
            return Verdict(ok, p, fixed, broken, v.drop, rate, reason)

        if v.stopped_early:
            return verdict(False, f"stopped early: {v.stop_reason}")
        if v.drop <= 0:
            return verdict(False, f"no estimated mass drop ({fixed} fixed, {broken} broken)")
        if p >= self.alpha:
            return verdict(False, f"not significant: {fixed} fixed vs {broken} broken, "
                                  f"p={p:.3f} >= {self.alpha}")
        if rate > self.max_break_rate:
            return verdict(False, f"breaks {reg.broken}/{reg.run} regression inputs "
                                  f"({rate:.0%} > {self.max_break_rate:.0%})")
        if self.new_mode is not None:
            why = self.new_mode(new_failures)
            if why:
                return verdict(False, why)
        return verdict(True, f"{fixed} fixed vs {broken} broken, p={p:.4f}, estimated mass "
                             f"drop {v.drop:.3f}")

    def choose(self, verdicts: Sequence[Verdict]) -> int | None:
        ok = [i for i, d in enumerate(verdicts) if d.accepted]
        return max(ok, key=lambda i: (verdicts[i].drop, -i)) if ok else None
