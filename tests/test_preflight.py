"""Fail fast: a model string that cannot be called is one line saying what to do, raised
before any task runs (not one recorded exception per input)."""

import socket
import sys

import pytest

from cegraph.llm import LLM, ModelUnavailable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize(("model", "extra", "says"), [
    ("nosuchprovider/x", {}, "write it as provider/model"),
    ("openai/gpt-4o-mini", {}, "needs OPENAI_API_KEY"),
    ("cegraph-local/gpt-5", {}, "unknown local model 'gpt-5'"),
])
def test_a_model_that_cannot_be_called_says_what_to_do(model, extra, says, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelUnavailable, match=says) as err:
        LLM(model, **extra)
    assert "\n" not in str(err.value)


def test_an_unreachable_api_base_fails_fast():
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(ModelUnavailable, match=f"cannot reach api_base {base}"):
        LLM("openai/m", api_base=base, api_key="k")


def test_a_local_model_not_fetched_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CEGRAPH_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="cegraph model fetch --model smollm2-135m"):
        LLM("smollm2-135m")


def test_callable_models_pass(scripted):
    LLM("scripted/m")  # a provider registered in this process
    LLM("openai/m", mock_response="hi")  # never reaches a provider


def test_the_flow_fails_before_any_task_runs(tmp_path, scripted):
    from cegraph.flows.evaluation import evaluate_workflow

    with pytest.raises(ModelUnavailable, match="write it as provider/model"):
        evaluate_workflow.fn(dataset="gsm8k", n=2, home=str(tmp_path / "home"),
                             model="scripted/m", diagnosis_model="nosuchprovider/m")
    assert not (tmp_path / "home").exists() and not scripted.calls


def test_the_cli_prints_one_line_and_exits_2(monkeypatch, capsys):
    from cegraph.cli.main import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(sys, "argv", ["cegraph", "run", "--n", "1", "--model", "openai/m"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and "OPENAI_API_KEY" in out and "\n" not in out
