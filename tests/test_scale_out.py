"""Scale-out: the same workflow through litellm to any OpenAI-compatible server, with a model
string and an api_base and no code change. The server here is llama.cpp's own HTTP listener
(the one the embedded engine opens on loopback) serving smollm2-135m; llama-server, vLLM and
Ollama speak the same protocol."""

import asyncio

import pytest

from cegraph.benchmarks import load
from cegraph.engine import ENGINE
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.graph import Workflow
from cegraph.llm import LLM
from cegraph.local_model import fetch
from cegraph.seeds import seed


@pytest.mark.slow
def test_a_workflow_runs_against_an_openai_compatible_server_on_loopback():
    fetch("smollm2-135m")
    api_base = ENGINE.address("smollm2-135m")  # http://127.0.0.1:<port>/v1
    llm = LLM("openai/smollm2-135m", api_base=api_base, api_key="none")
    assert llm.fingerprint == f"openai@{api_base}"  # another server is another model
    short = seed("math").model_dump(exclude_defaults=True)
    for node in short["nodes"]:
        node["params"] = {"max_tokens": 48}  # the protocol is under test, not the answer
    before = ENGINE.snapshot()
    [trace] = asyncio.run(Executor(llm).run_many(Workflow.from_dict(short), load("gsm8k", n=1),
                                                 evaluate=evaluate))
    assert trace.outcome is not None and trace.output is not None
    for span in trace.spans:
        assert span.error is None
        [call] = span.calls
        assert call.model == "openai/smollm2-135m" and call.tokens_out > 0
    # answered over HTTP by the server, not by the in-process provider
    assert ENGINE.snapshot().requests == before.requests
