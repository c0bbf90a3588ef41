"""The acceptance rule: accept an edit only on complete, paired, family-wise significant evidence.

One verification sample (see `verify.py`) gives, per candidate:
- the stratified estimate of the drop in failure mass with its interval (`estimator.py`);
  the lower bound must be above 0;
- fixes (the base failed, the candidate passes) and breaks (the base passed, the candidate
  fails) on that same sample: the discordant pairs of a paired design. Under "the edit does
  not help" each is a fix or a break with probability 1/2, so the exact one-sided sign test
  (McNemar's exact test) gives P(at least `fixed` fixes among `fixed + broken`);
- breaks among the sampled passes within `max_break_rate`; new failures that form no new
  dense mode; the measured cost per run within the shared bounds (`cost.py`).

Many candidates, one error budget: every candidate verified in a refinement is a test. Round
r spends alpha * 2^-r (so all rounds together never spend more than alpha, however many
there are: a greedy loop does not know its last round in advance), and within a round Holm's
step-down splits that among the round's candidates (uniformly more powerful than Bonferroni,
valid under any dependence, and independent of the order candidates were verified in). The
recorded adjusted p is Holm's adjusted p scaled to the whole budget, so it is compared with
alpha itself. A candidate whose evidence is incomplete (a budget stop, an outage) is
`undecided`, never accepted. Among accepted candidates (all within the cost bounds) the
best estimated drop per extra token wins (`cost.per_extra_token`): cost is part of the
objective, so a cheap edit that fixes most of a mode beats an ensemble that fixes a little
more at twice the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from cegraph.fss.failure import Failure
from cegraph.fss.modes import MATCH_DISTANCE, find_modes
from cegraph.fss.signature import SignatureBuilder
from cegraph.refine.cost import CostBounds, CostPerRun, breach, per_extra_token, ratios
from cegraph.refine.estimator import stratified_drop
from cegraph.refine.verify import Plan, Verification
from cegraph.trace import INFRASTRUCTURE, Trace

Decision = Literal["accepted", "rejected", "undecided"]


@dataclass(frozen=True)
class Verdict:
    """One candidate's verdict. Before the family correction (`AcceptanceRule.judge`) a
    candidate that met every other condition is `undecided` with reason "pending"; `decide`
    settles it on the adjusted p."""

    decision: Decision
    p_value: float  # the exact sign test on the sample's discordant pairs, raw
    fixed: int
    broken: int
    drop: float  # estimated drop in Expected Failure Mass (stratified, paired)
    break_rate: float  # breaks / passes sampled and run
    reason: str
    ci_low: float = 0.0
    ci_high: float = 0.0
    p_adjusted: float | None = None  # family-wise adjusted (None: not part of the family)
    cost_ratios: dict[str, float] = field(default_factory=dict)  # candidate / base per run
    pending: bool = False  # met every condition but significance: the family decides

    @property
    def accepted(self) -> bool:
        return self.decision == "accepted"


def round_alpha(alpha: float, round_no: int) -> float:
    """The share of the family-wise budget round `round_no` (1, 2, ...) may spend."""
    return alpha * 2.0 ** -max(1, round_no)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def decision_counts(verdicts: Sequence[Verdict]) -> str:
    """'1 accepted, 3 rejected, 1 undecided' (zero counts left out; '-' for none)."""
    counts = {d: sum(1 for v in verdicts if v.decision == d)
              for d in ("accepted", "rejected", "undecided")}
    return ", ".join(f"{n} {d}" for d, n in counts.items() if n) or "-"


def discordant(base: Sequence[Trace], cand: Sequence[Trace]) -> tuple[int, int]:
    """(fixed, broken) between two versions' runs of the same inputs (paired by task id;
    runs without a verdict on either side are left out)."""
    def verdicts(traces: Sequence[Trace]) -> dict[str, bool]:
        return {t.task_id: t.outcome.passed for t in traces if t.outcome is not None
                and t.outcome.failure_class != INFRASTRUCTURE}

    b, c = verdicts(base), verdicts(cand)
    both = b.keys() & c.keys()
    return (sum(1 for i in both if c[i] and not b[i]), sum(1 for i in both if b[i] and not c[i]))


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
    """Contract: `judge` is a function of one candidate's verification and its base (paired
    counts, estimate, cost, new failures); it never accepts (a candidate meeting every other
    condition comes back `pending`). `decide` settles a round's verdicts together (the family
    correction), returning them in the same order; `certain` says whether a pending verdict is
    accepted whatever the round's other candidates give (so early stop may compare against
    it); `choose` returns the index of the accepted verdict with the best estimated drop per
    extra token, or None. None of them makes an LLM call."""

    def judge(self, v: Verification, plan: Plan, base: Sequence[Trace], new_failures:
              Sequence[Failure] = ()) -> Verdict: ...

    def decide(self, verdicts: Sequence[Verdict], round_no: int) -> list[Verdict]: ...

    def certain(self, verdict: Verdict, candidates: int, round_no: int) -> bool: ...

    def choose(self, verdicts: Sequence[Verdict]) -> int | None: ...


@dataclass
class PairedRule:
    """The rule of the module doc."""

    alpha: float = 0.05
    max_break_rate: float = 0.1
    new_mode: NewModeCheck | None = None
    cost: CostBounds = field(default_factory=CostBounds)

    def judge(self, v: Verification, plan: Plan, base: Sequence[Trace], new_failures:
              Sequence[Failure] = ()) -> Verdict:
        """`base`: the base's traces of the units the candidate ran (its cost per run)."""
        fixed, broken = v.fixed, v.broken
        p = sign_test(fixed, broken)
        passes = v.counts["passes"]
        rate = passes.broken / passes.run if passes.run else 0.0
        est = stratified_drop(v.strata(plan), self.alpha)
        of = plan.stratum_of
        share = {s: float(n) for s, n in plan.population.items()}
        cand_cost, base_cost = (CostPerRun.weighted(ts, lambda t: of.get(t.task_id, ""), share)
                                for ts in (v.traces, base))
        cost = ratios(cand_cost, base_cost, self.cost.latency_floor_s)

        def verdict(decision: Decision, reason: str, pending: bool = False) -> Verdict:
            return Verdict(decision, p, fixed, broken, est.drop, rate, reason, est.low,
                           est.high, None, cost, pending)

        if v.stopped_early:
            return verdict("rejected", f"stopped early: {v.stop_reason}")
        if not v.complete:
            why = v.incomplete or f"{v.decided} of {v.planned} planned units decided"
            return verdict("undecided", f"incomplete evidence: {why}")
        if est.low <= 0:
            return verdict("rejected", f"the mass drop is not surely positive: {est.drop:.3f} "
                                       f"[{est.low:.3f}, {est.high:.3f}] ({fixed} fixed, "
                                       f"{broken} broken)")
        if rate > self.max_break_rate:
            return verdict("rejected", f"breaks {passes.broken}/{passes.run} passes "
                                       f"({rate:.0%} > {self.max_break_rate:.0%})")
        if why := breach(cand_cost, base_cost, self.cost):
            return verdict("rejected", why)
        if self.new_mode is not None and (why := self.new_mode(new_failures)):
            return verdict("rejected", why)
        return verdict("undecided", "pending the family-wise test", pending=True)

    def decide(self, verdicts: Sequence[Verdict], round_no: int) -> list[Verdict]:
        """Holm within the round at its spent share of alpha (module doc); every verdict of
        the round is in the family, whatever its other conditions gave."""
        spend = round_alpha(self.alpha, round_no)
        adjusted = [min(1.0, a * self.alpha / spend)
                    for a in holm([d.p_value for d in verdicts])]
        out = []
        for d, adj in zip(verdicts, adjusted, strict=True):
            d = replace(d, p_adjusted=adj)
            if d.pending:
                ok = adj <= self.alpha
                words = (f"{d.fixed} fixed vs {d.broken} broken, p={d.p_value:.4f} "
                         f"(adjusted {adj:.4f} {'<=' if ok else '>'} {self.alpha}), estimated "
                         f"mass drop {d.drop:.3f} [{d.ci_low:.3f}, {d.ci_high:.3f}], per run "
                         f"x{d.cost_ratios.get('calls', 1.0):.2f} calls, "
                         f"x{d.cost_ratios.get('tokens', 1.0):.2f} tokens of the base's")
                d = replace(d, decision="accepted" if ok else "rejected", pending=False,
                            reason=words if ok else f"not significant after correction: "
                                                    f"{words}")
            out.append(d)
        return out

    def certain(self, verdict: Verdict, candidates: int, round_no: int) -> bool:
        # Holm accepts a p-value under alpha_r / m whatever the other p-values are
        spend = round_alpha(self.alpha, round_no)
        return verdict.pending and verdict.p_value * max(1, candidates) <= spend

    def choose(self, verdicts: Sequence[Verdict]) -> int | None:
        ok = [i for i, d in enumerate(verdicts) if d.accepted]

        def worth(i: int) -> tuple[float, float, int]:
            d = verdicts[i]
            return (per_extra_token(d.drop, d.cost_ratios.get("tokens", 1.0),
                                    self.cost.free_tokens_ratio), d.drop, -i)

        return max(ok, key=worth) if ok else None
