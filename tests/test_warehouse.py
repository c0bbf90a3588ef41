"""The warehouse: catalog, Parquet history, migrations, LanceDB, and the read-only SQL CLI."""


import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.fss.signature import SignatureBuilder
from cegraph.llm import LLM
from cegraph.storage import VectorIndex, Warehouse
from cegraph.storage.schema import SCHEMA_VERSION, TABLES
from tests.conftest import half_right_traces as traces


def test_traces_are_stored_once_and_survive_reopen(tmp_path, scripted):
    with Warehouse(tmp_path) as wh:
        failures = wh.record_traces(traces(scripted), night_id="n1", source="benchmark",
                                    dataset="gsm8k", model="m")
        assert len(failures) == 3
        assert wh.record_traces(traces(scripted), night_id="n2", source="benchmark",
                                dataset="gsm8k", model="m") == []  # same run ids: counted once
    with Warehouse(tmp_path, read_only=True) as wh:
        assert wh.rows("SELECT count(*), sum(passed::INT) FROM runs") == [(6, 3)]
        assert wh.rows("SELECT count(*) FROM spans")[0][0] == 12
        joined = wh.rows("SELECT f.message FROM failures f JOIN runs r USING (run_id) "
                         "WHERE r.task_id = 't1'")
        assert joined == [("expected 2, got 12",)]
        assert wh.run_count("math-solver") == 6
    assert list((tmp_path / "history" / "runs").glob("date=*/part-*.parquet"))


def test_call_store_in_the_catalog_replays(tmp_path, scripted):
    with Warehouse(tmp_path) as wh:
        traces(scripted, LLM("scripted/m", store=wh))
        made = len(scripted.calls)
    with Warehouse(tmp_path) as wh:
        llm = LLM("scripted/m", store=wh)
        again = traces(scripted, llm)
        assert len(scripted.calls) == made and llm.meter.calls == 0
        assert sum(t.outcome.passed for t in again) == 3
        assert wh.rows("SELECT count(*) FROM llm_calls")[0][0] == made


def test_migration_from_previous_schema_version(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cegraph.storage.schema import arrow_schema

    with Warehouse(tmp_path, target_version=2) as old:  # through every later migration
        assert old.schema_version() == 2
        old.con.execute("INSERT INTO signatures (failure_id, text) VALUES ('f1', 'kept')")
        old.con.execute("INSERT INTO edits (edit_id, status) VALUES ('e1', 'a'), ('e1', 'a')")
        old.con.execute("INSERT INTO nights (night_id, workflow) VALUES ('n', 'w')")
        cols = {r[0] for r in old.rows("SELECT column_name FROM information_schema.columns "
                                       "WHERE table_name = 'nights'")}
        assert "model" not in cols
    # a history file from before v3: no batch id, no model; it counts as committed
    legacy = pa.schema([f for f in arrow_schema("runs") if f.name not in
                        ("model", "evaluator_version", "batch_id")])
    folder = tmp_path / "history" / "runs" / "date=2024-01-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"run_id": "r0", "workflow": "w", "passed": True,
                                          "outcome": "pass"}], schema=legacy),
                   folder / "part-old.parquet")
    with Warehouse(tmp_path) as new:
        assert new.schema_version() == SCHEMA_VERSION
        assert new.rows("SELECT text FROM signatures") == [("kept",)]
        assert new.rows("SELECT count(*) FROM edits") == [(1,)]  # deduplicated, then keyed
        new.insert("edits", [{"edit_id": "e1", "status": "b"}])
        assert new.rows("SELECT status FROM edits") == [("a",)]
        assert new.rows("SELECT night_id, model, recipe FROM nights") == [("n", None, None)]
        assert new.rows("SELECT run_id, model, batch_id FROM runs") == [("r0", None, None)]
        tables = {r[0] for r in new.rows("SELECT table_name FROM information_schema.tables")}
        assert {t.name for t in TABLES if not t.history} <= tables


