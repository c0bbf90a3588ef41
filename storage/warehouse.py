"""The warehouse: one DuckDB catalog + the Parquet history + the LanceDB vectors, under a
project home (`--home`, env `CEGRAPH_HOME`, default `./.cegraph`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from cegraph.fss.diagnosis import DiagnosisRecord
from cegraph.fss.failure import Failure
from cegraph.fss.modes import FailureMode, PreviousMode
from cegraph.fss.signature import Signature
from cegraph.graph import Workflow
from cegraph.infrastructure import INFRASTRUCTURE
from cegraph.llm import Completion
from cegraph.storage import history, views
from cegraph.storage.schema import SCHEMA_VERSION, TABLE, TABLES, arrow_schema, migration
from cegraph.trace import Trace

SNAPSHOT = Path("snapshot") / "catalog.duckdb"


def default_home() -> Path:
    return Path(os.environ.get("CEGRAPH_HOME") or ".cegraph")



def _of_runs(rows: list[dict[str, Any]] | pa.Table, kept: set[str]
             ) -> list[dict[str, Any]] | pa.Table:
    """The rows (or Arrow table) of the runs in `kept`."""
    if isinstance(rows, pa.Table):
        import pyarrow.compute as pc

        return rows.filter(pc.is_in(rows["run_id"], pa.array(sorted(kept), pa.string())))
    return [r for r in rows if r["run_id"] in kept]

_RUN_COLUMNS = ("run_id", "night_id", "workflow", "version_id", "task_id", "dataset", "source",
                "started_at", "ended_at", "passed", "outcome", "score", "message", "output",
                "tokens", "cost", "llm_calls", "model", "evaluator_version")
_SPAN_COLUMNS = ("run_id", "node_id", "operator", "depth", "position", "inputs", "outputs",
                 "started_at", "latency_s", "tokens_in", "tokens_out", "cost", "call_keys",
                 "error", "error_type", "skipped", "truncated", "infrastructure")


def _table(name: str, names: Sequence[str], rows: list[tuple[Any, ...]]) -> pa.Table:
    """History rows, as tuples in `names` order, as an Arrow table of `name`'s schema
    (converted column by column: a dict per row cost more to convert than to build)."""
    columns = dict(zip(names, map(list, zip(*rows, strict=True)), strict=True)) if rows else {}
    schema = arrow_schema(name)
    return pa.Table.from_pydict({f.name: columns.get(f.name, [None] * len(rows))
                                 for f in schema}, schema=schema)


def _quoted(text: str) -> str:
    """`json.dumps(text)`: orjson writes the same for ASCII without DEL (json escapes DEL,
    orjson does not), about 7x faster on a prompt-sized string."""
    if text.isascii() and "\x7f" not in text:
        return orjson.dumps(text).decode()
    return json.encoder.encode_basestring_ascii(text)  # type: ignore[attr-defined]


def _json_text(value: dict[str, Any]) -> str:
    """`json.dumps(value, default=str)`, the stored form of a step's inputs and outputs,
    written directly for the usual string-to-string dict (the encoder's setup per call cost
    more than the text)."""
    if all(type(k) is str and type(v) is str for k, v in value.items()):
        return "{" + ", ".join(f"{_quoted(k)}: {_quoted(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, default=str)


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _outcome(t: Trace) -> str:
    o = t.outcome
    return "unevaluated" if o is None else "pass" if o.passed else o.failure_class or "unknown"


def _supersedes(trace: Trace, stored: tuple[str, str | None] | None) -> bool:
    """Whether `trace` replaces the stored verdict of its run id (see `record_traces`)."""
    if stored is None:
        return True
    if _outcome(trace) == INFRASTRUCTURE:
        return False
    version = trace.outcome.evaluator_version if trace.outcome else ""
    return stored[0] == INFRASTRUCTURE or stored[1] != version


class SchemaTooNew(RuntimeError):
    pass


class CatalogLocked(RuntimeError):
    """The catalog is held by a running job (DuckDB allows one writer process)."""


class Warehouse:
    """Opens (creating and migrating as needed) the catalog of a project home.

    `read_only=True` opens the catalog so that any write statement fails; the history views
    are temporary views, so they exist in read-only sessions too. `from_snapshot=True` opens
    (read-only) the last snapshot a writing job left (`snapshot`) instead of the catalog,
    which that job holds: DuckDB lets one process write a file and no other open it.
    """

    def __init__(self, home: str | Path | None = None, *, read_only: bool = False,
                 target_version: int = SCHEMA_VERSION, from_snapshot: bool = False) -> None:
        self.home = Path(home) if home else default_home()
        self.catalog_path = (self.home / SNAPSHOT if from_snapshot else
                             self.home / "catalog.duckdb")
        read_only = read_only or from_snapshot
        self._snapshot_at = 0.0
        self.history_root = self.home / "history"
        self.vectors_path = self.home / "vectors"
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only and not self.catalog_path.exists():
            raise FileNotFoundError(f"no catalog at {self.catalog_path}; run `cegraph demo` or "
                                    "`cegraph ingest` first, or pass --home")
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.catalog_path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            raise CatalogLocked(f"{self.catalog_path} is locked by a running job (demo, serve, "
                                "a flow); retry when it has finished") from None
        if not read_only:
            self.migrate(target_version)
        self.refresh_views()
        if self.schema_version() >= views.SINCE:
            for stmt in views.statements():
                self.con.execute(stmt)

    # --- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        if not self._has_table("schema_version"):
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
        # a catalog from before v3 (opened read-only, not migrated) has no commit markers
        committed = ("SELECT batch_id, seq FROM batches" if self._has_table("batches") else
                     "SELECT NULL::VARCHAR AS batch_id, NULL::BIGINT AS seq WHERE false")
        with self._lock:
            bound = {t.name for t in TABLES if t.history
                     and history.has_files(self.history_root, t.name)}
            for stmt in history.views(self.history_root, committed=committed):
                self.con.execute(stmt)
            self._bound = bound

    def _has_table(self, name: str) -> bool:
        return bool(self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND "
            "table_schema = 'main'", [name]).fetchone()[0])

    def close(self) -> None:
        self.con.close()

    def snapshot(self, min_interval_s: float = 0.0) -> bool:
        """Copy the catalog to `<home>/snapshot/` (atomically replaced), for readers while
        this process writes; skipped (False) within `min_interval_s` of the last one.

        DuckDB copies it (`COPY FROM DATABASE`): opening the catalog file any other way in
        this process would drop the process's lock on it (POSIX locks go with any closed
        descriptor). History Parquet needs no copy: its views read only committed batches,
        and the snapshot's `batches` are those committed when it was taken."""
        import time

        if time.monotonic() - self._snapshot_at < min_interval_s:
            return False
        target = self.home / SNAPSHOT
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f"catalog.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        path = tmp.as_posix().replace("'", "''")
        with self._lock:
            [(db,)] = self.con.execute("SELECT current_database()").fetchall()
            self.con.execute(f"ATTACH '{path}' AS _snapshot")
            try:
                self.con.execute(f'COPY FROM DATABASE "{db}" TO _snapshot')
            finally:
                self.con.execute("DETACH _snapshot")
        os.replace(tmp, target)
        self._snapshot_at = time.monotonic()
        return True

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries ------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with self._lock:
            relation = self.con.sql(sql, params=list(params) if params else None)
            return relation.to_arrow_table() if relation is not None else pa.table({})

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements inside apply together or not at all (under the handle's lock)."""
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(sql, params or []).fetchall()

    def insert(self, table: str, rows: list[dict[str, Any]], *, upsert: bool = False) -> None:
        """Insert catalog rows. Keyed tables are replay-safe: a retried task's rows are ignored
        (first write wins) or, with `upsert`, replace the stored ones; unkeyed tables append."""
        key = TABLE[table].key
        if not rows:
            return
        if key:  # one row per key within the batch too (the last one, as a replace would)
            rows = list({tuple(r[k] for k in key): r for r in rows}.values()) if upsert else \
                list({tuple(r[k] for k in key): r for r in reversed(rows)}.values())[::-1]
        arrow = pa.Table.from_pylist(rows)
        verb = ("INSERT" if not key else "INSERT OR REPLACE" if upsert else "INSERT OR IGNORE")
        with self._lock:
            self.con.register("_incoming", arrow)
            try:
                cols = ", ".join(arrow.column_names)
                self.con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _incoming")
            finally:
                self.con.unregister("_incoming")

    # --- history ------------------------------------------------------------------------
    def write_batch(self, tables: dict[str, list[dict[str, Any]]], *, night_id: str,
                    batch_id: str | None = None) -> str:
        """Write history rows visible all or nothing: every table's file first, then the
        commit marker (`batches`), in one catalog statement. A crash before the marker leaves
        files that no view reads; running the job again writes them anew. Returns the id."""
        batch_id = batch_id or uuid.uuid4().hex
        with self._lock:
            written = {table for table, rows in tables.items()
                       if history.write(self.history_root, table, rows, batch_id=batch_id)}
            self._commit(batch_id, night_id, sum(len(r) for r in tables.values()))
            if written - self._bound:  # binding reads every file's footer: only when needed
                self.refresh_views()
        return batch_id

    def _commit(self, batch_id: str, night_id: str, rows: int) -> None:
        self.con.execute("INSERT INTO batches SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ? "
                         "FROM batches", [batch_id, night_id, rows, _now()])

    def record_traces(self, traces: Sequence[Trace], *, night_id: str, source: str,
                      dataset: str, model: str, batch_id: str | None = None,
                      extra: dict[str, list[dict[str, Any]] | pa.Table] | None = None
                      ) -> list[Failure]:
        """Store runs with their spans and failures as one batch; returns the new failures.

        A run id already stored is stored again only to re-grade it: when its stored verdict
        was `infrastructure` (a healthy rerun replaces it) or came from another evaluator
        version. Otherwise replays and retries are not double-counted. Infrastructure
        outcomes are stored but yield no failure. `extra` history rows (by table, each with a
        run_id; rows or an Arrow table) go into the same batch, those of runs not stored
        again left out."""
        from cegraph.fss.failure import failure_from_trace
        from cegraph.fss.features import digest_from_trace, trace_features
        from cegraph.fss.steps import check_digest, sandbox_runner

        stored = self._verdicts([t.run_id for t in traces])
        traces = [t for t in traces if _supersedes(t, stored.get(t.run_id))]
        if not traces:
            return []
        batch_id = batch_id or uuid.uuid4().hex
        runs: list[tuple[Any, ...]] = []
        spans: list[tuple[Any, ...]] = []
        failures, failure_rows = [], []
        for t in traces:
            o = t.outcome
            version = o.evaluator_version if o else ""
            runs.append((
                t.run_id, night_id, t.workflow, t.version_id, t.task_id, dataset, source,
                _ts(t.started), _ts(t.ended), bool(o and o.passed), _outcome(t),
                o.score if o else 0.0, o.message if o else "", t.output, t.tokens, t.cost,
                t.llm_calls, model, version))
            spans += [(
                t.run_id, s.node_id, s.operator, s.depth, pos, _json_text(s.inputs),
                _json_text(s.outputs), _ts(s.started), s.latency_s, s.tokens_in,
                s.tokens_out, s.cost, [c.key for c in s.calls], s.error, s.error_type,
                s.skipped, s.truncated, s.infrastructure) for pos, s in enumerate(t.spans)]
            f = failure_from_trace(t) if _outcome(t) != INFRASTRUCTURE else None
            if f is not None:
                if t.run_id in stored:  # a re-grade: a new failure, the old one stays audited
                    fid = hashlib.sha256(f"{f.failure_id}:{batch_id}".encode()).hexdigest()
                    f = replace(f, failure_id=fid[:16])
                failures.append(f)
                digest = digest_from_trace(t)
                failure_rows.append(self._failure_row(
                    f, model=model, dataset=dataset, source=source, evaluator_version=version,
                    **trace_features(digest).row(),
                    **check_digest(digest, run=sandbox_runner).row()))
        kept = {t.run_id for t in traces}
        self.write_batch({"runs": _table("runs", _RUN_COLUMNS, runs),
                          "spans": _table("spans", _SPAN_COLUMNS, spans),
                          "failures": failure_rows,
                          **{table: _of_runs(rows, kept)
                             for table, rows in (extra or {}).items()}},
                         night_id=night_id, batch_id=batch_id)
        return failures
    @staticmethod
    def _failure_row(f: Failure, **extra: Any) -> dict[str, Any]:
        return {**f.__dict__, "created_at": _ts(f.created_at), **extra}

    def record_failures(self, failures: Sequence[Failure], *, night_id: str, model: str,
                        dataset: str, source: str) -> None:
        """Store failures without their runs (imported pools), as one batch."""
        self.write_batch({"failures": [
            self._failure_row(f, model=model, dataset=dataset, source=source)
            for f in failures]}, night_id=night_id)

    def _verdicts(self, run_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """The visible verdict (outcome, evaluator version) of each stored run id."""
        if not run_ids:
            return {}
        with self._lock:
            self.con.register("_ids", pa.table({"v": list(run_ids)}))
            try:
                rows = self.con.execute("SELECT r.run_id, r.outcome, r.evaluator_version FROM "
                                        "runs r JOIN _ids ON r.run_id = _ids.v").fetchall()
            finally:
                self.con.unregister("_ids")
        return {r: (outcome, version) for r, outcome, version in rows}

    @staticmethod
    def _pool(workflow: str, version_id: str | None, model: str | None,
              dataset: str | None) -> tuple[str, list[Any]]:
        """WHERE clause of one pool: a workflow, optionally one version, model, dataset."""
        where, params = ["workflow = ?"], [workflow]
        for column, value in (("version_id", version_id), ("model", model),
                              ("dataset", dataset)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(where), params

    def failures(self, workflow: str, version_id: str | None = None, *,
                 model: str | None = None, dataset: str | None = None) -> list[Failure]:
        """The failure pool of (workflow, version, model, dataset): latest verdicts only."""
        where, params = self._pool(workflow, version_id, model, dataset)
        return [Failure(*row) for row in self.rows(
            "SELECT failure_id, run_id, workflow, version_id, task_id, locus_node, "
            "locus_operator, locus_depth, failure_class, message, expected, observed, "
            f"epoch(created_at) FROM failures WHERE {where} ORDER BY created_at, failure_id",
            params)]

    def failure_features(self, failure_ids: Sequence[str]) -> dict[str, str]:
        """The stored trace-feature phrase of each failure (none for failures stored before
        schema v4 or without a trace)."""
        if not failure_ids:
            return {}
        return dict(self.rows("SELECT failure_id, features FROM failures WHERE failure_id IN "
                              "(SELECT unnest(?::VARCHAR[])) AND features IS NOT NULL",
                              [list(failure_ids)]))

    def failure_step_findings(self, failure_ids: Sequence[str]) -> dict[str, list[str]]:
        """The stored step checker findings of each failure (none for failures stored before
        schema v7)."""
        if not failure_ids:
            return {}
        return dict(self.rows("SELECT failure_id, step_findings FROM failures WHERE "
                              "failure_id IN (SELECT unnest(?::VARCHAR[])) AND step_findings "
                              "IS NOT NULL", [list(failure_ids)]))

    def run_count(self, workflow: str, version_id: str | None = None, *,
                  model: str | None = None, dataset: str | None = None) -> int:
        """Runs that count in the mass: latest verdicts, infrastructure errors left out."""
        where, params = self._pool(workflow, version_id, model, dataset)
        return int(self.rows(f"SELECT count(*) FROM runs WHERE {where} AND outcome <> ?",
                             [*params, INFRASTRUCTURE])[0][0])

    # --- workflows ----------------------------------------------------------------------
    def record_version(self, wf: Workflow, *, created_by: str = "user",
                       parent: str | None = None) -> None:
        self.insert("workflow_versions", [{
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

    def known_signatures(self, failure_ids: Sequence[str],
                         recipe: str | None = None) -> set[str]:
        """Failures with a stored signature (with `recipe`: built by that recipe)."""
        if recipe is None:
            return self._existing("signatures", "failure_id", failure_ids)
        return {r[0] for r in self.rows(
            "SELECT failure_id FROM signatures WHERE failure_id IN (SELECT unnest(?::VARCHAR[]))"
            " AND coalesce(recipe, 'message') = ?", [list(failure_ids), recipe])}

    def record_signatures(self, failures: Sequence[Failure], sigs: Sequence[Signature], *,
                          embedding_model: str, locus_weight: float,
                          recipe: str = "message") -> int:
        """Store the signatures not stored yet with this recipe (one built by another recipe
        is replaced): vectors into LanceDB first, then the catalog rows that mark them known.
        A crash in between leaves vectors without rows, which the rerun completes (LanceDB
        writes are idempotent); the other order would leave rows whose vectors no rerun adds.
        Returns how many vectors were new."""
        ids = [s.failure_id for s in sigs]
        known = self.known_signatures(ids, recipe)
        other = self.known_signatures(ids) - known  # stored by another recipe: replaced
        fresh = [s for s in sigs if s.failure_id not in known]
        if not fresh:
            return 0
        by_id = {f.failure_id: f for f in failures}
        from cegraph.storage.vectors import VectorIndex  # LanceDB only when vectors are written

        index = VectorIndex(self.vectors_path, len(fresh[0].vector))
        groups: dict[tuple[str, str], list[Signature]] = {}
        for s in fresh:
            f = by_id[s.failure_id]
            groups.setdefault((f.workflow, f.version_id), []).append(s)
        added = sum(index.add(group, workflow=wf, version_id=version, replace=bool(other))
                    for (wf, version), group in groups.items())
        now = _now()
        self.insert("signatures", [{
            "failure_id": s.failure_id, "run_id": by_id[s.failure_id].run_id,
            "workflow": by_id[s.failure_id].workflow,
            "version_id": by_id[s.failure_id].version_id, "locus_node": s.locus_node,
            "locus_operator": s.locus_operator, "locus_depth": s.locus_depth,
            "failure_class": s.failure_class, "text": s.text, "text_hash": s.text_hash,
            "embedding_model": embedding_model, "vector_id": s.failure_id, "created_at": now,
            "locus_weight": locus_weight, "recipe": recipe} for s in fresh], upsert=bool(other))
        return added

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
        self.insert("embedding_cache", [{"model": model, "text_hash": h,
                                          "vector": v.astype(np.float32).tolist()}
                                         for h, v in items.items()])

    # --- failure modes ------------------------------------------------------------------
    def previous_modes(self, workflow: str, *, model: str | None = None,
                       dataset: str | None = None, recipe: str = "message"
                       ) -> list[PreviousMode]:
        """The live (not resolved) modes of the latest night of (workflow, model, dataset)
        computed with the same signature recipe (another recipe's vectors are not
        comparable, so its nights are never matched)."""
        where, params = self._pool(workflow, None, model, dataset)
        rows = self.rows(
            "SELECT mode_id, centroid, mass, label, mass_lo, mass_hi FROM failure_modes WHERE "
            "workflow = ? AND status <> 'resolved' AND night_id = (SELECT night_id FROM nights "
            f"WHERE {where} AND coalesce(recipe, 'message') = ? ORDER BY computed_at DESC "
            "LIMIT 1) ORDER BY rank", [workflow, *params, recipe])
        return [PreviousMode(m, np.asarray(c, dtype=np.float32), mass, label, lo, hi)
                for m, c, mass, label, lo, hi in rows]

    def mode_ids(self, workflow: str) -> set[str]:
        """Every mode id ever used for `workflow` (resolved ones too): never to be reused."""
        return {r[0] for r in self.rows(
            "SELECT DISTINCT mode_id FROM failure_modes WHERE workflow = ?", [workflow])}

    def record_night(self, *, night_id: str, workflow: str, version_id: str, model: str,
                     dataset: str, source: str, runs: int, modes: Sequence[FailureMode],
                     resolved: Sequence[PreviousMode], noise_ids: Sequence[str],
                     mass: tuple[float, float, float], recipe: str = "message") -> None:
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
                self.insert("failure_modes", rows, upsert=True)
                self.insert("failure_mode_members", members, upsert=True)
                self.insert("nights", [{
                    "night_id": night_id, "workflow": workflow, "version_id": version_id,
                    "computed_at": now, "runs": runs, "failures": failures,
                    "modes": len(modes), "noise": len(noise_ids), "mass": mass[0],
                    "mass_lo": mass[1], "mass_hi": mass[2], "model": model,
                    "dataset": dataset, "source": source, "recipe": recipe}], upsert=True)
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise

    # --- diagnoses ----------------------------------------------------------------------
    def diagnoses(self, failure_ids: Sequence[str], model: str) -> dict[str, DiagnosisRecord]:
        """The stored diagnoses by `model` of these failures (valid or not)."""
        if not failure_ids:
            return {}
        cols = [f.name for f in fields(DiagnosisRecord)]
        rows = self.rows(f"SELECT {', '.join(cols)} FROM diagnoses WHERE model = ? AND "
                         "failure_id IN (SELECT unnest(?::VARCHAR[]))",
                         [model, list(failure_ids)])
        return {r[0]: DiagnosisRecord(*r) for r in rows}

    def record_diagnoses(self, records: Sequence[DiagnosisRecord]) -> None:
        """Keep diagnoses; a failure already diagnosed by the model keeps its first one."""
        now = _now()
        self.insert("diagnoses", [{**r.__dict__, "created_at": now} for r in records])

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
        self.insert("llm_calls", [{
            "key": record.key, "model": record.model, "messages": json.dumps(record.messages),
            "params": json.dumps(record.params, sort_keys=True), "sample": record.sample,
            "text": record.text, "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out, "cost": record.cost,
            "latency_s": record.latency_s, "finish_reason": record.finish_reason,
            "created_at": _ts(record.created_at)}])

    # --- quarantine ---------------------------------------------------------------------
    def quarantine(self, *, source: str, line_no: int, raw: str, reason: str) -> None:
        """Keep a rejected record; the same record rejected again (a retry) is kept once."""
        qid = hashlib.sha256(json.dumps([source, line_no, raw, reason]).encode()).hexdigest()
        self.insert("quarantine", [{"quarantine_id": qid[:24], "source": source,
                                     "line_no": line_no, "raw": raw, "reason": reason,
                                     "received_at": _now()}])
