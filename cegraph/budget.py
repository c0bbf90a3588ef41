"""The hard budget of one job: calls, tokens and dollars, reserved before a call, settled after.

A call reserves its worst case (estimated prompt tokens + `max_tokens`, and that priced when
`max_cost` is set) under a lock before it even waits for a slot, so calls queued together
can never promise more than the budget holds; after the call the reservation is replaced by
the real usage, or released when the call fails. The meter is shared safely by several
`LLM` objects, threads and event loops: a job creates one and passes it to every attempt,
so a retry does not start with a fresh budget.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any


class BudgetExceeded(RuntimeError):
    """Raised before a call whose worst case would pass the job's hard budget (fails closed)."""


class UnpricedModel(BudgetExceeded):
    """`max_cost` is set but the model has no known price: the budget cannot be enforced."""


@dataclass(frozen=True)
class Price:
    """Dollars per prompt token and per completion token."""

    input_per_token: float
    output_per_token: float

    def of(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in * self.input_per_token + tokens_out * self.output_per_token


@dataclass(frozen=True)
class Reservation:
    """What one call in flight may still spend at most."""

    tokens: int
    cost: float


@dataclass
class Meter:
    """Tokens, cost and calls of one job; `max_calls`/`max_tokens`/`max_cost` make a hard
    budget."""

    max_tokens: int | None = None
    max_cost: float | None = None
    max_calls: int | None = None
    calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    charged_tokens_out: int = 0  # of tokens_out, those of charged replays (not generated now)
    reserved_tokens: int = 0  # worst case of the calls in flight
    reserved_cost: float = 0.0
    reserved_calls: int = 0
    # a threading lock, not an asyncio one: the meter outlives event loops and crosses threads
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reserve(self, model: str, prompt_tokens: int, max_tokens: int,
                price: Price | None) -> Reservation:
        """Claim the worst case of one call, or raise `BudgetExceeded` without claiming."""
        self.require_price(model, price)
        worst = Reservation(prompt_tokens + max_tokens,
                            price.of(prompt_tokens, max_tokens) if price else 0.0)
        with self._lock:
            self._check_calls()
            used = self.tokens_in + self.tokens_out + self.reserved_tokens
            if self.max_tokens is not None and used + worst.tokens > self.max_tokens:
                raise BudgetExceeded(
                    f"token budget of {self.max_tokens} would be passed: {used} spent or "
                    f"reserved, this call may need {worst.tokens}; raise max_tokens to go on")
            spent = self.cost + self.reserved_cost
            if self.max_cost is not None and spent + worst.cost > self.max_cost:
                raise BudgetExceeded(
                    f"cost budget of ${self.max_cost:.4f} would be passed: ${spent:.4f} spent "
                    f"or reserved, this call may need ${worst.cost:.4f}; raise max_cost to go on")
            self.reserved_tokens += worst.tokens
            self.reserved_cost += worst.cost
            self.reserved_calls += 1
        return worst

    def require_price(self, model: str, price: Price | None) -> None:
        """A cost budget needs every model priced: refuse an unknown price (fail closed)."""
        if self.max_cost is not None and price is None:
            raise UnpricedModel(
                f"model {model!r} has no known price, so max_cost cannot be enforced; pass "
                "LLM(..., input_cost_per_token=..., output_cost_per_token=...) or drop max_cost")

    def settle(self, reservation: Reservation, tokens_in: int, tokens_out: int,
               cost: float) -> None:
        """Replace a call's reservation by what it really spent."""
        with self._lock:
            self._unreserve(reservation)
            self.calls += 1
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self.cost += cost

    def release(self, reservation: Reservation) -> None:
        """Give back the reservation of a call that failed."""
        with self._lock:
            self._unreserve(reservation)

    def count_cached(self) -> None:
        """A call answered from the store or by an identical call in flight: free."""
        with self._lock:
            self.cached_calls += 1

    def _unreserve(self, reservation: Reservation) -> None:
        self.reserved_tokens -= reservation.tokens
        self.reserved_cost -= reservation.cost
        self.reserved_calls -= 1

    def _check_calls(self) -> None:
        if self.max_calls is not None and self.calls + self.reserved_calls >= self.max_calls:
            raise BudgetExceeded(
                f"call budget of {self.max_calls} would be passed: {self.calls} made, "
                f"{self.reserved_calls} in flight; raise max_calls to go on")

    def charge(self, calls: int, tokens_in: int, tokens_out: int, cost: float, *,
               generated: bool = False, within: bool = False) -> None:
        """Count spend this meter did not reserve: a resumed job's earlier attempt, or
        (`generated`) calls made now by another process for this job (a fanned-out chunk).
        `within`: refuse (`BudgetExceeded`) a call the call budget has no room for, as
        `reserve` would have, so a resumed job replaying its calls stops where the
        uninterrupted one did instead of passing its budget."""
        with self._lock:
            if within:
                self._check_calls()
            self.calls += calls
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self.charged_tokens_out += 0 if generated else tokens_out
            self.cost += cost

    @property
    def generated_tokens_out(self) -> int:
        """Tokens this meter's calls generated, charged replays left out (for a tok/s)."""
        return self.tokens_out - self.charged_tokens_out

    def remaining_calls(self) -> int | None:
        """Calls the budget still allows (None: no call limit)."""
        with self._lock:
            if self.max_calls is None:
                return None
            return max(0, self.max_calls - self.calls - self.reserved_calls)

    def remaining_tokens(self) -> int | None:
        with self._lock:
            if self.max_tokens is None:
                return None
            used = self.tokens_in + self.tokens_out + self.reserved_tokens
            return max(0, self.max_tokens - used)

    def summary(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
