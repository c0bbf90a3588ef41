"""One cost rule for the refinement loop and the nightly gate.

A candidate's cost per run (LLM calls, tokens, dollars where priced, model latency) is
compared with the base's on the same inputs, each stratum of a verification weighted by its
share of the population (`CostPerRun.weighted`); the bounds are set once (`CostBounds`,
defaults here, overridable in config) and both the loop's verdict and the gate apply the
same `breach`. Replayed calls count at what they cost when first made: a re-run answered
from the call store is not cheaper or faster than the version it is compared with.

Dollars of a local model are 0 on both sides; a ratio of two zeros is 1 (no change), a
priced candidate against a free base is unbounded, so a free bound is never vacuous for
calls and tokens, which every run has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from cegraph.trace import Trace


@dataclass(frozen=True)
class CostBounds:
    """The most a candidate may cost per run, as a ratio to the base's (None: unbounded)."""

    max_calls_ratio: float | None = 1.5
    max_tokens_ratio: float | None = 1.5
    max_dollars_ratio: float | None = 1.5
    max_latency_ratio: float | None = 2.0
    # model latency per run below this is scheduling noise (a replayed or scripted call), not
    # a cost: both sides count at least this much before their ratio is taken
    latency_floor_s: float = 0.05
    # the loop picks the accepted edit with the best mass drop per extra token; extra tokens
    # below this share of the base's count as this share (noise, not a saving to rank by)
    free_tokens_ratio: float = 0.05


@dataclass(frozen=True)
class CostPerRun:
    calls: float = 0.0
    tokens: float = 0.0
    dollars: float = 0.0
    latency_s: float = 0.0

    @classmethod
    def of(cls, traces: Sequence[Trace]) -> CostPerRun:
        """Mean cost of `traces`, replayed calls counted at their first cost."""
        calls = [c for t in traces for s in t.spans for c in s.calls]
        n = max(1, len(traces))
        return cls(calls=len(calls) / n,
                   tokens=sum(c.tokens_in + c.tokens_out for c in calls) / n,
                   dollars=sum(c.cost for c in calls) / n,
                   latency_s=sum(c.latency_s for c in calls) / n)

    @classmethod
    def weighted(cls, traces: Sequence[Trace], group: Callable[[Trace], str],
                 share: Mapping[str, float]) -> CostPerRun:
        """Mean cost per run of the population `traces` were drawn from by group: each group's
        mean weighted by its `share` of the population (groups without a trace drop out). A
        verification samples failures far above their share, so an edit whose cost depends
        on the input (an ensemble paid on disagreement) would look as costly everywhere as on
        failures."""
        groups: dict[str, list[Trace]] = {}
        for t in traces:
            groups.setdefault(group(t), []).append(t)
        weights = {g: share.get(g, 0.0) for g in groups}
        total = sum(weights.values())
        if total <= 0:
            return cls.of(traces)
        means = {g: cls.of(ts) for g, ts in groups.items()}
        return cls(**{k: sum(weights[g] / total * getattr(m, k) for g, m in means.items())
                      for k in ("calls", "tokens", "dollars", "latency_s")})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ratio(candidate: float, base: float) -> float:
    if base > 0:
        return candidate / base
    return 1.0 if candidate <= 0 else math.inf


def ratios(candidate: CostPerRun, base: CostPerRun, latency_floor_s: float = 0.0
           ) -> dict[str, float]:
    """calls, tokens, dollars and latency_s of the candidate per run over the base's."""
    out = {k: ratio(getattr(candidate, k), getattr(base, k))
           for k in ("calls", "tokens", "dollars")}
    out["latency_s"] = ratio(max(candidate.latency_s, latency_floor_s),
                             max(base.latency_s, latency_floor_s))
    return out


def per_extra_token(drop: float, tokens_ratio: float, free: float = 0.05) -> float:
    """A candidate's mass drop per extra token, as a share of the base's tokens per run: an
    edit within `free` extra tokens (or cheaper than the base) counts as `free` extra."""
    return drop / max(tokens_ratio - 1.0, free)


_BOUND = {"calls": "max_calls_ratio", "tokens": "max_tokens_ratio",
          "dollars": "max_dollars_ratio", "latency_s": "max_latency_ratio"}


def breach(candidate: CostPerRun, base: CostPerRun, bounds: CostBounds) -> str | None:
    """Why the candidate costs too much per run (one line), or None when within bounds."""
    over = [f"{k} x{r:.2f} > x{limit:g}"
            for k, r in ratios(candidate, base, bounds.latency_floor_s).items()
            if (limit := getattr(bounds, _BOUND[k])) is not None and r > limit]
    return f"costs too much per run: {', '.join(over)}" if over else None
