"""The one place LLM calls happen: litellm routing, retries, metering, and the call store.

Every call is keyed by a hash of (model, messages, params, sample index). With a call store,
a call whose key was seen before is answered from the store and costs nothing, which is what
makes replay exact (llama.cpp at temperature 0 is not perfectly repeatable) and
re-verification of an edited workflow cheap: unchanged upstream nodes hit the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches it otherwise

import litellm  # noqa: E402

litellm.suppress_debug_info = True
litellm.telemetry = False
litellm.drop_params = True  # providers without `seed` etc. ignore it instead of failing

# Errors worth retrying: the provider or the network may answer next time.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    litellm.RateLimitError, litellm.APIConnectionError, litellm.Timeout,
    litellm.ServiceUnavailableError, litellm.InternalServerError,
)


@dataclass(frozen=True)
class Completion:
    """One answered LLM call: the request, its answer, and what it cost. The call store keeps
    these; a replayed one comes back with `cached=True` (and costs nothing this time)."""

    key: str
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    sample: int
    text: str
    tokens_in: int
    tokens_out: int
    cost: float
    latency_s: float
    finish_reason: str
    created_at: float = field(default_factory=time.time)
    cached: bool = False


class CallStore(Protocol):
    """Where answered calls are kept for replay. Contract: `get` returns None for an
    unknown key and never raises for a miss; `put` of an existing key keeps the first."""

    def get(self, key: str) -> Completion | None: ...

    def put(self, record: Completion) -> None: ...


class MemoryCallStore:
    """A call store for one process (tests, notebooks); `storage.CallStore` persists."""

    def __init__(self) -> None:
        self.records: dict[str, Completion] = {}

    def get(self, key: str) -> Completion | None:
        return self.records.get(key)

    def put(self, record: Completion) -> None:
        self.records.setdefault(record.key, record)


class BudgetExceeded(RuntimeError):
    """Raised before a call that would pass the run's hard budget (fails closed)."""


@dataclass
class Meter:
    """Tokens, cost and calls of one run; `max_tokens`/`max_cost` make a hard budget."""

    max_tokens: int | None = None
    max_cost: float | None = None
    calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    def check(self) -> None:
        if self.max_tokens is not None and self.tokens_in + self.tokens_out >= self.max_tokens:
            raise BudgetExceeded(f"token budget of {self.max_tokens} spent")
        if self.max_cost is not None and self.cost >= self.max_cost:
            raise BudgetExceeded(f"cost budget of ${self.max_cost:.4f} spent")

    def add(self, c: Completion) -> None:
        if c.cached:
            self.cached_calls += 1
            return
        self.calls += 1
        self.tokens_in += c.tokens_in
        self.tokens_out += c.tokens_out
        self.cost += c.cost

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def call_key(model: str, messages: list[dict[str, str]], params: dict[str, Any],
             sample: int) -> str:
    payload = json.dumps([model, messages, params, sample], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def resolve_model(name: str) -> str:
    """A short local-model name (`qwen2.5-coder-1.5b`) -> its litellm string; others as given."""
    from cegraph.local_model import LOCAL_PROVIDER, MODELS, register

    if name in MODELS:
        register()
        return f"{LOCAL_PROVIDER}/{name}"
    if name.startswith(f"{LOCAL_PROVIDER}/"):
        register()
    return name


class LLM:
    """Makes LLM calls through litellm for one run.

    `model` is a litellm model string or a local model name; `concurrency` bounds calls in
    flight; `extra` is passed to every call (e.g. `api_base`, `mock_response` in tests).
    """

    def __init__(self, model: str, *, store: CallStore | None = None, meter: Meter | None = None,
                 max_retries: int = 3, concurrency: int = 4, timeout_s: float = 600.0,
                 **extra: Any) -> None:
        self.model = resolve_model(model)
        self.store: CallStore = store if store is not None else MemoryCallStore()
        self.meter = meter or Meter()
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.extra = extra
        self._slots = asyncio.Semaphore(concurrency)

    async def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
                       max_tokens: int = 512, sample: int = 0, model: str | None = None
                       ) -> Completion:
        """One chat completion; replayed from the store when this exact call was made before."""
        model = resolve_model(model) if model else self.model
        params = {"temperature": temperature, "max_tokens": max_tokens}
        key = call_key(model, messages, params, sample)
        stored = self.store.get(key)
        if stored is not None:
            done = replace(stored, cached=True)
            self.meter.add(done)
            return done
        self.meter.check()
        async with self._slots:
            started = time.perf_counter()
            response = await self._call_with_retries(model, messages, params, sample)
            latency = time.perf_counter() - started
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        try:
            cost = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # unknown model price (local, custom): free
            cost = 0.0
        text = choice.message.content or ""
        done = Completion(key, model, messages, params, sample, text, tokens_in, tokens_out,
                          cost, latency, str(choice.finish_reason or "stop"))
        self.store.put(done)
        self.meter.add(done)
        return done

    async def _call_with_retries(self, model: str, messages: list[dict[str, str]],
                                 params: dict[str, Any], sample: int) -> Any:
        extra = dict(self.extra)
        if sample and params["temperature"] > 0:
            extra.setdefault("seed", sample)  # distinct samples where the provider has seeds
        for attempt in range(self.max_retries + 1):
            try:
                return await litellm.acompletion(model=model, messages=messages,
                                                 timeout=self.timeout_s, **params, **extra)
            except TRANSIENT_ERRORS:
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (1 + random.random()))
        raise AssertionError("unreachable")
