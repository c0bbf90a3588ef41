"""A night's spend, projected from history before it starts, against its one hard budget.

The least a night can do is evaluate the active version on its inputs, verify one one-node
edit, and run the gate's holdout on the active version and a candidate; the tokens and
dollars of that many calls are projected at the per-call means this model's stored calls
show (none stored: `DEFAULT_TOKENS_PER_CALL`, free). A night whose least spend passes any
limit of its budget does not start (fails closed), and the budget left after the gate's
share is what the refinement loop may spend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cegraph.refine.loop import Budget

DEFAULT_TOKENS_PER_CALL = 1000


@dataclass(frozen=True)
class Projection:
    calls_per_run: int  # the most LLM calls one run of the active version makes
    refine_calls: int  # the least the refinement needs
    gate_calls: int  # the gate's runs: active and candidate on the holdout
    tokens_per_call: float
    cost_per_call: float
    history_calls: int  # stored calls the means come from

    @property
    def calls(self) -> int:
        return self.refine_calls + self.gate_calls

    @property
    def tokens(self) -> int:
        return int(self.calls * self.tokens_per_call)

    @property
    def dollars(self) -> float:
        return self.calls * self.cost_per_call

    def refusal(self, budget: Budget) -> str | None:
        """Why `budget` cannot pay the least this night needs (None: it can)."""
        for name, need, limit in (("calls", self.calls, budget.calls),
                                  ("tokens", self.tokens, budget.tokens),
                                  ("dollars", self.dollars, budget.dollars)):
            if limit is not None and need > limit:
                return (f"the night needs at least {need:g} {name} (projected from "
                        f"{self.history_calls} stored calls), its budget allows {limit:g}; "
                        f"raise --budget-{name}")
        return None

    def refine_budget(self, budget: Budget) -> Budget:
        """The budget left to the refinement once the gate's share is set aside."""
        return Budget(
            None if budget.calls is None else budget.calls - self.gate_calls,
            None if budget.tokens is None else budget.tokens - int(
                self.gate_calls * self.tokens_per_call),
            None if budget.dollars is None else budget.dollars - self.gate_calls
            * self.cost_per_call)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calls": self.calls, "tokens": self.tokens,
                "dollars": self.dollars}


def project(*, calls_per_run: int, inputs: int, verification: int, gate_inputs: int,
            history: tuple[int, float, float] = (0, 0.0, 0.0)) -> Projection:
    """`verification`: the fewest calls one verification takes (`loop.least_verification`);
    `history`: (stored calls, their mean tokens, their mean cost) for the night's model."""
    n, tokens, cost = history
    return Projection(calls_per_run, calls_per_run * inputs + verification,
                      2 * calls_per_run * gate_inputs,
                      tokens if n else DEFAULT_TOKENS_PER_CALL, cost if n else 0.0, n)
