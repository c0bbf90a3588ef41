"""The LLM layer: a budget that holds under concurrency, the call-store key, in-flight
sharing, event loops, and a light import."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cegraph.llm import (
    LLM,
    BudgetExceeded,
    MemoryCallStore,
    Meter,
    UnpricedModel,
    model_fingerprint,
)

ROOT = Path(__file__).resolve().parents[1]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def gather(llm: LLM, prompts: list[str], **kw) -> list:
    return await asyncio.gather(*(llm.complete(ask(p), **kw) for p in prompts),
                                return_exceptions=True)


def test_budget_holds_when_20_calls_queue_at_once(scripted):
    scripted.delay = 0.05  # the provider is slow: all 20 are queued before any returns
    meter = Meter(max_tokens=200)
    llm = LLM("scripted/m", meter=meter, concurrency=4)
    results = asyncio.run(gather(llm, [f"question {i}" for i in range(20)], max_tokens=60))
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    # each call may need 60 completion tokens plus its prompt: at most 3 fit in 200
    assert 1 <= len(scripted.calls) == len(answered) <= 200 // 60
    assert len(refused) == 20 - len(answered)
    assert meter.tokens_in + meter.tokens_out <= 200
    assert meter.reserved_tokens == 0 and meter.calls == len(answered)


def test_budget_settles_to_real_usage_and_releases_on_error(scripted):
    meter = Meter(max_tokens=200)
    llm = LLM("scripted/m", meter=meter, max_retries=0)
    for i in range(10):  # each reserves ~70 but really spends 3: all fit, one after another
        asyncio.run(llm.complete(ask(f"q {i}"), max_tokens=60))
    assert meter.calls == 10 and meter.tokens_in + meter.tokens_out == 30
    scripted.fail_first = 1
    with pytest.raises(Exception, match="scripted outage"):
        asyncio.run(llm.complete(ask("fails"), max_tokens=60))
    assert meter.reserved_tokens == 0 and meter.calls == 10


def test_replayed_calls_charged_to_a_job_never_pass_its_call_budget(scripted):
    from cegraph.refine.journal import ChargingStore

    store = MemoryCallStore()
    asyncio.run(gather(LLM("scripted/m", store=store), ["a", "b", "c"]))  # an earlier attempt
    meter = Meter(max_calls=2)
    llm = LLM("scripted/m", meter=meter, store=ChargingStore(store, meter, since=0.0))
    results = asyncio.run(gather(llm, ["a", "b", "c"]))
    # the stored calls are charged as if made again, and the budget holds for them: a resumed
    # (or replaying) job stops where an uninterrupted one would have, never at 3 of 2
    assert [isinstance(r, BudgetExceeded) for r in results] == [False, False, True]
    assert meter.calls == 2 and scripted.calls[3:] == []


def test_one_meter_is_one_budget_across_llms_and_event_loops(scripted):
    scripted.reply = lambda m: "word " * 50  # each call really spends 51 tokens
    meter = Meter(max_tokens=150)
    first, second = LLM("scripted/m", meter=meter), LLM("scripted/m", meter=meter)
    asyncio.run(first.complete(ask("a"), max_tokens=60))
    asyncio.run(second.complete(ask("b"), max_tokens=60))
    with pytest.raises(BudgetExceeded):  # 102 spent: a third worst case (~68) does not fit
        asyncio.run(first.complete(ask("c"), max_tokens=60))
    assert meter.calls == 2 and meter.tokens_out == 100 and len(scripted.calls) == 2


def test_cost_budget_needs_a_price(scripted):
    with pytest.raises(UnpricedModel, match="input_cost_per_token"):
        LLM("scripted/m", meter=Meter(max_cost=1.0))
    meter = Meter(max_cost=0.01)
    llm = LLM("scripted/m", meter=meter, input_cost_per_token=1e-5, output_cost_per_token=1e-4)
    done = asyncio.run(llm.complete(ask("two words"), max_tokens=50))
    assert done.cost == pytest.approx(2 * 1e-5 + 1 * 1e-4) and meter.cost == done.cost
    with pytest.raises(BudgetExceeded, match="cost budget"):  # worst case 200 * 1e-4 > $0.01
        asyncio.run(llm.complete(ask("another"), max_tokens=200))
    assert len(scripted.calls) == 1


def test_litellm_price_is_used_for_a_known_model():
    meter = Meter(max_cost=1e-6)  # gpt-4o-mini: a 512-token worst case costs ~3e-4
    llm = LLM("openai/gpt-4o-mini", meter=meter, mock_response="7")
    with pytest.raises(BudgetExceeded, match="cost budget"):
        asyncio.run(llm.complete(ask("hi")))
    done = asyncio.run(LLM("openai/gpt-4o-mini", mock_response="7").complete(ask("hi")))
    assert done.cost > 0


def test_another_server_is_not_answered_from_the_store(scripted):
    store = MemoryCallStore()
    scripted.reply = lambda m: "from A"
    a = asyncio.run(LLM("scripted/m", store=store, api_base="http://a").complete(ask("hi")))
    scripted.reply = lambda m: "from B"
    b = asyncio.run(LLM("scripted/m", store=store, api_base="http://b").complete(ask("hi")))
    assert (a.text, b.text) == ("from A", "from B") and not b.cached
    again = asyncio.run(LLM("scripted/m", store=store, api_base="http://a").complete(ask("hi")))
    assert again.cached and again.text == "from A"


@pytest.mark.parametrize("changed", [{"top_p": 0.5}, {"stop": ["\n"]},
                                     {"response_format": {"type": "json_object"}},
                                     {"tools": [{"type": "function",
                                                 "function": {"name": "f"}}]}])
def test_every_call_parameter_is_in_the_key(scripted, changed):
    store = MemoryCallStore()
    asyncio.run(LLM("scripted/m", store=store).complete(ask("hi")))
    asyncio.run(LLM("scripted/m", store=store, **changed).complete(ask("hi")))
    assert len(scripted.calls) == 2


def test_timeouts_and_keys_are_not_in_the_key(scripted):
    store = MemoryCallStore()
    asyncio.run(LLM("scripted/m", store=store).complete(ask("hi")))
    again = asyncio.run(LLM("scripted/m", store=store, timeout_s=5, api_key="k",
                            num_retries=2).complete(ask("hi")))
    assert again.cached and len(scripted.calls) == 1


def test_same_name_with_another_fingerprint_misses(scripted, monkeypatch):
    store = MemoryCallStore()
    asyncio.run(LLM("scripted/m", store=store, fingerprint="sha256:aa").complete(ask("hi")))
    other = asyncio.run(LLM("scripted/m", store=store, fingerprint="sha256:bb")
                        .complete(ask("hi")))
    assert not other.cached and len(scripted.calls) == 2
    # a local model is fingerprinted by its weights' sha256: re-quantized weights miss
    from dataclasses import replace

    from cegraph import local_model

    before = model_fingerprint("cegraph-local/smollm2-135m", {})
    assert before == f"sha256:{local_model.MODELS['smollm2-135m'].sha256}"
    monkeypatch.setitem(local_model.MODELS, "smollm2-135m",
                        replace(local_model.MODELS["smollm2-135m"], sha256="0" * 64))
    assert model_fingerprint("cegraph-local/smollm2-135m", {}) != before
    assert model_fingerprint("openai/x", {"api_base": "http://a"}) == "openai@http://a"


def test_identical_concurrent_calls_share_one_provider_call(scripted):
    scripted.delay = 0.05
    llm = LLM("scripted/m")
    results = asyncio.run(gather(llm, ["same"] * 5))
    assert len(scripted.calls) == 1
    assert {r.text for r in results} == {"42"} and len({r.key for r in results}) == 1
    assert [r.cached for r in results].count(False) == 1
    assert llm.meter.calls == 1 and llm.meter.cached_calls == 4


def test_one_llm_in_two_event_loops(scripted):
    scripted.delay = 0.01
    llm = LLM("scripted/m", concurrency=1)  # two calls contend for the one slot in each loop
    asyncio.run(gather(llm, ["a", "b"]))
    second = asyncio.run(gather(llm, ["c", "d"]))
    assert [r.text for r in second] == ["42", "42"] and len(scripted.calls) == 4
    assert scripted.peak == 1


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, text=True,
                          capture_output=True, timeout=120).stdout.strip()


def test_the_core_imports_without_litellm():
    assert _python("import sys, cegraph.graph, cegraph.llm, cegraph.trace; "
                   "print('litellm' in sys.modules)") == "False"
    # litellm's process-wide flags are set only once an LLM is really built
    out = _python("import litellm, cegraph.llm; print(litellm.suppress_debug_info, end=' '); "
                  "from cegraph import LLM; LLM('openai/x', api_key='k'); "
                  "print(litellm.suppress_debug_info, litellm.drop_params)")
    assert out == "False True False"


def test_a_local_models_engine_slots_bound_its_calls_across_threads_and_loops():
    """Calls beyond a local model's engine slots would wait in the engine's queue, and the
    wait would count as the model's latency (a night's concurrent gate chunks made a candidate
    look 3x slower); the bound holds across LLMs, event loops and threads; other models have
    none."""
    import threading

    from cegraph.engine import engine_slot, slots
    from cegraph.local_model import LOCAL_PROVIDER

    name = "smollm2-135m"
    held, peak, lock = {}, {}, threading.Lock()

    async def one(model: str) -> None:
        async with engine_slot(model):
            with lock:
                held[model] = held.get(model, 0) + 1
                peak[model] = max(peak.get(model, 0), held[model])
            await asyncio.sleep(0.02)
            with lock:
                held[model] -= 1

    async def many(model: str) -> None:
        await asyncio.gather(*(one(model) for _ in range(slots(name))))

    for model in (f"{LOCAL_PROVIDER}/{name}", "openai/elsewhere"):
        threads = [threading.Thread(target=asyncio.run, args=(many(model),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak == {f"{LOCAL_PROVIDER}/{name}": slots(name), "openai/elsewhere": 3 * slots(name)}


def test_calls_on_several_loops_at_once_log_no_litellm_worker_errors(scripted, caplog):
    """litellm's success-logging worker is bound to one event loop; a night runs chunks on a
    loop per thread. Without litellm callbacks nothing is queued to it (it used to print
    'Task was destroyed but it is pending!' and 'cannot reuse already awaited coroutine');
    a user's registered callback still sees every call."""
    import gc
    import threading

    import litellm
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    scripted.delay = 0.02

    def chunk(i: int) -> None:
        llm = LLM("scripted/m")
        for j in range(2):  # the worker re-binds to whichever loop queues to it last
            asyncio.run(gather(llm, [f"chunk {i} loop {j} question {k}" for k in range(3)]))

    threads = [threading.Thread(target=chunk, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()  # an orphaned task reports itself when collected
    assert len(scripted.calls) == 36
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    class Seen(CustomLogger):
        calls = 0

        async def async_log_success_event(self, *args, **kwargs) -> None:
            Seen.calls += 1

    async def observed() -> None:
        await LLM("scripted/m").complete(ask("observed"))
        await GLOBAL_LOGGING_WORKER.flush()

    litellm.callbacks = [Seen()]
    try:
        asyncio.run(observed())
    finally:
        litellm.callbacks = []
    assert Seen.calls == 1
