"""The warehouse side of an ingest: what is known already (dedup), staged spans between
ingests, quarantine rows, ingest and batch records, gate results and the unmapped report.

Order of writes per batch (each attempt under a fresh batch id, so files a killed attempt
left are never committed by a later one), so an ingest killed anywhere and run again ends
with the same tables as one clean run: gate results and the `ingest_batches` row first,
then the history batch with its commit marker (runs, spans, failures, source_spans),
then the staged rows of the traces it completed are dropped. A rerun finds the committed
runs' source spans (duplicates), re-stores what was not committed, and re-drops staged rows.
Quarantine and staged rows are keyed, so writing them twice keeps one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from cegraph.ingest.accounting import Fault
from cegraph.ingest.span import LogRecord, SourceSpan
from cegraph.ingest.staging import log_key
from cegraph.storage.warehouse import Warehouse


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class IngestStore:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    def _ids(self, sql: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        with self.wh._lock:
            self.wh.con.register("_ingest_ids", pa.table({"v": list(ids)}))
            try:
                return self.wh.con.execute(sql).fetchall()
            finally:
                self.wh.con.unregister("_ingest_ids")

    # --- the pipeline's questions (cegraph.ingest.pipeline.Known) --------------------------
    def known_spans(self, trace_ids: Sequence[str]) -> set[tuple[str, str]]:
        return set(self._ids("SELECT s.trace_id, s.span_key FROM source_spans s JOIN "
                             "_ingest_ids i ON s.trace_id = i.v", trace_ids))

    def stored_runs(self, run_ids: Sequence[str]) -> set[str]:
        return {r[0] for r in self._ids("SELECT DISTINCT r.run_id FROM runs r JOIN "
                                        "_ingest_ids i ON r.run_id = i.v", run_ids)}

    # --- staging --------------------------------------------------------------------------
    def staged(self) -> list[SourceSpan | LogRecord]:
        out: list[SourceSpan | LogRecord] = []
        for kind, payload in self.wh.rows("SELECT kind, payload FROM staged_spans "
                                          "ORDER BY staged_at, trace_id, span_key"):
            data = json.loads(payload)
            out.append(SourceSpan.from_dict(data) if kind == "span" else LogRecord(**data))
        return out

    def stage(self, items: Iterable[SourceSpan | LogRecord], source: str) -> None:
        now = _now()
        self.wh.insert("staged_spans", [{
            "trace_id": i.trace_id,
            "span_key": i.span_id if isinstance(i, SourceSpan) else log_key(i),
            "kind": "span" if isinstance(i, SourceSpan) else "log",
            "payload": json.dumps(i.to_dict(), default=str), "source": source,
            "staged_at": now} for i in items])

    def unstage(self, trace_ids: Sequence[str]) -> None:
        if trace_ids:
            self._ids("DELETE FROM staged_spans WHERE trace_id IN (SELECT v FROM _ingest_ids)",
                      trace_ids)

    def staged_traces(self) -> int:
        return int(self.wh.rows("SELECT count(DISTINCT trace_id) FROM staged_spans")[0][0])

    # --- quarantine, ingests, batches, gate, unmapped ---------------------------------------
    def quarantine(self, faults: Sequence[Fault], ingest_id: str) -> None:
        now = _now()
        rows = []
        for f in faults:
            row = f.row()
            qid = hashlib.sha256(json.dumps([f.source, f.line_no, row["raw"], f.reason,
                                             f.detail]).encode()).hexdigest()[:24]
            rows.append({"quarantine_id": qid, **row, "received_at": now,
                         "ingest_id": ingest_id})
        self.wh.insert("quarantine", rows)

    def begin(self, ingest_id: str, inputs: Sequence[str]) -> None:
        self.wh.insert("ingests", [{"ingest_id": ingest_id, "inputs": list(inputs),
                                    "started_at": _now(), "finished_at": None,
                                    "summary": None}])

    def finish(self, ingest_id: str, summary: dict[str, Any]) -> None:
        self.wh.con.execute("UPDATE ingests SET finished_at = ?, summary = ? WHERE "
                            "ingest_id = ?", [_now(), json.dumps(summary), ingest_id])

    def record_gate(self, *, batch_id: str, ingest_id: str, workflow: str, model: str,
                    runs: int, spans: int, passed: bool, suite: str,
                    results: Sequence[dict[str, Any]]) -> None:
        now = _now()
        self.wh.insert("gate_results", [{
            "gate_id": f"{batch_id}:{i}", "verification_id": None, "edit_id": None,
            "expectation": r["expectation"], "success": r["success"],
            "observed": r["observed"], "details": json.dumps(r["details"], default=str),
            "created_at": now, "batch_id": batch_id, "suite": suite}
            for i, r in enumerate(results)], upsert=True)
        self.wh.insert("ingest_batches", [{
            "batch_id": batch_id, "ingest_id": ingest_id, "workflow": workflow,
            "model": model, "runs": runs, "spans": spans, "gate_passed": passed,
            "created_at": now}], upsert=True)

    def unmapped(self, ingest_id: str, counts: dict[tuple[str, str], int]) -> None:
        self.wh.insert("unmapped_attributes", [
            {"ingest_id": ingest_id, "workflow": wf, "attribute": key, "count": n}
            for (wf, key), n in sorted(counts.items())], upsert=True)

    def marked_batches(self) -> set[str]:
        """Committed ingest batches that failed their gate (refinement skips them unless
        told otherwise)."""
        return {r[0] for r in self.wh.rows(
            "SELECT i.batch_id FROM ingest_batches i JOIN batches b USING (batch_id) "
            "WHERE NOT i.gate_passed")}
