"""The embedded inference engine: llama.cpp's server engine, in-process (xllamacpp), reached
through litellm as the custom provider `cegraph-local/<name>`.

Why this engine: llama.cpp's server engine batches concurrent requests across slots
(continuous batching) and keeps evaluated prompt prefixes per slot and in a bounded RAM cache,
so there is no process-wide lock and a prompt whose prefix was seen before costs a fraction of
its cold time. The xllamacpp wheel is prebuilt (no compile on install) and thread-safe; it also
listens on a loopback OpenAI-compatible port (`address`), which the scale-out test uses.

Speculative decoding is off by default: `CEGRAPH_SPECULATIVE=ngram` turns on llama.cpp's
prompt-lookup (n-gram) drafting, which is exact at temperature 0 (drafts are verified by the
model) and suits nodes that copy from their input (Format, Revise); it stays opt-in until
`cegraph bench llm` on a quiet machine shows a gain on the seed workflows' prompts.

Busy-polling is off (`poll = 0`): the engine's default spin-wait collapsed throughput from
~12 to ~1 tok/s when other processes shared the cores. The wheel's llama.cpp runs its threads
with OpenMP, whose own spin-wait does the same: with other processes on the 2 cores,
smollm2-135m took over 60 s for 150 tokens under OpenMP's default policy and 3.4-4.2 s with
`OMP_WAIT_POLICY=PASSIVE`, so that is the default here (set before the OpenMP runtime loads;
an explicit setting in the environment wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from cegraph.local_model import LOCAL_PROVIDER, MODELS, ModelNotFetched, model_path

# read by the OpenMP runtime when xllamacpp first loads it, so set before any import of it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: RAM for prompt prefixes evicted from the slots (llama.cpp's `cache_ram_mib`).
DEFAULT_CACHE_RAM_MIB = 1024
#: Request fields passed on to the engine (the others litellm sends mean nothing to it).
PASSED = ("temperature", "max_tokens", "seed", "response_format", "stop", "top_p")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2


def slots(name: str) -> int:
    """Parallel sequences the engine serves for a local model: the measured best on 2 cores
    (4 for the 1.5B, 8 for the smaller ones), scaled with the cores, at most 32."""
    return max(1, min(32, MODELS[name].slots_per_core * cores()))


def default_concurrency(model: str) -> int:
    """Calls (and runs) to keep in flight by default: a local model's slots, else 4."""
    name = model.removeprefix(f"{LOCAL_PROVIDER}/")
    return slots(name) if name in MODELS else 4


_SLOT_GUARDS: dict[str, threading.Semaphore] = {}
_SLOT_GUARDS_LOCK = threading.Lock()


@contextlib.asynccontextmanager
async def engine_slot(model: str) -> AsyncIterator[None]:
    """Hold one of a local model's engine slots for a call, across every LLM, event loop and
    thread of this process (other models: no bound). Calls beyond the slots would wait in the
    engine's own queue, and that wait would be measured as the model's latency: a night's
    concurrent gate chunks made a candidate look 3x slower than the runs it was compared
    with. Polled, so a cancelled caller never holds a slot."""
    name = model.removeprefix(f"{LOCAL_PROVIDER}/")
    if model == name or name not in MODELS:
        yield
        return
    with _SLOT_GUARDS_LOCK:
        guard = _SLOT_GUARDS.setdefault(name, threading.Semaphore(slots(name)))
    while not guard.acquire(blocking=False):
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        guard.release()


def info() -> dict[str, str]:
    """The engine, its version and the CPU features its build uses (`cegraph model list`)."""
    import xllamacpp

    cpu = xllamacpp.get_system_info()
    features = re.findall(r"(\w+) = 1", cpu)
    return {"engine": "llama.cpp server engine (xllamacpp)", "version": xllamacpp.__version__,
            "cpu_features": " ".join(features), "cores": str(cores())}


@dataclass
class EngineStats:
    """Work the engine did, summed over requests: prompt tokens it evaluated (`prompt_n`) vs
    took from a kept prefix (`cached`), tokens generated, and the time each took."""

    requests: int = 0
    prompt_evaluated: int = 0
    prompt_cached: int = 0
    generated: int = 0
    prompt_ms: float = 0.0
    generate_ms: float = 0.0
    drafted: int = 0  # speculative decoding: tokens proposed by the drafter
    draft_accepted: int = 0  # ... and kept by the model

    def minus(self, before: EngineStats) -> EngineStats:
        a, b = asdict(self), asdict(before)
        return EngineStats(**{k: a[k] - b[k] for k in a})


