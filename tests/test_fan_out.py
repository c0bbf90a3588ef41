"""The fan-out of a batch of runs (`cegraph.batch`): chunks of plain data, shares of the
budget that never pass it, and the refinement reaching the same result fanned out as here."""

from __future__ import annotations

import asyncio
import pickle
from dataclasses import replace

import pytest

from cegraph.batch import (
    Chunk,
    ChunkResult,
    FanOut,
    ModelSpec,
    Share,
    in_process,
    run_chunk,
    shares,
    task_dict,
)
from cegraph.llm import LLM, MemoryCallStore, Meter
from cegraph.refine.journal import MemoryJournal
from cegraph.refine.loop import Budget, Refinement
from cegraph.seeds import seed
from tests.test_refine import TASKS, world


def _refinement(embedder, budget: int, **kw) -> Refinement:
    return Refinement(seed("math"), TASKS, llm=LLM("scripted/x", store=MemoryCallStore()),
                      budget=Budget(calls=budget), embedder=embedder,
                      journal=MemoryJournal(), **kw)


@pytest.fixture(autouse=True)
def _no_journals_left():
    """Chunks these tests run outside a night are journaled in this process; a later night
    would prune them on its own runner."""
    yield
    from cegraph.tasks import batch

    with batch._journaled_lock:
        batch._journaled.clear()


def test_shares_never_pass_what_the_meter_has_left():
    for calls, tokens, dollars, parts in [(10, None, None, 3), (7, 100, 1.0, 4), (0, 5, 0.0, 2),
                                          (None, None, None, 5), (3, None, None, 8)]:
        m = Meter(max_calls=calls, max_tokens=tokens, max_cost=dollars)
        m.charge(0, 0, 0, 0.0)
        got = shares(m, parts)
        assert len(got) == parts
        for kind, limit in (("calls", calls), ("tokens", tokens), ("dollars", dollars)):
            values = [getattr(s, kind) for s in got]
            if limit is None:
                assert values == [None] * parts
            else:
                assert sum(values) <= limit + 1e-12 and min(values) >= 0
    spent = Meter(max_calls=10)
    spent.charge(4, 0, 0, 0.0)
    assert sum(s.calls for s in shares(spent, 3)) == 6  # what is left, not the whole budget


def test_a_chunk_is_plain_data_and_runs_with_no_database(scripted):
    scripted.reply = world
    chunk = Chunk("c0", seed("math").model_dump_json(), [task_dict(t) for t in TASKS[:3]],
                  ModelSpec("scripted/x"), share=Share(calls=4))
    got = run_chunk(pickle.loads(pickle.dumps(chunk)))
    # two calls a run (solve, format): the share of 4 pays for two runs, the third is cut
    assert len(got.calls) == 4 == len(scripted.calls) and got.exhausted
    assert [t.task_id for t in got.traces] == ["t0", "t1", "t2"]
    again = run_chunk(replace(chunk, known=got.calls, share=Share(calls=2)))
    assert len(again.replayed) == 4 and len(again.calls) == 2 and not again.exhausted
    assert isinstance(pickle.loads(pickle.dumps(again)), ChunkResult)


def test_calls_of_a_lost_attempt_are_replayed_and_returned_once(scripted):
    scripted.reply = world
    chunk = Chunk("c1", seed("math").model_dump_json(), [task_dict(t) for t in TASKS[:2]],
                  ModelSpec("scripted/x"))
    journaled: list[dict] = []
    first = run_chunk(chunk, on_call=journaled.append)
    assert len(journaled) == len(first.calls) == 4
    scripted.calls.clear()
    # the rerun of a lost chunk: the lost attempt's calls are its own, replayed not paid
    rerun = run_chunk(replace(chunk, share=Share(calls=4)), prior=journaled[:3])
    assert len(scripted.calls) == 1 and len(rerun.calls) == 4 and not rerun.exhausted


def test_a_refinement_fanned_out_reaches_the_same_result(scripted, embedder):
    scripted.reply = world
    here = asyncio.run(_refinement(embedder, 600).run())
    paid = len(scripted.calls)
    scripted.calls.clear()
    chunks: list[int] = []

    def runner(batch):
        chunks.append(len(batch))
        return in_process(pickle.loads(pickle.dumps(list(batch))))

    fanned = asyncio.run(_refinement(embedder, 600, fan_out=FanOut(
        runner, ModelSpec("scripted/x"), chunk=3)).run())
    assert fanned.workflow.version_id == here.workflow.version_id
    assert (fanned.mass_before, fanned.mass_after) == (here.mass_before, here.mass_after)
    assert [a.op for a in fanned.accepted] == [a.op for a in here.accepted]
    assert fanned.llm_calls == here.llm_calls == paid == len(scripted.calls)
    assert (fanned.verification_calls, fanned.verification_replayed) == (
        here.verification_calls, here.verification_replayed)
    assert max(chunks) > 1  # the evaluations were fanned out in several chunks


