"""The warehouse: one DuckDB catalog + the Parquet history + the LanceDB vectors, under a
project home (`--home`, env `CEGRAPH_HOME`, default `./.cegraph`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from cegraph.failure import Failure
from cegraph.graph import Workflow
from cegraph.llm import Completion
from cegraph.modes import FailureMode, PreviousMode
from cegraph.signature import Signature
from cegraph.trace import Trace
from storage import history
from storage.schema import SCHEMA_VERSION, TABLE, TABLES, migration

HISTORY_TABLES = tuple(t.name for t in TABLES if t.history)


def default_home() -> Path:
    return Path(os.environ.get("CEGRAPH_HOME") or ".cegraph")


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class SchemaTooNew(RuntimeError):
    pass


class Warehouse:
    """Opens (creating and migrating as needed) the catalog of a project home.

    `read_only=True` opens the catalog so that any write statement fails; the history views
    are temporary views, so they exist in read-only sessions too.
    """

    def __init__(self, home: str | Path | None = None, *, read_only: bool = False,
                 target_version: int = SCHEMA_VERSION) -> None:
        self.home = Path(home) if home else default_home()
        self.catalog_path = self.home / "catalog.duckdb"
        self.history_root = self.home / "history"
        self.vectors_path = self.home / "vectors"
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only and not self.catalog_path.exists():
            raise FileNotFoundError(f"no catalog at {self.catalog_path}; run `cegraph demo` or "
                                    "`cegraph ingest` first, or pass --home")
        self.home.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.catalog_path), read_only=read_only)
        if not read_only:
            self.migrate(target_version)
        self.refresh_views()

    # --- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name='schema_version' "
            "AND table_schema='main'").fetchone()[0]
        if not exists:
            return 0
        return int(self.con.execute("SELECT coalesce(max(version), 0) FROM schema_version")
                   .fetchone()[0])

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the migrations from the catalog's version up to `target`, each atomically."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.catalog_path} has schema v{current}; this cegraph knows "
                               f"v{SCHEMA_VERSION}: upgrade cegraph")
        for version in range(current + 1, target + 1):
            self.con.execute("BEGIN TRANSACTION")
            for stmt in migration(version):
                self.con.execute(stmt)
            self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])
            self.con.execute("COMMIT")
        return self.schema_version()

    def refresh_views(self) -> None:
        for name in HISTORY_TABLES:
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS "
                             f"{history.view_sql(self.history_root, name)}")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries ------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with self._lock:
            relation = self.con.sql(sql, params=list(params) if params else None)
            return relation.to_arrow_table() if relation is not None else pa.table({})

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(sql, params or []).fetchall()

    def _insert(self, table: str, rows: list[dict[str, Any]], *, upsert: bool = False) -> None:
        if not rows:
            return
        arrow = pa.Table.from_pylist(rows)
        # keyed tables: replay-safe (first write wins, or upsert); others append
        verb = ("INSERT" if not TABLE[table].key else
                "INSERT OR REPLACE" if upsert else "INSERT OR IGNORE")
        with self._lock:
            self.con.register("_incoming", arrow)
            try:
                cols = ", ".join(arrow.column_names)
                self.con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _incoming")
            finally:
                self.con.unregister("_incoming")

    # --- history ------------------------------------------------------------------------
    def write_history(self, table: str, data: Any) -> None:
        with self._lock:
            history.write(self.history_root, table, data)
            self.refresh_views()

    def record_traces(self, traces: Sequence[Trace], *, night_id: str, source: str,
                      dataset: str) -> list[Failure]:
        """Store the runs not stored before (a run id is stored once: replays and retries do not
        double-count), their spans and the failures they yield; returns the new failures."""
        from cegraph.failure import failure_from_trace

        seen = self._existing("runs", "run_id", [t.run_id for t in traces])
        traces = [t for t in traces if t.run_id not in seen]
        runs, spans = [], []
        for t in traces:
            o = t.outcome
            runs.append({
                "run_id": t.run_id, "night_id": night_id, "workflow": t.workflow,
                "version_id": t.version_id, "task_id": t.task_id, "dataset": dataset,
                "source": source, "started_at": _ts(t.started), "ended_at": _ts(t.ended),
                "passed": bool(o and o.passed), "outcome": "pass" if o and o.passed else
                (o.failure_class if o else "unevaluated"), "score": o.score if o else 0.0,
                "message": o.message if o else "", "output": t.output, "tokens": t.tokens,
                "cost": t.cost, "llm_calls": t.llm_calls})
            for pos, s in enumerate(t.spans):
                spans.append({
                    "run_id": t.run_id, "node_id": s.node_id, "operator": s.operator,
                    "depth": s.depth, "position": pos,
                    "inputs": json.dumps(s.inputs, default=str),
                    "outputs": json.dumps(s.outputs, default=str),
                    "started_at": _ts(s.started), "latency_s": s.latency_s,
                    "tokens_in": s.tokens_in, "tokens_out": s.tokens_out, "cost": s.cost,
                    "call_keys": [c.key for c in s.calls], "error": s.error,
                    "error_type": s.error_type, "skipped": s.skipped,
                    "truncated": s.truncated})
        failures = [f for f in map(failure_from_trace, traces) if f is not None]
        self.write_history("runs", runs)
        self.write_history("spans", spans)
        self.record_failures(failures)
        return failures

    def record_failures(self, failures: Sequence[Failure]) -> None:
        self.write_history("failures", [
            {**f.__dict__, "created_at": _ts(f.created_at)} for f in failures])

    def failures(self, workflow: str, version_id: str | None = None) -> list[Failure]:
        sql = ("SELECT failure_id, run_id, workflow, version_id, task_id, locus_node, "
               "locus_operator, locus_depth, failure_class, message, expected, observed, "
               "epoch(created_at) FROM failures WHERE workflow = ?")
        params: list[Any] = [workflow]
        if version_id:
            sql += " AND version_id = ?"
            params.append(version_id)
        return [Failure(*row) for row in self.rows(sql + " ORDER BY created_at, failure_id",
                                                   params)]

    def run_count(self, workflow: str, version_id: str | None = None) -> int:
        sql, params = "SELECT count(*) FROM runs WHERE workflow = ?", [workflow]
        if version_id:
            sql += " AND version_id = ?"
            params.append(version_id)
        return int(self.rows(sql, params)[0][0])

    # --- workflows ----------------------------------------------------------------------
    def record_version(self, wf: Workflow, *, created_by: str = "user",
                       parent: str | None = None) -> None:
        self._insert("workflow_versions", [{
            "version_id": wf.version_id, "workflow": wf.name, "parent_version_id": parent,
            "spec": wf.model_dump_json(), "created_by": created_by, "created_at": _now()}])

    # --- signatures and the embedding cache ---------------------------------------------
    def _existing(self, table: str, column: str, values: Sequence[str]) -> set[str]:
        """Which of `values` already appear in `table.column`."""
        if not values:
            return set()
        with self._lock:
            self.con.register("_ids", pa.table({"v": list(values)}))
            try:
                found = self.con.execute(f"SELECT DISTINCT t.{column} FROM {table} t JOIN _ids "
                                         f"ON t.{column} = _ids.v").fetchall()
            finally:
                self.con.unregister("_ids")
        return {r[0] for r in found}

    def known_signatures(self, failure_ids: Sequence[str]) -> set[str]:
        return self._existing("signatures", "failure_id", failure_ids)

    def record_signatures(self, failures: Sequence[Failure], sigs: Sequence[Signature], *,
                          embedding_model: str, locus_weight: float) -> None:
        by_id = {f.failure_id: f for f in failures}
        now = _now()
        self._insert("signatures", [{
            "failure_id": s.failure_id, "run_id": by_id[s.failure_id].run_id,
            "workflow": by_id[s.failure_id].workflow,
            "version_id": by_id[s.failure_id].version_id, "locus_node": s.locus_node,
            "locus_operator": s.locus_operator, "locus_depth": s.locus_depth,
            "failure_class": s.failure_class, "text": s.text, "text_hash": s.text_hash,
            "embedding_model": embedding_model, "vector_id": s.failure_id, "created_at": now,
            "locus_weight": locus_weight} for s in sigs])

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """EmbeddingCache: cached vectors by text hash."""
        if not hashes:
            return {}
        with self._lock:
            self.con.register("_h", pa.table({"text_hash": list(hashes)}))
            try:
                rows = self.con.execute(
                    "SELECT c.text_hash, c.vector FROM embedding_cache c JOIN _h USING "
                    "(text_hash) WHERE c.model = ?", [model]).fetchall()
            finally:
                self.con.unregister("_h")
        return {h: np.asarray(v, dtype=np.float32) for h, v in rows}

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        """EmbeddingCache: store new vectors."""
        self._insert("embedding_cache", [{"model": model, "text_hash": h,
                                          "vector": v.astype(np.float32).tolist()}
                                         for h, v in items.items()])

    # --- failure modes ------------------------------------------------------------------
    def previous_modes(self, workflow: str) -> list[PreviousMode]:
        """The live (not resolved) modes of the latest night of `workflow`."""
        rows = self.rows(
            "SELECT mode_id, centroid, mass, label FROM failure_modes WHERE workflow = ? AND "
            "status <> 'resolved' AND night_id = (SELECT night_id FROM nights WHERE "
            "workflow = ? ORDER BY computed_at DESC LIMIT 1) ORDER BY rank",
            [workflow, workflow])
        return [PreviousMode(m, np.asarray(c, dtype=np.float32), mass, label)
                for m, c, mass, label in rows]

    def record_night(self, *, night_id: str, workflow: str, version_id: str, runs: int,
                     modes: Sequence[FailureMode], resolved: Sequence[PreviousMode],
                     noise_ids: Sequence[str], mass: tuple[float, float, float]) -> None:
        now = _now()
        rows = [{
            "night_id": night_id, "mode_id": m.mode_id, "workflow": workflow,
            "version_id": version_id, "rank": rank, "label": m.label, "status": m.status,
            "previous_mode_id": m.previous_mode_id, "size": m.size, "mass": m.mass,
            "mass_lo": m.mass_lo, "mass_hi": m.mass_hi, "density": m.density,
            "centroid": m.centroid.astype(np.float32).tolist(),
            "representative_failure_ids": m.representative_ids, "locus_node": m.locus_node,
            "locus_operator": m.locus_operator, "template": m.template, "computed_at": now}
            for rank, m in enumerate(modes, start=1)]
        rows += [{
            "night_id": night_id, "mode_id": p.mode_id, "workflow": workflow,
            "version_id": version_id, "rank": None, "label": p.label, "status": "resolved",
            "previous_mode_id": p.mode_id, "size": 0, "mass": 0.0, "mass_lo": 0.0,
            "mass_hi": 0.0, "density": 0.0, "centroid": p.centroid.astype(np.float32).tolist(),
            "representative_failure_ids": [], "locus_node": None, "locus_operator": None,
            "template": None, "computed_at": now} for p in resolved]
        members = [{"night_id": night_id, "mode_id": m.mode_id, "failure_id": f}
                   for m in modes for f in m.failure_ids]
        members += [{"night_id": night_id, "mode_id": "noise", "failure_id": f}
                    for f in noise_ids]
        failures = sum(m.size for m in modes) + len(noise_ids)
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                self._insert("failure_modes", rows, upsert=True)
                self._insert("failure_mode_members", members)
                self._insert("nights", [{
                    "night_id": night_id, "workflow": workflow, "version_id": version_id,
                    "computed_at": now, "runs": runs, "failures": failures,
                    "modes": len(modes), "noise": len(noise_ids), "mass": mass[0],
                    "mass_lo": mass[1], "mass_hi": mass[2]}], upsert=True)
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise

    # --- call store ---------------------------------------------------------------------
    def get(self, key: str) -> Completion | None:
        """CallStore: a stored call by key."""
        rows = self.rows("SELECT key, model, messages, params, sample, text, tokens_in, "
                         "tokens_out, cost, latency_s, finish_reason, epoch(created_at) "
                         "FROM llm_calls WHERE key = ?", [key])
        if not rows:
            return None
        r = rows[0]
        return Completion(r[0], r[1], json.loads(r[2]), json.loads(r[3]), *r[4:])

    def put(self, record: Completion) -> None:
        """CallStore: keep an answered call (the first answer for a key wins)."""
        self._insert("llm_calls", [{
            "key": record.key, "model": record.model, "messages": json.dumps(record.messages),
            "params": json.dumps(record.params, sort_keys=True), "sample": record.sample,
            "text": record.text, "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out, "cost": record.cost,
            "latency_s": record.latency_s, "finish_reason": record.finish_reason,
            "created_at": _ts(record.created_at)}])

    # --- quarantine ---------------------------------------------------------------------
    def quarantine(self, *, source: str, line_no: int, raw: str, reason: str) -> None:
        import uuid

        self._insert("quarantine", [{"quarantine_id": uuid.uuid4().hex, "source": source,
                                     "line_no": line_no, "raw": raw, "reason": reason,
                                     "received_at": _now()}])
