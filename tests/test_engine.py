"""The embedded engine: calls overlap (no process-wide lock), requests and answers keep their
shape, engine errors surface, the engine's work is counted. Fast tests stand a fake server in
for llama.cpp; the slow ones run smollm2-135m."""

import asyncio
import json
import threading
import time

import pytest

import cegraph.local_model as lm
from cegraph import engine
from cegraph.llm import LLM

DELAY_S = 0.3


class FakeServer:
    """Answers like llama.cpp's server engine after DELAY_S, counting calls in flight."""

    def __init__(self, error: bool = False) -> None:
        self.error = error
        self.requests: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def handle_chat_completions(self, request: dict) -> dict:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(DELAY_S)
        with self._lock:
            self.in_flight -= 1
        if self.error:
            return {"error": {"code": 400, "message": "the request exceeds the context"}}
        return {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "\\boxed{2}"}}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35},
                "timings": {"prompt_n": 10, "cache_n": 20, "predicted_n": 5,
                            "prompt_ms": 1.0, "predicted_ms": 2.0}}


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """A fetched local model `fake-engine` whose engine is a FakeServer."""
    monkeypatch.setenv("CEGRAPH_MODEL_DIR", str(tmp_path))
    spec = lm.LocalModel("fake-engine", "fake.gguf", (), "", 1, "0" * 64)
    monkeypatch.setitem(lm.MODELS, "fake-engine", spec)
    lm.model_path("fake-engine").parent.mkdir(parents=True)
    lm.model_path("fake-engine").write_bytes(b"x")
    server = FakeServer()
    monkeypatch.setitem(engine.ENGINE._servers, "fake-engine", server)
    return server


def _ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + 1?"}]


def test_two_calls_in_flight_overlap_in_the_engine(fake_engine):
    llm = LLM("fake-engine", concurrency=4)

    async def both() -> None:
        await asyncio.gather(llm.complete(_ask(1)), llm.complete(_ask(2)))

    asyncio.run(both())
    assert fake_engine.peak == 2  # a lock would keep it at 1


def test_requests_carry_the_call_parameters_and_answers_their_usage(fake_engine):
    schema = {"type": "json_schema",
              "json_schema": {"name": "x", "schema": {"type": "object"}}}
    before = engine.ENGINE.snapshot()
    done = asyncio.run(LLM("fake-engine").complete(_ask(1), max_tokens=77, temperature=0.5,
                                                   response_format=schema))
    [request] = fake_engine.requests
    assert request["messages"] == _ask(1)
    assert request["max_tokens"] == 77 and request["temperature"] == 0.5
    assert request["response_format"] == schema and request["seed"] == 0
    assert (done.text, done.tokens_in, done.tokens_out) == ("\\boxed{2}", 30, 5)
    work = engine.ENGINE.snapshot().minus(before)
    assert (work.requests, work.prompt_evaluated, work.prompt_cached, work.generated) == (
        1, 10, 20, 5)


def test_an_engine_error_is_raised_not_answered(fake_engine, monkeypatch):
    monkeypatch.setitem(engine.ENGINE._servers, "fake-engine", FakeServer(error=True))
    with pytest.raises(Exception, match="exceeds the context"):
        asyncio.run(LLM("fake-engine", max_retries=0).complete(_ask(1)))


def test_slots_and_default_concurrency_scale_with_cores(monkeypatch):
    monkeypatch.setattr(engine, "cores", lambda: 2)
    assert engine.slots("qwen2.5-coder-1.5b") == 4 and engine.slots("smollm2-135m") == 8
    assert engine.default_concurrency("cegraph-local/qwen2.5-coder-0.5b") == 8
    assert engine.default_concurrency("openai/gpt-4o-mini") == 4
    monkeypatch.setattr(engine, "cores", lambda: 64)
    assert engine.slots("qwen2.5-coder-1.5b") == 32  # bounded


def test_engine_info_names_version_and_cpu_features():
    info = engine.info()
    assert info["version"] and info["engine"].startswith("llama.cpp")
    assert any(f in info["cpu_features"].split() for f in ("AVX2", "NEON"))


# --- the real engine -------------------------------------------------------------------------

@pytest.mark.slow
def test_real_engine_overlaps_calls_keeps_prefixes_and_follows_a_schema():
    lm.fetch("smollm2-135m")
    llm = LLM("smollm2-135m", concurrency=4)
    spans: list[tuple[float, float]] = []
    shared = "You are a careful assistant. Answer in one short sentence. " * 8

    async def one(i: int) -> None:
        started = time.perf_counter()
        await llm.complete([{"role": "system", "content": shared},
                            {"role": "user", "content": f"Name the number {i}."}], max_tokens=8)
        spans.append((started, time.perf_counter()))

    async def run() -> None:
        await asyncio.gather(one(1), one(2))

    before = engine.ENGINE.snapshot()
    asyncio.run(run())
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 < a1  # the second started before the first ended: no lock between them
    asyncio.run(one(3))  # its system prompt was evaluated before: taken from a slot
    work = engine.ENGINE.snapshot().minus(before)
    assert work.requests == 3 and work.prompt_cached > 0 and work.generated > 0
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    done = asyncio.run(llm.complete([{"role": "user", "content": "Give n = 3 as JSON."}],
                                    max_tokens=20, response_format=schema))
    assert isinstance(json.loads(done.text)["n"], int)



def _omp_policy(env: dict[str, str]) -> str:
    import subprocess
    import sys

    code = "import os, cegraph.engine; print(os.environ['OMP_WAIT_POLICY'])"
    return subprocess.run([sys.executable, "-c", code], env=env, text=True,
                          capture_output=True, check=True).stdout.strip()


def test_openmp_threads_wait_passively_unless_told_otherwise():
    # OpenMP's default spin-wait starved the engine when other processes shared the cores
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _omp_policy(env) == "PASSIVE"
    assert _omp_policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
