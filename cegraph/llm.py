"""The one place LLM calls happen: litellm routing, retries, the budget, and the call store.

Every call is keyed by a hash of the whole normalized request (model, messages, every
parameter that can change the answer, sample index) and a fingerprint of the model behind
the name (a local model's sha256; else provider and api_base). With a call store, a call
whose key was seen before is answered from the store and costs nothing, which is what makes
replay exact (llama.cpp at temperature 0 is not perfectly repeatable) and re-verification of
an edited workflow cheap: unchanged upstream nodes hit the store. Identical calls in flight
at once share one provider call.

Importing this module is cheap: litellm (seconds to import, process-wide flags) is imported
and configured only when an `LLM` is built or `TRANSIENT_ERRORS` is first read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Protocol

from cegraph.budget import BudgetExceeded, Meter, Price, Reservation, UnpricedModel
from cegraph.engine import default_concurrency, engine_slot
from cegraph.preflight import ModelUnavailable, check_model

__all__ = ["LLM", "BudgetExceeded", "CallStore", "Completion",
           "MemoryCallStore", "Meter", "ModelUnavailable", "Price", "UnpricedModel", "call_key",
           "model_fingerprint", "resolve_model", "transient_errors"]

# Call parameters that cannot change the answer, so they stay out of the call key.
NOT_IN_KEY = frozenset({"timeout", "request_timeout", "stream_timeout", "api_key",
                        "max_retries", "num_retries", "metadata", "drop_params"})


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
    """A call store for one process (tests, notebooks); `cegraph.storage.CallStore` persists."""

    def __init__(self) -> None:
        self.records: dict[str, Completion] = {}

    def get(self, key: str) -> Completion | None:
        return self.records.get(key)

    def put(self, record: Completion) -> None:
        self.records.setdefault(record.key, record)


@functools.cache
def _litellm() -> ModuleType:
    """Import litellm and set its process-wide flags, once, when calls are really made."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches it otherwise
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    _log_only_when_observed(litellm)
    return litellm


