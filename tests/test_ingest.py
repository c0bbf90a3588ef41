"""Ingesting production logs: formats, lossless accounting, idempotence, crash-rerun, the
Great Expectations gate and the unmapped report (the receiver: test_collect.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cegraph.storage import Warehouse
from cegraph.tasks.ingest import ingest_paths

OTEL = Path(__file__).parent / "fixtures" / "otel"
SPANS = OTEL / "genai_spans.jsonl"
EVENTS = [OTEL / "genai_events.traces.jsonl", OTEL / "genai_events.logs.jsonl"]
OPENINFERENCE = OTEL / "openinference_spans.jsonl"
TABLES = {
    "runs": "SELECT * EXCLUDE (night_id, batch_id) FROM runs ORDER BY run_id",
    "spans": "SELECT * EXCLUDE (batch_id) FROM spans ORDER BY run_id, position",
    "failures": "SELECT * EXCLUDE (batch_id) FROM failures ORDER BY failure_id",
    "source_spans": "SELECT * EXCLUDE (batch_id) FROM source_spans ORDER BY trace_id, span_key",
    "quarantine": "SELECT quarantine_id, source, line_no, reason, detail, level FROM quarantine "
                  "ORDER BY quarantine_id",
    "staged": "SELECT trace_id, span_key FROM staged_spans ORDER BY ALL",
}


def snapshot(home: Path) -> dict[str, list[tuple]]:
    with Warehouse(home, read_only=True) as wh:
        return {name: wh.rows(sql) for name, sql in TABLES.items()}


def rows(home: Path, sql: str) -> list[tuple]:
    with Warehouse(home, read_only=True) as wh:
        return wh.rows(sql)


def test_genai_spans_split_across_lines_become_runs_with_failures(tmp_path: Path) -> None:
    result = ingest_paths(str(tmp_path), [str(SPANS)])
    s = result.summary
    assert s["lines_read"] == 5 and s["lines_stored"] == 5 and s["runs_stored"] == 3
    assert s["staged_incomplete"] == 0 and s["quarantined"] == {}
    runs = rows(tmp_path, "SELECT workflow, source, dataset, outcome, message FROM runs")
    assert {r[:3] for r in runs} == {("math", "production", "production")}
    assert {r[3] for r in runs} == {"wrong_answer", "exception"}
    failures = dict(rows(tmp_path, "SELECT failure_class, locus_node FROM failures "
                                   "WHERE failure_class = 'exception'"))
    assert failures == {"exception": "format"}  # the step span with error status
    # every step's LLM call was read: tokens and messages from the span attributes
    spans = rows(tmp_path, "SELECT node_id, tokens_in, tokens_out, inputs FROM spans")
    assert {s[0] for s in spans} == {"solve", "format"}
    assert all(s[1] > 0 and s[2] > 0 and "What is" in s[3] or s[0] == "format" for s in spans)
    assert rows(tmp_path, "SELECT count(*) FROM source_spans")[0][0] == 15


def test_content_only_in_log_records_is_joined_to_its_span(tmp_path: Path) -> None:
    result = ingest_paths(str(tmp_path), [str(p) for p in EVENTS])
    assert result.summary["runs_stored"] == 3
    solve = rows(tmp_path, "SELECT inputs, outputs FROM spans WHERE node_id = 'solve'")
    assert len(solve) == 3
    assert all("Think step by step" in i and len(json.loads(o)["output"]) > 5 for i, o in solve)
    assert rows(tmp_path, "SELECT count(*) FROM source_spans WHERE kind = 'log'")[0][0] == 6


def test_openinference_in_protobuf_canonical_json(tmp_path: Path) -> None:
    ingest_paths(str(tmp_path), [str(OPENINFERENCE)])
    runs = dict(rows(tmp_path, "SELECT task_id, outcome FROM runs"))
    assert runs == {"q1": "wrong_answer", "q2": "exception"}
    loci = dict(rows(tmp_path, "SELECT task_id, locus_node FROM failures"))
    assert loci["q2"] == "lookup"  # the TOOL span with the exception event
    llm = rows(tmp_path, "SELECT tokens_in, tokens_out, operator FROM spans "
                         "WHERE node_id = 'ChatCompletion'")
    assert all(t_in > 0 and t_out > 0 and op == "llm" for t_in, t_out, op in llm)


def jsonl_run(run_id: str, **over: object) -> dict:
    run = {"run_id": run_id, "workflow": "wf", "task_id": f"t-{run_id}", "input": "2+3?",
           "output": "6", "started_at": "2025-06-01T00:00:00Z", "ended_at": 1748736001.0,
           "model": "m", "outcome": {"passed": False, "message": "expected 5, got 6",
                                     "expected": "5"},
           "spans": [{"node_id": "solve", "output": "6", "tokens_in": 10, "tokens_out": 3}]}
    run.update(over)
    return run


def test_our_jsonl_format_and_its_schema(tmp_path: Path) -> None:
    from cegraph.ingest import jsonl

    committed = json.loads((Path(jsonl.__file__).parent / "run.schema.json").read_text())
    assert committed == jsonl.schema()
    path = tmp_path / "runs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(jsonl_run("r1")) + "\n" + json.dumps(jsonl_run("r2", outcome={
            "passed": True})) + "\n")
    result = ingest_paths(str(tmp_path / "home"), [str(path)], fmt="jsonl")
    assert result.summary["runs_stored"] == 2
    assert rows(tmp_path / "home", "SELECT run_id, outcome, failure_class FROM runs LEFT JOIN "
                "failures USING (run_id) ORDER BY 1") == [("r1", "wrong_answer", "wrong_answer"),
                                                         ("r2", "pass", None)]


def faulty_file(tmp_path: Path) -> Path:
    good = SPANS.read_text().splitlines()
    request = json.loads(good[0])
    spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0] = {**spans[0], "traceId": ""}  # one span loses its trace id, the rest stay
    spans[1]["attributes"].append({"key": "app.blob", "value": {"stringValue": "x" * 300}})
    lines = [json.dumps(request).encode(), *[g.encode() for g in good[1:]],
             good[1].encode(),                                    # duplicate
             b'{"resourceSpans": [',                             # truncated
             b"not json at all",                                 # invalid JSON
             b'{"resourceSpans": [{"scopeSpans": 7}]}',          # not OTLP
             '{"hello": "wörld"}'.encode("latin-1"),              # not UTF-8
             b'{"hello": "world"}',                              # unknown format
             b'{"run_id": "x", "spans": "nope"}']                # breaks the run schema
    path = tmp_path / "faults.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_fault_on_one_file_loses_nothing(tmp_path: Path) -> None:
    path = faulty_file(tmp_path)
    mapping = tmp_path / "map.toml"
    mapping.write_text("[default]\nmax_attribute_chars = 200\n")
    home = tmp_path / "home"
    s = ingest_paths(str(home), [str(path)], mapping=str(mapping)).summary
    assert s["lines_read"] == 12
    assert s["lines_stored"] + s["duplicates"] + sum(s["quarantined"].values()) == 12
    assert s["duplicates"] == 1
    assert s["quarantined"] == {"invalid_json": 1, "truncated": 1, "not_otlp": 1,
                                "not_utf8": 1, "unknown_format": 1, "invalid_run": 1}
    assert s["span_faults"] == {"missing_id": 1, "oversized_attribute": 1}
    reasons = {r[0] for r in rows(home, "SELECT reason FROM quarantine")}
    assert reasons == {"invalid_json", "truncated", "not_otlp", "not_utf8", "unknown_format",
                       "invalid_run", "missing_id", "oversized_attribute"}
    raw = rows(home, "SELECT raw FROM quarantine WHERE reason = 'not_utf8'")[0][0]
    assert "w\\xf6rld" in raw  # the bytes kept, to re-ingest after a fix
    cut = rows(home, "SELECT oversized, length(attributes) FROM source_spans "
                     "WHERE len(oversized) > 0")
    assert cut and cut[0][0] == ["app.blob:300"]
    # the trace that lost a span's id is still assembled from the rest, nothing staged
    assert s["runs_stored"] == 3


def test_reingest_is_a_no_op(tmp_path: Path) -> None:
    path = faulty_file(tmp_path)
    ingest_paths(str(tmp_path / "h"), [str(path), str(OPENINFERENCE)])
    before = snapshot(tmp_path / "h")
    again = ingest_paths(str(tmp_path / "h"), [str(path), str(OPENINFERENCE)]).summary
    assert again["runs_stored"] == 0 and again["lines_stored"] == 0
    assert snapshot(tmp_path / "h") == before


def test_killed_ingest_rerun_equals_clean_run(tmp_path: Path, monkeypatch) -> None:
    inputs = [str(faulty_file(tmp_path)), *map(str, EVENTS), str(OPENINFERENCE)]
    ingest_paths(str(tmp_path / "clean"), inputs, batch_spans=4)
    calls = {"n": 0}
    original = Warehouse.write_batch

    def dies_on_third(self, tables, **kw):  # killed after some files of the 3rd batch
        calls["n"] += 1
        if calls["n"] == 3:
            from cegraph.storage import history
            history.write(self.history_root, "runs", tables["runs"], batch_id=kw["batch_id"])
            raise KeyboardInterrupt("killed")
        return original(self, tables, **kw)

    monkeypatch.setattr(Warehouse, "write_batch", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(str(tmp_path / "killed"), inputs, batch_spans=4)
    monkeypatch.setattr(Warehouse, "write_batch", original)
    ingest_paths(str(tmp_path / "killed"), inputs, batch_spans=4)
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")


def test_gate_fails_a_batch_with_negative_token_counts(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    bad = jsonl_run("neg", spans=[{"node_id": "solve", "output": "6", "tokens_in": -5}])
    path.write_text(json.dumps(bad) + "\n")
    result = ingest_paths(str(tmp_path / "h"), [str(path)])
    assert result.summary["runs_stored"] == 1 and len(result.marked_batches) == 1
    failed = rows(tmp_path / "h", "SELECT expectation, observed FROM gate_results "
                                  "WHERE NOT success")
    assert len(failed) == 1 and "min_tokens" in failed[0][0] and failed[0][1] == "1"
    assert rows(tmp_path / "h", "SELECT gate_passed FROM ingest_batches") == [(False,)]
    from cegraph.storage.ingest import IngestStore

    with Warehouse(tmp_path / "h") as wh:
        assert IngestStore(wh).marked_batches() == set(result.marked_batches)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(jsonl_run("ok")) + "\n")
    assert ingest_paths(str(tmp_path / "h"), [str(good)]).marked_batches == []


def test_unmapped_report_lists_an_unknown_attribute(tmp_path: Path) -> None:
    result = ingest_paths(str(tmp_path), [str(SPANS)])
    assert any(line.startswith("math: app.tenant (3 spans)") for line in result.unmapped)
    stored = rows(tmp_path, "SELECT attribute, count FROM unmapped_attributes "
                            "WHERE workflow = 'math'")
    assert ("app.tenant", 3) in stored
    assert "gen_ai.usage.input_tokens" not in dict(stored)  # read, so mapped
    mapping = tmp_path / "m.toml"
    mapping.write_text('[workflow.math]\ntask_attribute = "app.task_id"\n')
    result = ingest_paths(str(tmp_path / "h2"), [str(SPANS)], mapping=str(mapping))
    assert not any("app.task_id" in line for line in result.unmapped)
    assert {r[0] for r in rows(tmp_path / "h2", "SELECT task_id FROM runs")} == {"q1", "q2",
                                                                                   "q3"}


def test_incomplete_trace_stays_staged_across_ingests(tmp_path: Path) -> None:
    lines = SPANS.read_text().splitlines()
    first, rest = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(lines[0] + "\n")  # three spans of the first run, no root yet
    rest.write_text("\n".join(lines[1:]) + "\n")
    s = ingest_paths(str(tmp_path / "h"), [str(first)]).summary
    assert s["runs_stored"] == 0 and s["staged_incomplete"] == 1 and s["lines_stored"] == 1
    assert rows(tmp_path / "h", "SELECT count(*) FROM staged_spans")[0][0] == 3
    s = ingest_paths(str(tmp_path / "h"), [str(rest)]).summary
    assert s["runs_stored"] == 3 and s["staged_incomplete"] == 0
    assert rows(tmp_path / "h", "SELECT count(*) FROM staged_spans")[0][0] == 0
    assert rows(tmp_path / "h", "SELECT count(*) FROM source_spans")[0][0] == 15


def test_cli_ingest_then_modes_show_production_failures(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cegraph.cli.main import app

    runner = CliRunner()
    home = str(tmp_path / "home")
    result = runner.invoke(app, ["ingest", str(SPANS), *map(str, EVENTS), str(OPENINFERENCE),
                                 "--json", "--home", home])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert {"lines_read", "runs_stored", "spans_stored", "duplicates", "quarantined",
            "staged_incomplete"} <= set(summary)
    assert summary["runs_stored"] == 8 and summary["quarantined"] == {}
    assert "app.tenant" in result.output  # the unmapped report is printed
    nights = rows(tmp_path / "home", "SELECT workflow, source, dataset, failures FROM nights")
    assert {(w, s, d) for w, s, d, _ in nights} == {("math", "production", "production"),
                                                    ("qa-service", "production", "production")}
    assert rows(tmp_path / "home", "SELECT count(*) FROM signatures")[0][0] == 8
    shown = runner.invoke(app, ["modes", "--home", home])
    assert shown.exit_code == 0 and "math" in shown.output and "production" in shown.output
    # nothing usable: exit code 1, still a JSON summary
    junk = tmp_path / "junk.jsonl"
    junk.write_text("nope\n")
    result = runner.invoke(app, ["ingest", str(junk), "--json", "--home", home])
    assert result.exit_code == 1
    assert json.loads(result.output.strip().splitlines()[-1])["quarantined"] == {
        "invalid_json": 1}


def test_bench_ingest_on_a_small_slice() -> None:
    from typer.testing import CliRunner

    from cegraph.cli.main import app

    result = CliRunner().invoke(app, ["bench", "ingest", "--spans", "1000", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["spans_stored"] == 1000 and figures["runs_stored"] == 200
    assert figures["spans_per_s"] > 0 and figures["peak_rss_mb"] > 0
    real = CliRunner().invoke(app, ["bench", "ingest", "--spans", "500", "--shape", "real",
                                    "--json"])
    figures = json.loads(real.output.strip().splitlines()[-1])
    assert figures["spans_stored"] == 500 and 1500 < figures["bytes_per_span"] < 2500
    assert figures["mb_per_s"] > 0
