"""Per-record fault isolation: whatever a record holds, the worst outcome is that record
quarantined with its reason and raw bytes, the rest stored, and the accounting balanced
(lines read = stored + duplicates + quarantined)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import home_rows as rows
from conftest import ingest_lines as ingest
from otlp_builders import T0, attr, request, span, trace

from cegraph.tasks.ingest import ingest_paths


@pytest.mark.parametrize("field", [
    {"startTimeUnixNano": "abc"},
    {"startTimeUnixNano": "1" + "0" * 30},  # year 3 million
    {"endTimeUnixNano": -5},
    {"attributes": [attr("n", {"intValue": "12abc"})]},
    {"attributes": [attr("n", {"intValue": "9" * 5000})]},
    {"attributes": [attr({"a": 1}, {"stringValue": "x"})]},  # a key that is no name
    {"name": ["not", "a", "name"]},
], ids=["start-not-a-number", "start-absurd", "end-negative", "int-12abc", "int-5000-digits",
        "key-an-object", "name-a-list"])
def test_a_span_with_a_bad_field_is_quarantined_and_the_rest_stored(tmp_path: Path,
                                                                    field: dict) -> None:
    s = ingest(tmp_path, [trace(1, **field), trace(2)])
    assert s["lines_stored"] == 2 and s["runs_stored"] == 2
    assert s["span_faults"] == {"invalid_value": 1}
    [(reason, level, detail, raw)] = rows(tmp_path, "SELECT reason, level, detail, raw "
                                                    "FROM quarantine")
    assert (reason, level) == ("invalid_value", "span") and "0000000000000002" in detail
    assert json.loads(raw) == json.loads(trace(1, **field))  # the raw line, to re-ingest


def test_a_line_whose_every_span_is_bad_is_quarantined(tmp_path: Path) -> None:
    bad = request(span(1, 1, None, startTimeUnixNano="soon"))
    s = ingest(tmp_path, [bad, trace(2)])
    assert s["quarantined"] == {"invalid_value": 1} and s["runs_stored"] == 1


def test_numbers_as_names_and_keys_are_read_as_text(tmp_path: Path) -> None:
    child = span(1, 2, 1, 42)
    child["attributes"].append(attr(7, {"stringValue": "seven"}))
    s = ingest(tmp_path, [request(span(1, 1, None, "run"), child)])
    assert s["runs_stored"] == 1 and s["quarantined"] == {} and s["span_faults"] == {}
    assert rows(tmp_path, "SELECT node_id FROM spans") == [("42",)]
    assert '"7":"seven"' in rows(tmp_path, "SELECT attributes FROM source_spans "
                                            "WHERE name = '42'")[0][0]


def test_token_usage_not_a_number_is_reported_and_the_run_kept(tmp_path: Path) -> None:
    child = span(1, 2, 1, "wf.solve")
    child["attributes"][1] = attr("gen_ai.usage.input_tokens", {"stringValue": "n/a"})
    s = ingest(tmp_path, [request(span(1, 1, None, "run"), child)])
    assert s["runs_stored"] == 1 and s["quarantined"] == {}
    assert s["span_faults"] == {"invalid_value": 1}
    assert rows(tmp_path, "SELECT tokens_in, tokens_out FROM spans") == [(0, 3)]
    [(detail,)] = rows(tmp_path, "SELECT detail FROM quarantine")
    assert "gen_ai.usage.input_tokens" in detail and "'n/a'" in detail


def evaluation(score: dict, label: str | None = None) -> dict:
    attrs = [attr("gen_ai.evaluation.name", {"stringValue": "judge"}),
             attr("gen_ai.evaluation.score.value", score)]
    if label is not None:
        attrs.append(attr("gen_ai.evaluation.score.label", {"stringValue": label}))
    return {"name": "gen_ai.evaluation.result", "timeUnixNano": str(T0), "attributes": attrs}


def test_evaluation_score_not_a_number_is_reported_the_label_still_counts(
        tmp_path: Path) -> None:
    ok = span(1, 1, None, "run", status={}, events=[evaluation({"stringValue": "high"},
                                                               "pass")])
    unlabeled = span(2, 1, None, "run", status={}, events=[evaluation({"stringValue": "high"})])
    s = ingest(tmp_path, [request(ok, span(1, 2, 1)), request(unlabeled, span(2, 2, 1))])
    assert s["runs_stored"] == 2 and s["span_faults"] == {"invalid_value": 2}
    outcomes = rows(tmp_path, "SELECT outcome FROM runs ORDER BY run_id")
    assert outcomes == [("pass",), ("unevaluated",)]  # no readable verdict: no verdict


def test_evaluation_events_grade_the_runs(tmp_path: Path) -> None:
    """`gen_ai.evaluation.result` events are the runs' outcome: failures come from them."""
    lines = [request(span(n, 1, None, "run", status={},
                          events=[evaluation({"doubleValue": score}, label)]), span(n, 2, 1))
             for n, score, label in ((1, 0.9, "pass"), (2, 0.1, "fail"), (3, 0.0, "truncated"))]
    s = ingest(tmp_path, lines)
    assert s["runs_stored"] == 3 and s["span_faults"] == {}
    assert rows(tmp_path, "SELECT failure_class FROM failures ORDER BY run_id") == [
        ("no_answer",), ("truncated",)]  # a failing grade on an empty output: no answer


def jsonl_run(run_id: str, **over: Any) -> str:
    run = {"run_id": run_id, "workflow": "wf", "output": "6",
           "started_at": "2025-06-01T00:00:00Z", "outcome": {"passed": False},
           "spans": [{"node_id": "solve", "output": "6"}]}
    return json.dumps({**run, **over})


