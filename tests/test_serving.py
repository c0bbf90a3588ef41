"""The demo's production service: GenAI spans emitted through the OpenTelemetry SDK for N
answered questions are ingested into runs, spans and failures without loss."""

from __future__ import annotations

import json
import re

from cegraph.flows.ingest import ingest_logs
from cegraph.llm import LLM
from cegraph.seeds import seed
from cegraph.serving import OtlpJsonFileExporter, Service, ingest_mapping
from cegraph.storage import Warehouse
from cegraph.task import Task

TASKS = [Task(f"q{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(9)]


def reply(messages: list[dict[str, str]]) -> str:
    """Right on i % 3 == 0, no number on i % 3 == 1, off by ten on i % 3 == 2."""
    i = int(re.search(r"What is (\d+) \+ 1\?", messages[-1]["content"]).group(1))
    return [f"\\boxed{{{i + 1}}}", "I cannot tell.", f"\\boxed{{{i + 11}}}"][i % 3]


def test_spans_of_n_answers_are_ingested_without_loss(scripted, tmp_path):
    scripted.reply = reply
    wf = seed("math")
    log = tmp_path / "logs" / "service.otlp.jsonl"
    with Service(wf, LLM("scripted/x"), OtlpJsonFileExporter(log)) as service:
        traces = service.answer_all(TASKS)
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["resourceSpans"] for line in lines)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(ingest_mapping(wf.name))

    result = ingest_logs(paths=[str(log)], home=str(tmp_path / "h"), mapping=str(mapping))
    s = result.summary
    assert s["lines_read"] == s["lines_stored"] == len(lines) and not s["quarantined"]
    assert s["runs_stored"] == len(TASKS) and not result.unmapped

    with Warehouse(tmp_path / "h", read_only=True) as wh:
        runs = {r["task_id"]: r for r in wh.query(
            "SELECT task_id, workflow, version_id, passed, outcome, output, message, "
            "source FROM runs").to_pylist()}
        failures = {r["task_id"]: r for r in wh.query(
            "SELECT task_id, failure_class, message, expected, locus_node, locus_operator "
            "FROM failures").to_pylist()}
        spans = wh.query("SELECT r.task_id, s.node_id, s.operator, s.tokens_in, s.tokens_out, "
                         "len(s.call_keys) AS calls FROM spans s JOIN runs r USING (run_id) "
                         "ORDER BY r.task_id, s.position").to_pylist()
    assert set(runs) == {t.id for t in TASKS}
    for t in traces:
        run, o = runs[t.task_id], t.outcome
        assert (run["workflow"], run["version_id"]) == (wf.name, wf.version_id)
        assert (run["passed"], run["output"], run["source"]) == (o.passed, t.output,
                                                                 "production")
        assert run["outcome"] == ("pass" if o.passed else o.failure_class)
        if not o.passed:
            f = failures[t.task_id]
            assert (f["failure_class"], f["message"], f["expected"]) == (
                o.failure_class, o.message, o.expected)
            assert f["locus_operator"] in {s.operator for s in t.spans}
        got = [(s["node_id"], s["operator"], s["tokens_in"], s["tokens_out"], s["calls"])
               for s in spans if s["task_id"] == t.task_id]
        assert got == [(n.node_id, n.operator, n.tokens_in, n.tokens_out, len(n.calls))
                       for n in t.spans if not n.skipped]
    assert {f["failure_class"] for f in failures.values()} == {"no_answer", "wrong_answer"}
    assert len(failures) == sum(not t.outcome.passed for t in traces) == 6


def test_cli_answer_logs_spans_that_cli_ingest_reads(scripted, tmp_path):
    from typer.testing import CliRunner

    from cegraph.cli.main import app

    scripted.reply = reply
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in range(6)))
    home, log = tmp_path / "h", tmp_path / "logs" / "a.otlp.jsonl"
    out = CliRunner().invoke(app, ["answer", "--dataset", "gsm8k", "--data", str(data),
                                   "--n", "6", "--model", "scripted/x", "--out", str(log),
                                   "--home", str(home)])
    assert out.exit_code == 0, out.output
    command = out.output.split("ingest them: cegraph ")[1].split()
    out = CliRunner().invoke(app, [*command, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["runs_stored"] == 6
