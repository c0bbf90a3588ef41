"""Crash consistency, re-grades, infrastructure outcomes, pool keys and replay-safe keys of
the warehouse."""

from dataclasses import replace

import pytest

from cegraph.evaluators import EVALUATOR_VERSION
from cegraph.fss.failure import failure_from_trace
from cegraph.fss.signature import SignatureBuilder
from cegraph.infrastructure import INFRASTRUCTURE
from cegraph.llm import LLM
from cegraph.storage import VectorIndex, Warehouse, history  # noqa: F401  (history patched)
from tests.conftest import half_right_traces as traces

STORE = {"night_id": "n1", "source": "benchmark", "dataset": "gsm8k", "model": "m"}




def pool(wh):
    return (wh.run_count("math-solver"), len(wh.failures("math-solver")),
            wh.rows("SELECT count(*) FROM spans")[0][0])


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("step", ["after runs", "after spans", "before the marker"])
def test_a_crash_at_any_step_of_a_batch_shows_nothing_and_a_rerun_repairs_it(
        tmp_path, scripted, monkeypatch, step):
    done = traces(scripted)
    real_write, real_commit = history.write, Warehouse._commit
    written: list[str] = []

    def write(root, table, data, **kw):
        if (step, table) in (("after runs", "spans"), ("after spans", "failures")):
            raise Crash(step)
        written.append(table)
        return real_write(root, table, data, **kw)

    def commit(self, *args):
        raise Crash(step)

    monkeypatch.setattr(history, "write", write)
    monkeypatch.setattr(Warehouse, "_commit", commit)
    with Warehouse(tmp_path) as wh, pytest.raises(Crash):
        wh.record_traces(done, **STORE)
    assert written  # files of the batch did reach the disk ...
    with Warehouse(tmp_path) as wh:
        assert pool(wh) == (0, 0, 0)  # ... but none of it is visible
    monkeypatch.setattr(history, "write", real_write)
    monkeypatch.setattr(Warehouse, "_commit", real_commit)
    with Warehouse(tmp_path) as wh:
        assert len(wh.record_traces(done, **STORE)) == 3
        assert pool(wh) == (6, 3, 12)  # 3/6 failed, not 0/6
        assert wh.record_traces(done, **STORE) == []  # and a replay stays deduplicated
        assert pool(wh) == (6, 3, 12)


def test_signature_vectors_reach_lancedb_before_the_rows_that_mark_them_known(
        tmp_path, scripted, embedder, monkeypatch):
    failures = [f for f in map(failure_from_trace, traces(scripted)) if f]
    sigs = SignatureBuilder(embedder).build(failures)
    record = {"embedding_model": "mini", "locus_weight": 0.3}
    real_add, real_insert = VectorIndex.add, Warehouse.insert

    def crash_on_signatures(self, table, rows, **kw):
        if table == "signatures":
            raise Crash("between vectors and rows")
        return real_insert(self, table, rows, **kw)

    def crash_adding(self, *a, **kw):
        raise Crash("while adding vectors")

    for i, patch in enumerate(((Warehouse, "insert", crash_on_signatures),
                               (VectorIndex, "add", crash_adding))):
        home = tmp_path / str(i)
        monkeypatch.setattr(*patch)
        with Warehouse(home) as wh, pytest.raises(Crash):
            wh.record_signatures(failures, sigs, **record)
        monkeypatch.setattr(Warehouse, "insert", real_insert)
        monkeypatch.setattr(VectorIndex, "add", real_add)
        with Warehouse(home) as wh:
            wh.record_signatures(failures, sigs, **record)  # the rerun
            known = wh.known_signatures([f.failure_id for f in failures])
            index = VectorIndex(wh.vectors_path, len(sigs[0].vector))
            assert len(known) == 3 and len(index) == 3
            assert all(index.vector_of(fid) is not None for fid in known)


