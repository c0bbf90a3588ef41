"""`cegraph bench llm`: the same requests through the product path and the raw engine, with a
fake engine standing in for llama.cpp (the real figures come from the command itself)."""

import json
import threading
import time

from typer.testing import CliRunner

from cegraph import engine


class FakeServer:
    """Answers after a short delay; a kept prefix shows as `cache_n`, as in llama.cpp."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def handle_chat_completions(self, request: dict) -> dict:
        with self._lock:
            self.requests.append(request)
        time.sleep(0.02)
        content = "\\boxed{1}"
        return {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57},
                "timings": {"prompt_n": 30, "cache_n": 20, "predicted_n": 7,
                            "prompt_ms": 10.0, "predicted_ms": 20.0}}


def test_bench_llm_times_the_same_requests_both_ways(monkeypatch):
    from cegraph.cli.main import app

    servers: list[FakeServer] = []

    def start(self, name):
        servers.append(FakeServer())
        return servers[-1]

    monkeypatch.setattr(engine.Engine, "_start", start)
    monkeypatch.setattr(engine.ENGINE, "_servers", {})
    out = CliRunner().invoke(app, ["bench", "llm", "--model", "smollm2-135m",
                                   "--requests", "3", "--concurrency", "2", "--json"])
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output.strip().splitlines()[-1])
    product, raw = servers  # the raw pass has a fresh server: no prefix kept from the first
    # each server is warmed up (one token) before it is timed
    assert product.requests[0]["max_tokens"] == raw.requests[0]["max_tokens"] == 1
    timed = product.requests[1:], raw.requests[1:]
    assert len(timed[0]) == len(timed[1]) == 6  # solve + format per problem
    key = lambda r: json.dumps(r["messages"])  # noqa: E731
    assert sorted(map(key, timed[0])) == sorted(map(key, timed[1]))
    assert figures["generated"] == [42, 42] and figures["calls"] == 6
    assert figures["raw_gen_tok_s"] > 0 and figures["product_gen_tok_s"] > 0
    assert figures["ratio"] == round(figures["product_gen_tok_s"] / figures["raw_gen_tok_s"], 3)
    assert figures["prompt_tok_s"] == 3000.0  # 30 tokens evaluated in 10 ms
    assert figures["prompt_tokens_per_problem"] == 100.0
    assert figures["prompt_tokens_evaluated_per_problem"] == 60.0
    assert figures["cpu"] and figures["concurrency"] == 2


def test_bench_llm_wants_a_local_model():
    from cegraph.cli.main import app

    out = CliRunner().invoke(app, ["bench", "llm", "--model", "openai/gpt-4o-mini"])
    assert out.exit_code == 2 and "times the embedded engine: give --model one of" in out.output