@pytest.mark.parametrize("started", [1e20, -1e13, "9999-12-31T00:00:00Z"])
def test_jsonl_time_out_of_range_is_an_invalid_run(tmp_path: Path, started: Any) -> None:
    s = ingest(tmp_path, [jsonl_run("bad", started_at=started), jsonl_run("good"),
                          jsonl_run("tok", spans=[{"node_id": "s", "tokens_in": 10**30}])])
    assert s["quarantined"] == {"invalid_run": 2} and s["runs_stored"] == 1
    details = " ".join(r[0] for r in rows(tmp_path, "SELECT detail FROM quarantine"))
    assert "started_at" in details and "tokens_in" in details


def test_truncated_gzip_keeps_the_readable_tail_in_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl.gz"
    data = gzip.compress("".join(jsonl_run(f"r{i:03d}") + "\n" for i in range(300)).encode())
    path.write_bytes(data[: len(data) * 2 // 3])
    s = ingest_paths(str(tmp_path / "home"), [str(path)]).summary
    assert s["lines_read"] == s["lines_stored"] + sum(s["quarantined"].values())
    assert s["quarantined"] == {"gzip_truncated": 1} and 100 < s["lines_stored"] < 300
    [(line_no, detail, raw)] = rows(tmp_path, "SELECT line_no, detail, raw FROM quarantine")
    assert line_no == s["lines_read"] and "lines after it are lost" in detail
    assert raw.startswith('{"run_id"')  # what was readable of the cut line


def test_corrupt_gzip_says_where_it_broke(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl.gz"
    data = bytearray(gzip.compress("".join(jsonl_run(f"r{i:03d}", output=f"{i}" * 50) + "\n"
                                           for i in range(300)).encode()))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    s = ingest_paths(str(tmp_path / "home"), [str(path)]).summary
    assert s["lines_read"] == s["lines_stored"] + sum(s["quarantined"].values())
    assert set(s["quarantined"]) <= {"gzip_corrupt", "invalid_json", "truncated",
                                     "invalid_run", "not_utf8"}
    assert s["quarantined"].get("gzip_corrupt") == 1 and s["lines_stored"] > 50


def test_a_bom_is_not_a_fault(tmp_path: Path) -> None:
    s = ingest(tmp_path, [b"\xef\xbb\xbf" + jsonl_run("a").encode(), jsonl_run("b")])
    assert s["runs_stored"] == 2 and s["quarantined"] == {}


def test_an_oversized_line_is_quarantined_with_its_head(tmp_path: Path) -> None:
    big = jsonl_run("big", output="x" * 300_000)
    s = ingest(tmp_path, [jsonl_run("a"), big, jsonl_run("b")], max_line=100_000)
    assert s["runs_stored"] == 2 and s["quarantined"] == {"oversized_line": 1}
    [(line_no, detail, raw_bytes)] = rows(tmp_path, "SELECT line_no, detail, raw_bytes "
                                                    "FROM quarantine")
    assert line_no == 2 and str(len(big)) in detail and raw_bytes == 100_000


def test_reading_a_huge_line_keeps_memory_flat(tmp_path: Path) -> None:
    from cegraph.ingest import lines

    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(b'{"a": "')
        for _ in range(64):
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n{"b": 1}\n')
    tracemalloc.start()
    read = [(n, len(raw), cut and cut.reason) for n, raw, cut in
            lines.read(str(path), max_line=1 << 20)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert read == [(1, 1 << 20, "oversized_line"), (2, 8, None)]
    assert peak < 8 * (1 << 20)  # a 64 MiB line, read with a few MiB


def test_log_records_without_ids_are_counted(tmp_path: Path) -> None:
    record = {"eventName": "gen_ai.client.inference.operation.details", "timeUnixNano": "1",
              "attributes": [], "traceId": f"{1:032x}", "spanId": f"{2:016x}"}
    logs = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        record, {**record, "traceId": "", "spanId": ""}]}]}]})
    orphan = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "app log"}, "timeUnixNano": "1"}]}]}]})
    s = ingest(tmp_path, [logs, orphan, trace(1)])
    assert s["span_faults"] == {"missing_id": 1} and s["quarantined"] == {"missing_id": 1}
    assert s["runs_stored"] == 1


def test_an_unforeseen_error_costs_one_line_trace_or_run(tmp_path: Path,
                                                         monkeypatch) -> None:
    from cegraph.ingest import otlp, pipeline
    from cegraph.storage.warehouse import Warehouse as Wh

    real_spans, real_assemble, real_record = otlp.spans, pipeline.assemble, Wh.record_traces

    def spans(obj: dict, **kw: Any) -> Any:
        if "0" * 31 + "3" in json.dumps(obj):
            raise RuntimeError("decoder bug")
        return real_spans(obj, **kw)

    def assemble(spans_: list, *a: Any) -> Any:
        if spans_[0].trace_id.endswith("4"):
            raise KeyError("assembly bug")
        return real_assemble(spans_, *a)

    def record_traces(self: Wh, traces: list, **kw: Any) -> Any:
        if any(t.run_id.endswith("5") for t in traces):
            raise ValueError("storage refused")
        return real_record(self, traces, **kw)

    monkeypatch.setattr(otlp, "spans", spans)
    monkeypatch.setattr(pipeline, "assemble", assemble)
    monkeypatch.setattr(Wh, "record_traces", record_traces)
    s = ingest(tmp_path, [trace(n) for n in range(1, 7)])
    assert s["quarantined"] == {"unreadable": 1}
    assert s["span_faults"] == {"unassemblable": 1, "unstorable": 1}
    assert s["runs_stored"] == 3
    got = dict(rows(tmp_path, "SELECT reason, detail FROM quarantine"))
    assert got["unreadable"] == "RuntimeError: decoder bug"
    assert "assembly bug" in got["unassemblable"] and "refused" in got["unstorable"]