def _log_only_when_observed(litellm: ModuleType) -> None:
    """litellm hands each async call's success logging to one process-wide worker bound to
    one event loop. cegraph runs calls on several loops at once (a chunk per thread), which
    that worker does not support: it re-binds from thread to thread and leaves its task on a
    closed loop ("Task was destroyed but it is pending!", "cannot reuse already awaited
    coroutine"). cegraph meters calls itself, so the logging only matters when a user has
    registered litellm callbacks; without any, the logging coroutine is closed unqueued."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER as worker

    enqueue = worker.ensure_initialized_and_enqueue

    def enqueue_if_observed(async_coroutine: Any) -> None:
        if (litellm.callbacks or litellm.success_callback or litellm._async_success_callback
                or litellm.failure_callback or litellm._async_failure_callback):
            enqueue(async_coroutine)
        else:
            async_coroutine.close()

    worker.ensure_initialized_and_enqueue = enqueue_if_observed


@functools.cache
def transient_errors() -> tuple[type[Exception], ...]:
    """Errors worth retrying: the provider or the network may answer next time."""
    litellm = _litellm()
    return (litellm.RateLimitError, litellm.APIConnectionError, litellm.Timeout,
            litellm.ServiceUnavailableError, litellm.InternalServerError)


def __getattr__(name: str) -> Any:
    # `TRANSIENT_ERRORS` names litellm's classes, so it is built on first use (PEP 562)
    if name == "TRANSIENT_ERRORS":
        return transient_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_json_schema"):  # a pydantic response_format
        return value.model_json_schema()
    return repr(value)


def call_key(fingerprint: str, model: str, messages: list[dict[str, Any]],
             params: Mapping[str, Any], sample: int) -> str:
    payload = json.dumps([fingerprint, model, messages, params, sample], sort_keys=True,
                         ensure_ascii=False, default=_jsonable)
    return hashlib.sha256(payload.encode()).hexdigest()


def model_fingerprint(model: str, params: Mapping[str, Any]) -> str:
    """What identifies the weights behind a model name: a local model's sha256; for others
    the provider and the server (api_base) that answers."""
    from cegraph.local_model import LOCAL_PROVIDER, fingerprint

    if model.startswith(f"{LOCAL_PROVIDER}/"):
        return fingerprint(model.split("/", 1)[1])
    provider, default_base = model.split("/", 1)[0], None
    with contextlib.suppress(Exception):  # a custom provider litellm cannot name: its prefix
        _, provider, _, default_base = _litellm().get_llm_provider(model)
    base = params.get("api_base") or params.get("base_url") or default_base
    return f"{provider}@{base}" if base else provider


def resolve_model(name: str) -> str:
    """A short local-model name (`qwen2.5-coder-1.5b`) -> its litellm string; others as given."""
    from cegraph.engine import register
    from cegraph.local_model import LOCAL_PROVIDER, MODELS

    if name in MODELS:
        register()
        return f"{LOCAL_PROVIDER}/{name}"
    if name.startswith(f"{LOCAL_PROVIDER}/"):
        register()
    return name


@dataclass
class _LoopState:
    """What belongs to one event loop: asyncio primitives cannot cross loops."""

    slots: asyncio.Semaphore
    in_flight: dict[str, asyncio.Future[Completion]] = field(default_factory=dict)


class LLM:
    """Makes LLM calls through litellm.

    `model` is a litellm model string or a local model name; `concurrency` bounds calls in
    flight (per event loop; default: a local model's engine slots, else 4); `meter` may be
    shared with other LLMs of the same job;
    `input_cost_per_token`/`output_cost_per_token` price a model litellm has no price for
    (required with `Meter(max_cost=...)`); `fingerprint` identifies the weights of a custom
    model (e.g. an ollama digest) so a changed model under the same name misses the store;
    `extra` is passed to every call (e.g. `api_base`, `mock_response` in tests).
    """

    def __init__(self, model: str, *, store: CallStore | None = None, meter: Meter | None = None,
                 max_retries: int = 3, concurrency: int | None = None, timeout_s: float = 600.0,
                 fingerprint: str | None = None, input_cost_per_token: float | None = None,
                 output_cost_per_token: float | None = None, **extra: Any) -> None:
        if (input_cost_per_token is None) != (output_cost_per_token is None):
            raise ValueError("give both input_cost_per_token and output_cost_per_token")
        _litellm()
        self.model = resolve_model(model)
        check_model(self.model, extra)  # one clear error now, not one per task later
        self.store: CallStore = store if store is not None else MemoryCallStore()
        self.meter = meter if meter is not None else Meter()
        self.max_retries = max_retries
        self.concurrency = concurrency or default_concurrency(self.model)
        self.timeout_s = timeout_s
        self.extra = extra
        self.explicit_price = (None if input_cost_per_token is None else
                               Price(input_cost_per_token, output_cost_per_token or 0.0))
        self.fingerprint = fingerprint or model_fingerprint(self.model, extra)
        # a fingerprint given names the weights wherever they are served: the server's
        # address (a loopback port that changes each start) then stays out of the call key
        self._not_in_key = NOT_IN_KEY | ({"api_base", "base_url"} if fingerprint else set())
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary())
        self.meter.require_price(self.model, self.price(self.model))  # now, not mid-run

    @property
    def identity(self) -> str:
        """The model as runs record it and pools are keyed on: the litellm string and its
        fingerprint, so other weights or another server under the same name is another model."""
        return f"{self.model}@{self.fingerprint}"

    def price(self, model: str) -> Price | None:
        """The price given for this LLM's model, else 0 for a local model, else litellm's;
        None when unknown."""
        from cegraph.local_model import LOCAL_PROVIDER

        if self.explicit_price is not None and model == self.model:
            return self.explicit_price
        if model.startswith(f"{LOCAL_PROVIDER}/"):
            return Price(0.0, 0.0)  # runs in-process
        try:
            info = _litellm().get_model_info(model)
            return Price(float(info["input_cost_per_token"]),
                         float(info["output_cost_per_token"]))
        except Exception:  # litellm knows no price for it
            return None

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(asyncio.Semaphore(self.concurrency))
        return state

    async def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
                       max_tokens: int = 512, sample: int = 0, model: str | None = None,
                       response_format: dict[str, Any] | None = None) -> Completion:
        """One chat completion; replayed from the store when this exact call was made before,
        shared with an identical call in flight. `response_format` (a JSON schema request)
        constrains decoding where the provider can (llama.cpp turns it into a grammar) and is
        dropped elsewhere; it is part of the call key."""
        model = resolve_model(model) if model else self.model
        params = {k: v for k, v in self.extra.items() if k not in self._not_in_key}
        params |= {"temperature": temperature, "max_tokens": max_tokens}
        if response_format is not None:
            params["response_format"] = response_format
        fingerprint = (self.fingerprint if model == self.model
                       else model_fingerprint(model, self.extra))
        key = call_key(fingerprint, model, messages, params, sample)
        stored = self.store.get(key)
        if stored is not None:
            self.meter.count_cached()
            return replace(stored, cached=True)
        state = self._loop_state()
        running = state.in_flight.get(key)
        if running is not None:
            done = await asyncio.shield(running)
            self.meter.count_cached()
            return replace(done, cached=True)
        price = self.price(model)
        # no await between the store miss and here: the reservation is atomic with the check
        reservation = self.meter.reserve(model, _prompt_tokens(model, messages), max_tokens,
                                         price)
        running = asyncio.ensure_future(self._call(
            key, model, messages, params, sample, price, reservation, state.slots))
        state.in_flight[key] = running
        running.add_done_callback(lambda _: state.in_flight.pop(key, None))
        return await asyncio.shield(running)  # a cancelled caller leaves it to the others

    async def _call(self, key: str, model: str, messages: list[dict[str, str]],
                    params: dict[str, Any], sample: int, price: Price | None,
                    reservation: Reservation, slots: asyncio.Semaphore) -> Completion:
        try:
            async with slots, engine_slot(model):  # latency: the model's, not a queue's
                started = time.perf_counter()
                response = await self._call_with_retries(model, messages, params, sample)
                latency = time.perf_counter() - started
            choice = response.choices[0]
            usage = getattr(response, "usage", None)
            tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
            tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
            cost = price.of(tokens_in, tokens_out) if price else 0.0
            done = Completion(key, model, messages, json.loads(json.dumps(
                params, sort_keys=True, default=_jsonable)), sample, choice.message.content or "",
                tokens_in, tokens_out, cost, latency, str(choice.finish_reason or "stop"))
        except BaseException:
            self.meter.release(reservation)
            raise
        self.meter.settle(reservation, tokens_in, tokens_out, cost)
        self.store.put(done)
        return done

    async def _call_with_retries(self, model: str, messages: list[dict[str, str]],
                                 params: dict[str, Any], sample: int) -> Any:
        litellm = _litellm()
        kwargs = {**self.extra, **params}
        if sample and params["temperature"] > 0:
            kwargs.setdefault("seed", sample)  # distinct samples where the provider has seeds
        transient = transient_errors()
        for attempt in range(self.max_retries + 1):
            try:
                # drop_params per call: providers without `seed` etc. ignore it, not fail
                return await litellm.acompletion(model=model, messages=messages,
                                                 timeout=self.timeout_s, drop_params=True,
                                                 **kwargs)
            except transient:
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (1 + random.random()))
        raise AssertionError("unreachable")


def _prompt_tokens(model: str, messages: list[dict[str, str]]) -> int:
    """An estimate of the prompt's tokens (the real count is known only after the call)."""
    try:
        return int(_litellm().token_counter(model=model, messages=messages))
    except Exception:  # no tokenizer for it: bytes bound the tokens of byte-level BPEs
        return sum(len(json.dumps(m).encode()) for m in messages)
