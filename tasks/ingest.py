"""Ingest production logs into the warehouse: the pipeline's micro-batches, each gated by
Great Expectations and stored as one history batch (see storage/ingest.py for the order of
writes that makes a killed ingest, run again, equal a clean run)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cegraph.ingest import gate, lines
from cegraph.ingest.accounting import Fault
from cegraph.ingest.assemble import Run
from cegraph.ingest.lines import Cut
from cegraph.ingest.mapping import Mappings
from cegraph.ingest.pipeline import Batch, Line, Pipeline
from cegraph.trace import INFRASTRUCTURE, Trace
from storage import Warehouse
from storage.ingest import IngestStore
from storage.warehouse import CatalogLocked

SOURCE = DATASET = "production"
#: errors of the machine, not of a record: they stop the ingest (a rerun is safe)
_INFRASTRUCTURE = (OSError, MemoryError, duckdb.IOException, CatalogLocked)


def _ts(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).replace(tzinfo=None)


def outcome_label(t: Trace) -> str:
    """`runs.outcome` of a trace (as the warehouse stores it)."""
    o = t.outcome
    return "unevaluated" if o is None else "pass" if o.passed else o.failure_class or "unknown"


def _json(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def source_rows(run: Run) -> list[dict[str, Any]]:
    """The `source_spans` rows of a run: every span and log record as read."""
    rid = run.trace.run_id
    rows = [{"run_id": rid, "trace_id": s.trace_id, "span_key": s.span_id,
             "parent_span_id": s.parent_id, "name": s.name,
             "kind": "workflow" if s.span_id == run.spans[0][0].span_id and s.parent_id is None
             else r.kind, "node_id": node, "started_at": _ts(s.start_ns),
             "ended_at": _ts(s.end_ns), "status": s.status,
             "attributes": _json(s.attributes), "events": _json([e.__dict__ for e in s.events]),
             "oversized": s.oversized} for s, r, node in run.spans]
    from cegraph.ingest.staging import log_key

    rows += [{"run_id": rid, "trace_id": g.trace_id, "span_key": log_key(g),
              "parent_span_id": g.span_id, "name": g.event_name, "kind": "log",
              "node_id": None, "started_at": _ts(g.time_ns), "ended_at": _ts(g.time_ns),
              "status": None, "attributes": _json(g.attributes),
              "events": "[]", "oversized": []} for g in run.logs]
    if run.record:
        t = run.trace
        rows.append({"run_id": rid, "trace_id": rid, "span_key": "run", "parent_span_id": None,
                     "name": t.workflow, "kind": "run", "node_id": None,
                     "started_at": _ts(int(t.started * 1e9)),
                     "ended_at": _ts(int(t.ended * 1e9)), "status": None,
                     "attributes": run.record, "events": "[]", "oversized": []})
    return rows


@dataclass
class Ingested:
    """What an ingest did, as plain data (a Prefect task's result)."""

    ingest_id: str
    summary: dict[str, Any]
    pools: list[tuple[str, str, str]] = field(default_factory=list)  # workflow, version, model
    unmapped: list[str] = field(default_factory=list)
    marked_batches: list[str] = field(default_factory=list)


class Ingestor:
    """Feeds lines through the pipeline and stores each settled batch."""

    def __init__(self, wh: Warehouse, *, ingest_id: str | None = None, fmt: str = "auto",
                 mappings: Mappings | None = None, batch_spans: int = 20_000,
                 inputs: Sequence[str] = ()) -> None:
        self.store = IngestStore(wh)
        self.wh = wh
        self.ingest_id = ingest_id or (f"ingest-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-"
                                       f"{uuid.uuid4().hex[:6]}")
        self.pipeline = Pipeline(self.store, mappings, fmt=fmt, batch_spans=batch_spans,
                                 staged=self.store.staged())
        self.pools: set[tuple[str, str, str]] = set()
        self.unmapped: Counter[tuple[str, str]] = Counter()
        self.marked: list[str] = []
        self.store.begin(self.ingest_id, inputs)

    def feed(self, source: str, line_no: int, raw: bytes, cut: Cut | None = None) -> None:
        for batch in self.pipeline.feed(source, line_no, raw, cut):
            self.store_batch(batch, source)

    def add(self, line: Line) -> None:
        for batch in self.pipeline.add(line):
            self.store_batch(batch, line.source)

    def feed_file(self, path: str, *, max_line: int = lines.MAX_LINE) -> None:
        """Every line of one input (a path or `-`), settled and stored at its end."""
        source = "<stdin>" if path == "-" else path
        for line_no, raw, cut in lines.read(path, max_line=max_line):
            self.feed(source, line_no, raw, cut)
        self.flush(source)

    def flush(self, source: str = "", *, final: bool = False) -> Batch:
        batch = self.pipeline.settle(final=final)
        self.store_batch(batch, source)
        return batch

    def store_batch(self, batch: Batch, source: str) -> None:
        counts = self.pipeline.counts
        self.store.quarantine(batch.faults, self.ingest_id)
        groups: dict[tuple[str, str], list[Run]] = {}
        for run in batch.runs:
            groups.setdefault((run.trace.workflow, run.model), []).append(run)
        for (workflow, model), runs in sorted(groups.items()):
            try:
                self._store_runs(workflow, model, runs)
            except _INFRASTRUCTURE:
                raise
            except Exception:  # noqa: BLE001 - one bad run must not cost its batch
                for run in runs:  # alone, each run stores or is quarantined by itself
                    try:
                        self._store_runs(workflow, model, [run])
                    except _INFRASTRUCTURE:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        counts.span_faults["unstorable"] += 1
                        self.store.quarantine([Fault(
                            f"trace {run.trace.run_id}", 0, "unstorable",
                            f"{type(exc).__name__}: {exc}", run.raw(), "span")],
                            self.ingest_id)
        self.store.stage(batch.staged, source)
        self.store.unstage(batch.settled_traces)
        self.unmapped.update(batch.unmapped)

    def _store_runs(self, workflow: str, model: str, runs: list[Run]) -> None:
        """Gate and store one (workflow, model) group of runs as one history batch."""
        counts = self.pipeline.counts
        traces = [r.trace for r in runs]
        verdict = gate.check(traces, [outcome_label(t) for t in traces])
        # a fresh id per attempt: files a killed attempt left under its id stay unread
        batch_id = uuid.uuid4().hex
        rows = [row for r in runs for row in source_rows(r)]
        self.store.record_gate(batch_id=batch_id, ingest_id=self.ingest_id,
                               workflow=workflow, model=model, runs=len(runs),
                               spans=len(rows), passed=verdict.passed, suite=verdict.suite,
                               results=verdict.results)
        self.wh.record_traces(traces, night_id=self.ingest_id, source=SOURCE,
                              dataset=DATASET, model=model, batch_id=batch_id,
                              extra={"source_spans": rows})
        counts.runs_stored += len(runs)
        counts.spans_stored += len(rows)
        if not verdict.passed:
            self.marked.append(batch_id)
        self.pools |= {(t.workflow, t.version_id, model) for t in traces
                       if t.outcome is not None and t.outcome.failure_class != INFRASTRUCTURE}

    def finish(self) -> Ingested:
        from cegraph.ingest.unmapped import report

        self.flush(final=True)
        summary = self.pipeline.counts.summary()
        summary["staged_incomplete"] = self.store.staged_traces()
        summary["marked_batches"] = len(self.marked)
        self.store.unmapped(self.ingest_id, dict(self.unmapped))
        self.store.finish(self.ingest_id, summary)
        return Ingested(self.ingest_id, summary, sorted(self.pools), report(self.unmapped),
                        self.marked)


def ingest_paths(home: str | None, paths: Sequence[str], *, fmt: str = "auto",
                 mapping: str | None = None, batch_spans: int = 20_000,
                 max_line: int = lines.MAX_LINE) -> Ingested:
    """Ingest files/globs/stdin into the warehouse at `home` (plain data in and out)."""
    files = lines.expand(paths)
    with Warehouse(Path(home) if home else None) as wh:
        ingestor = Ingestor(wh, fmt=fmt, mappings=Mappings.load(mapping),
                            batch_spans=batch_spans, inputs=files)
        for path in files:
            ingestor.feed_file(path, max_line=max_line)
        return ingestor.finish()


@task(name="ingest-files", cache_policy=NO_CACHE)
def ingest_files(home: str | None, paths: list[str], fmt: str = "auto",
                 mapping: str | None = None) -> Ingested:
    """Ingest files into the warehouse; a retry is safe (duplicates are skipped)."""
    result = ingest_paths(home, paths, fmt=fmt, mapping=mapping)
    get_run_logger().info("ingest %s: %s", result.ingest_id, json.dumps(result.summary))
    return result


class ReceiverSink:
    """`cegraph collect`'s sink: each request is one line of the ingest; settled batches are
    stored every few seconds (cegraph.ingest.receiver.Receiver calls `flush`)."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self.requests = 0

    def accept(self, signal: str, raw: bytes) -> tuple[int, str]:
        self.requests += 1
        line = self.ingestor.pipeline.decode("otlp-http", self.requests, raw)
        self.ingestor.add(line)
        bad = [f for f in line.faults if f.reason == "missing_id" or f.level == "line"]
        return len(bad), "; ".join(sorted({f"{f.reason}: {f.detail}" for f in bad}))[:500]

    def flush(self) -> None:
        self.ingestor.flush("otlp-http")