def test_a_fanned_out_refinement_stays_within_its_budget(scripted, embedder):
    scripted.reply = world
    result = asyncio.run(_refinement(embedder, 80, fan_out=FanOut(
        in_process, ModelSpec("scripted/x"), chunk=4)).run())
    assert result.llm_calls <= 80 and len(scripted.calls) <= 80
    assert result.stop_reason.startswith("budget")


def test_the_night_runner_is_configuration_not_code(tmp_path, monkeypatch):
    import yaml

    from cegraph.flows.nightly import night_flow

    monkeypatch.chdir(tmp_path)
    assert type(night_flow().task_runner).__name__ == "ThreadPoolTaskRunner"  # the default
    (tmp_path / "cegraph.toml").write_text(
        '[night]\nrunner = "dask"\ndask_address = "tcp://10.0.0.5:8786"\n')
    assert night_flow().task_runner.address == "tcp://10.0.0.5:8786"
    monkeypatch.setenv("CEGRAPH_NIGHT_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    assert night_flow().task_runner.address == "tcp://127.0.0.1:8786"
    # the deployment variant for a Dask cluster sets only environment variables
    root = __import__("pathlib").Path(__file__).parents[1]
    [dask] = [d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
              if d["name"] == "nightly-refinement-dask"]
    env = dask["work_pool"]["job_variables"]["env"]
    assert env["CEGRAPH_NIGHT_RUNNER"] == "dask" and "CEGRAPH_NIGHT_DASK_ADDRESS" in env
    path, name = dask["entrypoint"].split(":")
    assert (root / path).is_file() and f"\n{name} = night_flow()" in (root / path).read_text()


def test_the_readme_night_settings_move_a_night_to_a_cluster(tmp_path, monkeypatch):
    import re

    from cegraph.config import Settings
    from cegraph.flows.nightly import night_flow

    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    [toml] = re.findall(r"```toml\n(.*?)```", readme, re.S)
    (tmp_path / "cegraph.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    night = Settings.load().night
    assert (night.runner, night.api_base) == ("dask", "http://model-server:8080/v1")
    assert night_flow().task_runner.address == "tcp://scheduler:8786"


def test_bench_night_runs_the_same_night_in_process_and_fanned_out(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from cegraph.cli.main import app

    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["bench", "night", "--runner", "threads", "--inputs", "12",
                                   "--json"])
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output.strip().splitlines()[-1])
    local, fanned = figures["nights"]
    assert local["decision"] == fanned["decision"] and local["runs"] == fanned["runs"] > 0
    assert local["calls"] == fanned["calls"] and fanned["tasks"] > 0 == local["tasks"]


def test_credentials_travel_with_a_chunk_but_never_show(monkeypatch):
    from cegraph.config import Settings
    from cegraph.credentials import Credentials, forwarded
    from cegraph.flows.nightly import served

    monkeypatch.setenv("OPENAI_API_KEY", "sk-flow")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    monkeypatch.setenv("AWS_REGION_NAME", "eu-west-1")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    # a server at api_base: the OpenAI key; a hosted model: its provider's; plus the named
    assert served("openai/x", "http://m:8080/v1").credentials.values == {
        "OPENAI_API_KEY": "sk-flow"}
    spec = served("anthropic/claude-3-5-haiku-latest", None, ["AWS_REGION_NAME"])
    assert spec.credentials.values == {"ANTHROPIC_API_KEY": "sk-ant",
                                       "AWS_REGION_NAME": "eu-west-1"}
    assert forwarded(["gemini/gemini-2.0-flash"]).values == {}  # the worker's own, if any
    chunk = Chunk("c", seed("math").model_dump_json(), [], spec)
    assert "sk-ant" not in repr(chunk) and "ANTHROPIC_API_KEY" in repr(chunk)
    got = pickle.loads(pickle.dumps(chunk)).model.credentials
    assert got == spec.credentials
    # on the worker they are set where litellm reads them, the flow's value winning
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-worker-stale")
    got.apply()
    assert __import__("os").environ["ANTHROPIC_API_KEY"] == "sk-ant"
    assert Credentials({"OPENAI_API_KEY": "sk-x"}) != Credentials()
    monkeypatch.setenv("CEGRAPH_NIGHT_FORWARD_ENV", "AWS_REGION_NAME, AWS_PROFILE")
    assert Settings.load().night.forward_env == ["AWS_REGION_NAME", "AWS_PROFILE"]


def test_journals_of_chunks_this_process_ran_are_pruned():
    from cegraph.tasks import batch

    batch.LOCAL.add("lost-attempt", {"key": "k"})  # an attempt that raised left it behind
    batch.LOCAL.add("other-night", {"key": "k2"})
    batch.prune_journals_task.fn(["lost-attempt"])
    assert batch.LOCAL.read("lost-attempt") == []
    assert batch.LOCAL.read("other-night") == [{"key": "k2"}]  # another night's stays
    batch.LOCAL.forget(["other-night"])
