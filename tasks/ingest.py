"""Ingest production logs into the warehouse: the pipeline's micro-batches, each gated by
Great Expectations and stored as one history batch (see storage/ingest.py for the order of
writes that makes a killed ingest, run again, equal a clean run)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT
from cegraph.ingest import gate, lines, otlp, values
from cegraph.ingest.accounting import Counts, Fault
from cegraph.ingest.assemble import Run
from cegraph.ingest.lines import Cut
from cegraph.ingest.mapping import Mappings
from cegraph.ingest.pipeline import Batch, Line, Pipeline
from cegraph.ingest.receiver import Refused
from cegraph.storage import Warehouse
from cegraph.storage.ingest import IngestStore
from cegraph.storage.spool import Spool
from cegraph.storage.warehouse import CatalogLocked
from cegraph.trace import INFRASTRUCTURE, Trace

SOURCE = DATASET = "production"
#: errors of the machine, not of a record: they stop the ingest (a rerun is safe)
_INFRASTRUCTURE = (OSError, MemoryError, duckdb.IOException, CatalogLocked)


def outcome_label(t: Trace) -> str:
    """`runs.outcome` of a trace (as the warehouse stores it)."""
    o = t.outcome
    return "unevaluated" if o is None else "pass" if o.passed else o.failure_class or "unknown"


def _json(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def source_table(runs: Sequence[Run]) -> Any:
    """The `source_spans` rows of runs, every span and log record as read, built column by
    column (a dict per row costs more than parsing the span did)."""
    import pyarrow as pa

    from cegraph.ingest.staging import log_key
    from cegraph.storage.schema import arrow_schema

    spans = [(run.trace.run_id, s, r, node, s.span_id == run.spans[0][0].span_id
              and s.parent_id is None) for run in runs for s, r, node in run.spans]
    logs = [(run.trace.run_id, g) for run in runs for g in run.logs]
    records = [run for run in runs if run.record]
    n = len(spans) + len(logs) + len(records)
    none = [None] * (len(logs) + len(records))
    zeros = [0] * (len(logs) + len(records))
    ns = ([s.start_ns for _, s, _, _, _ in spans] + [g.time_ns for _, g in logs]
          + [int(r.trace.started * 1e9) for r in records])
    end_ns = ([s.end_ns for _, s, _, _, _ in spans] + [g.time_ns for _, g in logs]
              + [int(r.trace.ended * 1e9) for r in records])
    columns = {
        "run_id": [x[0] for x in spans] + [x[0] for x in logs]
        + [r.trace.run_id for r in records],
        "trace_id": [s.trace_id for _, s, _, _, _ in spans] + [g.trace_id for _, g in logs]
        + [r.trace.run_id for r in records],
        "span_key": [s.span_id for _, s, _, _, _ in spans] + [log_key(g) for _, g in logs]
        + ["run"] * len(records),
        "parent_span_id": [s.parent_id for _, s, _, _, _ in spans]
        + [g.span_id for _, g in logs] + [None] * len(records),
        "name": [s.name for _, s, _, _, _ in spans] + [g.event_name for _, g in logs]
        + [r.trace.workflow for r in records],
        "kind": ["workflow" if root else r.kind for _, _, r, _, root in spans]
        + ["log"] * len(logs) + ["run"] * len(records),
        "node_id": [node for _, _, _, node, _ in spans] + none,
        "started_at": pa.array([t // 1000 for t in ns], pa.int64()).cast(pa.timestamp("us")),
        "ended_at": pa.array([t // 1000 for t in end_ns], pa.int64()).cast(
            pa.timestamp("us")),
        "status": [s.status for _, s, _, _, _ in spans] + none,
        "attributes": [_json(s.attributes) for _, s, _, _, _ in spans]
        + [_json(g.attributes) for _, g in logs] + [r.record for r in records],
        "events": [_json([e.__dict__ for e in s.events]) if s.events else "[]"
                   for _, s, _, _, _ in spans] + ["[]"] * (len(logs) + len(records)),
        "oversized": [s.oversized for _, s, _, _, _ in spans] + [[]] * (len(logs)
                                                                         + len(records)),
        "batch_id": [None] * n,
        "conversation_id": [r.conversation_id or None for _, _, r, _, _ in spans] + none,
        "input_tokens": [r.tokens_in for _, _, r, _, _ in spans] + zeros,
        "output_tokens": [r.tokens_out for _, _, r, _, _ in spans] + zeros,
        "cache_read_input_tokens": [r.cache_read_tokens for _, _, r, _, _ in spans] + zeros,
        "cache_creation_input_tokens": [r.cache_creation_tokens for _, _, r, _, _ in spans]
        + zeros,
        "reasoning_output_tokens": [r.reasoning_tokens for _, _, r, _, _ in spans] + zeros,
    }
    schema = arrow_schema("source_spans")
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


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
        rows = source_table(runs)
        self.store.record_gate(batch_id=batch_id, ingest_id=self.ingest_id,
                               workflow=workflow, model=model, runs=len(runs),
                               spans=rows.num_rows, passed=verdict.passed,
                               suite=verdict.suite, results=verdict.results)
        self.wh.record_traces(traces, night_id=self.ingest_id, source=SOURCE,
                              dataset=DATASET, model=model, batch_id=batch_id,
                              extra={"source_spans": rows})
        counts.runs_stored += len(runs)
        counts.spans_stored += rows.num_rows
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


def map_failures(home: str | None, result: Ingested, *,
                 locus_weight: float = DEFAULT_LOCUS_WEIGHT) -> None:
    """Signatures and modes of every pool an ingest touched, in this process (the CLI and
    the receiver; the `ingest-logs` flow runs the same task under Prefect)."""
    from prefect.logging import disable_run_logger

    from cegraph.tasks.failure_space import analyze_and_store

    with disable_run_logger():
        for n, (workflow, version_id, model) in enumerate(result.pools):
            analyze_and_store.fn(home, workflow=workflow, version_id=version_id,
                                 night_id=f"{result.ingest_id}-{n}", model=model,
                                 dataset=DATASET, source=SOURCE, locus_weight=locus_weight)


class SpoolSink:
    """`cegraph collect`'s sink: a request is durable once it is in the spool (the receiver
    answers 200 after that); it reports the spans / log records it will reject."""

    def __init__(self, spool: Spool, *, max_backlog: int = 256 * 1024 * 1024,
                 retry_s: int = 5) -> None:
        self.spool = spool
        self.max_backlog = max_backlog
        self.retry_s = retry_s
        self.lagging = False

    def accept(self, signal: str, request: dict[str, Any]) -> tuple[int, str]:
        """Spool one request; (spans or log records the ingest will reject, why). A request
        that is not OTLP at all is refused (400) and not spooled."""
        try:
            items = list(otlp.spans(request) if signal == "traces" else otlp.logs(request))
        except (otlp.NotOtlp, values.BadValue) as exc:
            raise Refused(400, str(exc)) from None
        self.spool.append(orjson.dumps(request))
        bad = [f"{i.reason}: {i.detail}" for i in items if isinstance(i, otlp.SpanFault)]
        return len(bad), "; ".join(sorted(set(bad)))[:500]

    def retry_after(self) -> int:
        return self.retry_s if self.spool.backlog() > self.max_backlog else 0


class SpoolDrainer:
    """The single writer of a receiver's runs: stores the spool's pending requests as one
    ingest, holding the catalog only for that (so `cegraph sql`, ingests and nights share
    the home), then commits the spool's cursor; maps the failures of the pools it touched
    every `modes_s` (embedding is not free) and at the end.

    A poison request must not hold the spool: when storing the pending requests together
    fails (not an I/O error, which is the machine's and retried whole), they are stored one
    by one, committing each; one that fails by itself `max_attempts` drains in a row is
    quarantined whole (`unstorable_request`) and the drain goes on past it. Fewer failures
    raise (the drain is retried), so a store step that fails for everyone quarantines
    nothing at once."""

    def __init__(self, home: Path, spool: Spool, *, mappings: Mappings | None = None,
                 modes: bool = True, modes_s: float = 600.0,
                 locus_weight: float = DEFAULT_LOCUS_WEIGHT, max_attempts: int = 3) -> None:
        self.home, self.spool, self.mappings = home, spool, mappings or Mappings()
        self.modes, self.modes_s, self.locus_weight = modes, modes_s, locus_weight
        self.max_attempts = max_attempts
        self.failures: Counter[int] = Counter()  # request number -> failed stores alone
        self.totals: Counter[str] = Counter()
        self.quarantined: Counter[str] = Counter()
        self.pools: set[tuple[str, str, str]] = set()
        self._mapped_at = time.monotonic()

    def _store(self, requests: Sequence[tuple[int, bytes, Any]]) -> Ingested:
        with Warehouse(self.home) as wh:
            ingestor = Ingestor(wh, fmt="otlp", mappings=self.mappings, inputs=["otlp-http"])
            for seq, raw, _ in requests:
                ingestor.feed("otlp-http", seq, raw)
            result = ingestor.finish()
        self.spool.commit(requests[-1][2])
        self._account(result.summary)
        self.pools |= set(result.pools)
        return result

    def _account(self, summary: dict[str, Any]) -> None:
        self.totals.update({k: v for k, v in summary.items() if isinstance(v, int)})
        self.quarantined.update(summary["quarantined"])

    def drain(self) -> Ingested | None:
        pending = list(self.spool.pending())
        if not pending:
            return None
        try:
            result = self._store(pending)
        except _INFRASTRUCTURE:
            raise
        except Exception:  # noqa: BLE001 - one request may be the cause: store them alone
            result = self._store_each(pending)
        if time.monotonic() - self._mapped_at >= self.modes_s:
            self.map_modes()
        return result

    def _store_each(self, pending: Sequence[tuple[int, bytes, Any]]) -> Ingested:
        results: list[Ingested] = []
        for request in pending:
            seq, raw, cursor = request
            try:
                results.append(self._store([request]))
                self.failures.pop(seq, None)
            except _INFRASTRUCTURE:
                raise
            except Exception as exc:
                self.failures[seq] += 1
                if self.failures[seq] < self.max_attempts:
                    raise  # stored so far is committed; the drain resumes at this request
                results.append(self._quarantine(seq, raw, exc))
                self.spool.commit(cursor)
                del self.failures[seq]
        return _merged(results)

    def _quarantine(self, seq: int, raw: bytes, exc: Exception) -> Ingested:
        counts = Counts()
        counts.line("quarantined", "unstorable_request")
        ingest_id = f"collect-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        with Warehouse(self.home) as wh:
            store = IngestStore(wh)
            store.begin(ingest_id, ["otlp-http"])
            store.quarantine([Fault("otlp-http", seq, "unstorable_request",
                                    f"{type(exc).__name__}: {exc} (its store failed "
                                    f"{self.failures[seq]} times by itself)", raw)], ingest_id)
            store.finish(ingest_id, counts.summary())
        self._account(counts.summary())
        return Ingested(ingest_id, counts.summary())

    def map_modes(self) -> None:
        if self.modes and self.pools:
            stamp = f"collect-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
            map_failures(str(self.home), Ingested(stamp, {}, sorted(self.pools)),
                         locus_weight=self.locus_weight)
        self.pools.clear()
        self._mapped_at = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {**self.totals, "quarantined": dict(self.quarantined)}


def _merged(results: Sequence[Ingested]) -> Ingested:
    """Several ingests' accounting as one (the drain that stored its requests one by one)."""
    totals: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    span_faults: Counter[str] = Counter()
    for r in results:
        totals.update({k: v for k, v in r.summary.items() if isinstance(v, int)})
        quarantined.update(r.summary.get("quarantined", {}))
        span_faults.update(r.summary.get("span_faults", {}))
    summary = {**totals, "quarantined": dict(quarantined), "span_faults": dict(span_faults)}
    return Ingested(results[-1].ingest_id, summary,
                    sorted({p for r in results for p in r.pools}),
                    sorted({u for r in results for u in r.unmapped}),
                    [b for r in results for b in r.marked_batches])


def collect(home: Path, *, host: str = "127.0.0.1", port: int = 4318, token: str | None = None,
            mappings: Mappings | None = None, flush_s: float = 2.0, modes: bool = True,
            locus_weight: float = DEFAULT_LOCUS_WEIGHT,
            ready: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the OTLP/HTTP receiver until interrupted (KeyboardInterrupt): requests go to the
    spool (durable before 200), a drainer thread stores them every `flush_s`; what a crash
    left in the spool is stored first. Returns the drains' summed accounting."""
    from cegraph.ingest.receiver import Receiver

    spool = Spool(home)
    try:
        drainer = SpoolDrainer(home, spool, mappings=mappings, modes=modes,
                               locus_weight=locus_weight)
        receiver = Receiver(SpoolSink(spool), host=host, port=port, token=token)
        stop = threading.Event()

        def drain() -> None:
            try:
                drainer.drain()
            except CatalogLocked:  # a night or an ingest holds the catalog: the spool waits
                pass
            except Exception as exc:  # noqa: BLE001 - the receiver outlives a failed drain
                print(f"collect: storing the spool failed, retrying: {type(exc).__name__}: "
                      f"{exc}", file=sys.stderr)

        def drain_loop() -> None:
            while not stop.wait(flush_s):
                drain()

        drain()  # resume what a crash left
        thread = threading.Thread(target=drain_loop, daemon=True)
        thread.start()
        try:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C / TERM: store, then end
                ready(receiver.address)
                receiver.serve_forever()
        finally:
            receiver.stop()
            stop.set()
            thread.join()
            drain()
            drainer.map_modes()
        return drainer.summary()
    finally:
        spool.close()