def test_embedding_cache_and_vectors_persist(tmp_path, embedder, scripted):
    from cegraph.fss.failure import failure_from_trace

    with Warehouse(tmp_path) as wh:
        failures = [f for f in map(failure_from_trace, traces(scripted)) if f]
        builder = SignatureBuilder(embedder, cache=wh)
        sigs = builder.build(failures)
        index = VectorIndex(wh.vectors_path, builder.dim)
        assert index.add(sigs, workflow="math-solver", version_id="v") == 3
        assert index.add(sigs, workflow="math-solver", version_id="v") == 0  # idempotent
    with Warehouse(tmp_path) as wh:
        calls = embedder.calls
        again = SignatureBuilder(embedder, cache=wh).build(failures)
        assert embedder.calls == calls
        index = VectorIndex(wh.vectors_path, builder.dim)
        near = index.nearest(again[0].vector, k=2, workflow="math-solver")
        assert near[0].failure_id == failures[0].failure_id and near[0].distance < 1e-3
        assert index.count_within(again[0].vector, 0.01) == 3  # all share one signature
        assert index.nearest(np.zeros(builder.dim), k=5, workflow="other") == []
        wh.record_failures(failures, night_id="n", model="m", dataset="gsm8k", source="x")
    out = runner.invoke(app, ["similar", failures[1].failure_id, "--k", "2", "--home",
                              str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "2 failures nearest" in out.output and "expected" in out.output
    missing = runner.invoke(app, ["similar", "nope", "--home", str(tmp_path)])
    assert missing.exit_code == 2 and "has no signature yet" in missing.output


runner = CliRunner()


def test_sql_is_read_only_and_formats(tmp_path, scripted):
    with Warehouse(tmp_path) as wh:
        wh.record_traces(traces(scripted), night_id="n1", source="benchmark", dataset="gsm8k",
                         model="m")
    ok = runner.invoke(app, ["sql", "SELECT outcome, count(*) AS n FROM runs GROUP BY 1 "
                             "ORDER BY 1", "--home", str(tmp_path), "--format", "json"])
    assert ok.exit_code == 0, ok.output
    assert '"outcome": "pass"' in ok.output and '"n": 3' in ok.output
    csv = runner.invoke(app, ["sql", "SELECT 1 AS a", "--home", str(tmp_path), "-f", "csv"])
    assert csv.output.splitlines() == ["a", "1"]
    for write in ("DELETE FROM llm_calls", "CREATE TABLE x (a INT)",
                  "INSERT INTO quarantine (reason) VALUES ('x')"):
        refused = runner.invoke(app, ["sql", write, "--home", str(tmp_path)])
        assert refused.exit_code == 2 and "only a read statement" in refused.output, \
            refused.output


def test_sql_without_a_home_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["sql", "SELECT 1", "--home", str(tmp_path / "none")])
    assert result.exit_code == 2 and "cegraph demo" in result.output


@pytest.mark.parametrize("cmd", [[], ["model"], ["workflow"], ["bench"], ["sql"], ["modes"],
                                 ["demo"], ["evaluate"], ["nightly"], ["register"],
                                 ["report"], ["run"], ["bench", "seed"], ["bench", "fss"]])
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_docs_schema_is_generated_from_the_code():
    from pathlib import Path

    from cegraph.storage.schema import markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
    assert doc.read_text().strip() == markdown().strip(), "run: cegraph schema --markdown > " \
        "docs/schema.md"


def test_vector_index_is_built_and_kept_current(tmp_path, monkeypatch):
    import cegraph.storage.vectors as vectors
    from cegraph.fss.signature import Signature

    monkeypatch.setattr(vectors, "INDEX_MIN_ROWS", 400)
    rng = np.random.default_rng(0)

    def sigs(start, n):
        vecs = rng.normal(0, 1, (n, 16)).astype(np.float32)
        return [Signature(f"f{start + i}", "n", "Op", 1, "c", "t", "h", v)
                for i, v in enumerate(vecs)]

    index = VectorIndex(tmp_path, 16)
    first = sigs(0, 300)
    index.add(first, workflow="w", version_id="v")
    assert not index.has_index()
    index.add(sigs(300, 200), workflow="w", version_id="v")
    assert index.has_index()
    index.add(sigs(500, 100), workflow="w", version_id="v")  # > 10% unindexed: folded in
    name = index._index_name()
    assert index.table.index_stats(name).num_unindexed_rows == 0
    assert index.nearest(first[7].vector, k=1, nprobes=64)[0].failure_id == "f7"


def test_run_and_workflow_commands(tmp_path, scripted):
    scripted.reply = lambda messages: "\\boxed{3}"
    result = runner.invoke(app, ["run", "math", "-d", "gsm8k", "--n", "2", "-m", "scripted/m"])
    assert result.exit_code == 0, result.output
    assert "traces" in result.output and "wrong_answer" in result.output
    from cegraph.seeds import seed as load_seed

    wf = load_seed("math")
    edited = wf.model_copy(update={"nodes": [
        wf.nodes[0].model_copy(update={"params": {"max_tokens": 1024}}), wf.nodes[1]]})
    edited.save(tmp_path / "edited.yaml")
    ok = runner.invoke(app, ["workflow", "validate", str(tmp_path / "edited.yaml")])
    assert ok.exit_code == 0 and edited.version_id in ok.output
    diff = runner.invoke(app, ["workflow", "diff", "math", str(tmp_path / "edited.yaml")])
    assert "~ node solve: param max_tokens: None -> 1024" in diff.output
    (tmp_path / "bad.yaml").write_text("name: x\nnodes:\n  - {id: a, op: Nope}\noutput: a\n")
    bad = runner.invoke(app, ["workflow", "validate", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "unknown operator 'Nope'" in bad.output


def _home_with_runs(tmp_path, scripted):
    with Warehouse(tmp_path) as wh:
        wh.record_traces(traces(scripted), night_id="n1", source="benchmark", dataset="gsm8k",
                         model="m")
    return str(tmp_path)


@pytest.mark.parametrize("attack, why", [
    ("COPY (SELECT * FROM runs) TO '{home}/history/runs/date=2020-01-01/forged.parquet'",
     "COPY statement"),
    ("SELECT * FROM read_csv('/etc/passwd')", "files and extensions are off limits"),
    ("SELECT * FROM read_csv('{home}/history/../catalog.duckdb.wal')",
     "files and extensions are off limits"),
    ("SELECT 1; SELECT 2", "one statement per call, got 2"),
    ("SELECT 1; DROP VIEW runs", "one statement per call, got 2"),
    ("INSTALL httpfs", "LOAD statement"),
    ("LOAD httpfs", "LOAD statement"),
    ("CREATE TEMP VIEW runs AS SELECT 1 AS passed", "CREATE statement"),
    ("SET enable_external_access = true", "SET statement"),
    ("SET lock_configuration = false", "SET statement"),
    ("ATTACH '/tmp/other.duckdb'", "ATTACH statement"),
    ("SELECT * FROM query('COPY (SELECT 1) TO ''/tmp/x.csv''')", "SELECT statement"),
])
def test_sql_audit_refuses_every_way_out(tmp_path, scripted, attack, why):
    home = _home_with_runs(tmp_path, scripted)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    out = runner.invoke(app, ["sql", attack.format(home=home), "--home", home])
    assert out.exit_code == 2 and why in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    ok = runner.invoke(app, ["sql", "SELECT sum(passed::INT) || '/' || count(*) AS r FROM runs",
                             "--home", home, "-f", "csv"])
    assert ok.output.splitlines() == ["r", "3/6"]


def test_sql_audit_still_reads_the_history_views_and_catalog(tmp_path, scripted):
    home = _home_with_runs(tmp_path, scripted)
    for query, expected in [
            ("SELECT count(*) AS n FROM spans", "12"),
            ("SELECT count(*) AS n FROM failures f JOIN runs r USING (run_id)", "3"),
            ("SELECT count(*) AS n FROM runs_all WHERE NOT superseded", "6"),
            ("WITH x AS (SELECT DISTINCT model FROM runs) SELECT model AS n FROM x", "m"),
            ("SELECT count(*) AS n FROM batches", "1"),
            ("FROM (SELECT 7 AS n)", "7")]:
        out = runner.invoke(app, ["sql", query, "--home", home, "-f", "csv"])
        assert out.exit_code == 0 and out.output.splitlines() == ["n", expected], \
            (query, out.output)
    described = runner.invoke(app, ["sql", "DESCRIBE runs", "--home", home, "-f", "csv"])
    assert described.exit_code == 0 and "evaluator_version" in described.output


def test_sql_on_a_catalog_held_by_a_running_job_is_one_line(tmp_path, scripted):
    import subprocess
    import sys

    home = _home_with_runs(tmp_path, scripted)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", str(tmp_path / "catalog.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = runner.invoke(app, ["sql", "SELECT 1", "--home", home])
    finally:
        holder.communicate("")
    assert out.exit_code == 2 and "locked by a running job" in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_history_views_are_bound_once_a_table_has_files(tmp_path, scripted, monkeypatch):
    """Binding the views reads every history file's footer: a write re-binds them only when
    a table gets its first file, and later batches are still visible."""
    done = traces(scripted)
    with Warehouse(tmp_path) as wh:
        binds = []
        real = Warehouse.refresh_views
        monkeypatch.setattr(Warehouse, "refresh_views",
                            lambda self: (binds.append(1), real(self))[1])
        wh.record_traces(done[:3], night_id="n1", source="benchmark", dataset="gsm8k",
                         model="m")
        first = len(binds)
        assert first == 1 and wh.rows("SELECT count(*) FROM runs") == [(3,)]
        wh.record_traces(done[3:], night_id="n2", source="benchmark", dataset="gsm8k",
                         model="m")
        assert len(binds) == first  # no table got its first file
        assert wh.rows("SELECT count(*) FROM runs") == [(6,)]
        assert wh.rows("SELECT count(*) FROM spans") == [(12,)]


@pytest.mark.parametrize("value", [
    {}, {"input": "What is 2+3?"}, {"output": "".join(map(chr, range(128)))},
    {"input": "wörld \u2028 \ud83d\ude00 \x7f"}, {"input": 3, "n": [1, "a"]}, {"k\n": "v\"\\"}])
def test_a_steps_json_is_written_as_json_dumps_writes_it(value):
    from cegraph.storage.warehouse import _json_text

    assert _json_text(value) == json.dumps(value, default=str)