class Engine:
    """One llama.cpp server per local model, loaded on first use and kept for the process."""

    def __init__(self) -> None:
        self._servers: dict[str, Any] = {}
        self._load_lock = threading.Lock()  # loading only; requests run concurrently
        self._stats_lock = threading.Lock()
        self.stats = EngineStats()
        self.cache_ram_mib = int(os.environ.get("CEGRAPH_CACHE_RAM_MIB", DEFAULT_CACHE_RAM_MIB))

    def server(self, name: str) -> Any:
        server = self._servers.get(name)
        if server is not None:
            return server
        with self._load_lock:
            if name not in self._servers:
                self._servers[name] = self._start(name)
            return self._servers[name]

    def _start(self, name: str) -> Any:
        import xllamacpp as xlc

        if name not in MODELS:
            raise KeyError(f"unknown local model {name!r}; choose one of {', '.join(MODELS)}")
        path = model_path(name)
        if not path.exists():
            raise ModelNotFetched(f"local model {name!r} is not fetched; run "
                                  f"`cegraph model fetch --model {name}`")
        n = slots(name)
        p = xlc.CommonParams()
        p.model.path = str(path)
        p.n_parallel = n
        p.n_ctx = MODELS[name].n_ctx * n  # split evenly: each slot gets the model's context
        for cpu in (p.cpuparams, p.cpuparams_batch):
            cpu.n_threads = cores()
            cpu.poll = 0
        p.cache_ram_mib = self.cache_ram_mib
        p.cache_prompt = True
        p.warmup = False
        p.verbosity = -1  # errors come back as exceptions; its logs would flood the terminal
        p.sampling.seed = 0
        if os.environ.get("CEGRAPH_SPECULATIVE") == "ngram":
            p.speculative.types = [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
        return xlc.Server(p)

    def address(self, name: str) -> str:
        """The loopback OpenAI-compatible endpoint of a model's server (`.../v1`)."""
        return f"{self.server(name).listening_address}/v1"

    def chat(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (OpenAI request and response shapes); thread-safe."""
        response = self.server(name).handle_chat_completions(request)
        if "error" in response or "choices" not in response:
            raise RuntimeError(f"llama.cpp engine: {response.get('error', response)}")
        t = response.get("timings", {})
        with self._stats_lock:
            s = self.stats
            s.requests += 1
            s.prompt_evaluated += int(t.get("prompt_n", 0))
            s.prompt_cached += int(t.get("cache_n", 0))
            s.generated += int(t.get("predicted_n", 0))
            s.prompt_ms += float(t.get("prompt_ms", 0.0))
            s.generate_ms += float(t.get("predicted_ms", 0.0))
            s.drafted += int(t.get("draft_n", 0))
            s.draft_accepted += int(t.get("draft_n_accepted", 0))
        return response

    def snapshot(self) -> EngineStats:
        with self._stats_lock:
            return EngineStats(**asdict(self.stats))


ENGINE = Engine()


# --- the litellm provider -------------------------------------------------------------

_handler: Any = None
_register_lock = threading.Lock()


def register() -> None:
    """Make `cegraph-local/<name>` callable through litellm (idempotent)."""
    global _handler
    import litellm

    with _register_lock:
        if _handler is None:
            _handler = _make_handler()
        if not any(p["provider"] == LOCAL_PROVIDER for p in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": LOCAL_PROVIDER,
                                                "custom_handler": _handler})


def request_of(messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The engine request for a litellm call: a JSON schema in `response_format` becomes a
    grammar in the engine, so output that cannot parse is never sampled."""
    request: dict[str, Any] = {"messages": messages, "temperature": 0.0, "max_tokens": 512,
                               "seed": 0}
    request |= {k: params[k] for k in PASSED if params.get(k) is not None}
    return request


def _make_handler() -> Any:
    import litellm
    from litellm import CustomLLM

    class EngineProvider(CustomLLM):
        """Answers `cegraph-local/<name>` from the in-process engine; async calls run in
        threads so as many requests as there are slots are decoded in one batch."""

        def __init__(self) -> None:
            super().__init__()
            self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="cegraph-engine")

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = ENGINE.chat(model.split("/", 1)[-1],
                              request_of(messages, kwargs.get("optional_params") or {}))
            choice = out["choices"][0]
            usage = out.get("usage", {})
            response = litellm.ModelResponse(
                model=model,
                choices=[{"index": 0, "finish_reason": choice.get("finish_reason") or "stop",
                          "message": {"role": "assistant",
                                      "content": choice["message"].get("content") or ""}}],
                usage={"prompt_tokens": usage.get("prompt_tokens", 0),
                       "completion_tokens": usage.get("completion_tokens", 0),
                       "total_tokens": usage.get("total_tokens", 0)})
            response._hidden_params["latency_s"] = time.perf_counter() - started
            response._hidden_params["timings"] = out.get("timings", {})
            return response

        async def acompletion(self, model: str, messages: list, *args: Any,
                              **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, lambda: self.completion(model, messages, *args, **kwargs))

    return EngineProvider()