def test_infrastructure_errors_are_their_own_outcome_and_a_healthy_rerun_replaces_them(
        tmp_path, scripted):
    scripted.fail_first = 10**6  # the provider is down for the whole night
    down = traces(scripted, LLM("scripted/m", max_retries=0))
    assert {t.outcome.failure_class for t in down} == {INFRASTRUCTURE}
    with Warehouse(tmp_path) as wh:
        assert wh.record_traces(down, **STORE) == []  # no failure enters the pool
        assert wh.rows("SELECT DISTINCT outcome FROM runs") == [(INFRASTRUCTURE,)]
        assert wh.rows("SELECT bool_and(infrastructure) FROM spans WHERE error IS NOT NULL") \
            == [(True,)]
        assert wh.run_count("math-solver") == 0  # and no run enters the mass
        scripted.fail_first = 0
        assert len(wh.record_traces(traces(scripted), **{**STORE, "night_id": "n2"})) == 3
        assert pool(wh) == (6, 3, 12)
        # the outage stays in the audit trail, superseded
        assert wh.rows("SELECT outcome, superseded, count(*) FROM runs_all GROUP BY ALL "
                       "ORDER BY ALL") == [(INFRASTRUCTURE, True, 6), ("pass", False, 3),
                                           ("wrong_answer", False, 3)]
        # an outage after a real verdict does not replace it
        scripted.fail_first = 10**6
        assert wh.record_traces(traces(scripted, LLM("scripted/m", max_retries=0)),
                                **STORE) == []
        assert pool(wh) == (6, 3, 12)


def test_budget_stop_is_infrastructure_not_a_failure(scripted):
    from cegraph.llm import Meter

    llm = LLM("scripted/m", meter=Meter(max_tokens=1))
    done = traces(scripted, llm)
    assert len(done) == 6 and {t.outcome.failure_class for t in done} == {INFRASTRUCTURE}
    assert "BudgetExceeded" in done[-1].outcome.message


def test_a_newer_evaluator_regrades_stored_runs_and_keeps_the_old_verdicts(tmp_path, scripted):
    old = traces(scripted)
    assert {t.outcome.evaluator_version for t in old} == {EVALUATOR_VERSION}
    with Warehouse(tmp_path) as wh:
        first = wh.record_traces(old, **STORE)
        # a fixed grader now accepts t1 and rejects t0 with a new message
        regraded = [replace(t, outcome=replace(t.outcome, evaluator_version="next"))
                    for t in old]
        regraded[1].outcome.passed, regraded[1].outcome.failure_class = True, None
        regraded[0].outcome.passed, regraded[0].outcome.failure_class = False, "wrong_answer"
        regraded[0].outcome.message = "expected 1, got 1.0"
        second = wh.record_traces(regraded, **{**STORE, "night_id": "n2"})
        assert len(second) == 3 and not {f.failure_id for f in first} & \
            {f.failure_id for f in second}
        assert pool(wh) == (6, 3, 12)
        assert {f.task_id for f in wh.failures("math-solver")} == {"t0", "t3", "t5"}
        assert wh.rows("SELECT DISTINCT evaluator_version FROM runs") == [("next",)]
        assert wh.rows("SELECT count(*) FROM runs_all WHERE superseded") == [(6,)]
        assert wh.rows("SELECT count(*) FROM failures_all WHERE superseded") == [(3,)]
        assert wh.record_traces(regraded, **STORE) == []  # same version: a plain replay


def test_pools_are_keyed_on_model_and_dataset(tmp_path, scripted):
    with Warehouse(tmp_path) as wh:
        wh.record_traces(traces(scripted), **STORE)
        other = [replace(t, run_id=t.run_id + "-b") for t in traces(scripted)]
        wh.record_traces(other, **{**STORE, "model": "big"})
        assert wh.run_count("math-solver") == 12
        assert wh.run_count("math-solver", model="m", dataset="gsm8k") == 6
        assert wh.run_count("math-solver", model="m", dataset="math") == 0
        assert len(wh.failures("math-solver", model="big")) == 3
        assert wh.rows("SELECT DISTINCT model, dataset, source FROM failures ORDER BY 1") == [
            ("big", "gsm8k", "benchmark"), ("m", "gsm8k", "benchmark")]


def test_keyed_tables_do_not_duplicate_a_retried_insert(tmp_path):
    rows = {
        "edits": {"edit_id": "e1", "status": "proposed"},
        "verifications": {"verification_id": "v1", "edit_id": "e1"},
        "gate_results": {"gate_id": "g1", "success": True},
        "deployments": {"deployment_id": "d1", "version_id": "v"},
        "failure_mode_members": {"night_id": "n", "mode_id": "m", "failure_id": "f"},
    }
    with Warehouse(tmp_path) as wh:
        for table, row in rows.items():
            wh.insert(table, [row])
            wh.insert(table, [row, row])  # the retried task
            assert wh.rows(f"SELECT count(*) FROM {table}") == [(1,)], table
        wh.insert("edits", [{"edit_id": "e1", "status": "verified"}], upsert=True)
        assert wh.rows("SELECT status FROM edits") == [("verified",)]
        for _ in range(2):
            wh.quarantine(source="in.jsonl", line_no=3, raw="{", reason="bad json")
        assert wh.rows("SELECT count(*) FROM quarantine") == [(1,)]
