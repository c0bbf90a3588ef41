"""The fan-out's Prefect side: one `run-chunk` task per chunk of a batch (`cegraph.batch`),
on whatever task runner the flow has (its thread pool, or a Dask cluster with
prefect-dask's `DaskTaskRunner`).

A chunk journals every call it pays for as it is paid, outside the process that may be lost:
on a Dask worker as events on the scheduler (`Worker.log_event`), elsewhere in this process.
When a worker dies mid-chunk, Dask runs the chunk again on another worker, which reads that
journal first and replays those calls (`run_chunk`'s `prior`): they are paid once and charged
once, by the flow, with the chunk's result. The journals outlive their chunk (a result lost
on its way back reruns the chunk) and are pruned when the night ends (`prune_journals`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cegraph.batch import Chunk, ChunkResult, run_chunk
from cegraph.llm import Completion

TOPIC = "cegraph-calls-"
CALL_FIELDS = frozenset(f.name for f in fields(Completion))


class _LocalLog:
    """The journal of chunks run in this process (a Prefect retry runs here again)."""

    def __init__(self) -> None:
        self._calls: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def read(self, chunk_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._calls.get(chunk_id, ()))

    def add(self, chunk_id: str, call: dict[str, Any]) -> None:
        with self._lock:
            self._calls.setdefault(chunk_id, []).append(call)

    def done(self, chunk_id: str) -> None:
        with self._lock:
            self._calls.pop(chunk_id, None)

    def forget(self, chunk_ids: Sequence[str]) -> None:
        """Drop these chunks' journals (an attempt that raised left its own behind)."""
        for chunk_id in chunk_ids:
            self.done(chunk_id)


class _DaskLog:
    """The journal as events on the Dask scheduler: it outlives the worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def read(self, chunk_id: str) -> list[dict[str, Any]]:
        from distributed import get_client

        # the scheduler adds the sending worker to each event: the call is the rest
        return [{k: v for k, v in msg.items() if k in CALL_FIELDS}
                for _, msg in get_client().get_events(TOPIC + chunk_id)]

    def add(self, chunk_id: str, call: dict[str, Any]) -> None:
        self.worker.log_event(TOPIC + chunk_id, call)

    def done(self, chunk_id: str) -> None:
        """Events stay on the scheduler until the night ends: Dask reruns a chunk whose
        result was lost after it finished, and the rerun reads them."""

    def forget(self, chunk_ids: Sequence[str]) -> None:
        from distributed import get_client

        get_client().run_on_scheduler(_drop_topics, topics=[TOPIC + c for c in chunk_ids])


def _drop_topics(topics: Sequence[str], dask_scheduler: Any = None) -> None:
    """Runs on the scheduler. Its broker has no public way to delete a topic (every read
    creates one): truncate, then drop the empty topic itself."""
    broker = dask_scheduler._broker
    for topic in topics:
        broker.truncate(topic)
        broker._topics.pop(topic, None)


LOCAL = _LocalLog()
SUBMITTED = 0  # run-chunk tasks this process submitted (`cegraph bench night` counts them)
_journaled: set[str] = set()  # chunks submitted from this process whose journals may remain
_journaled_lock = threading.Lock()


def journaled(chunk_ids: Sequence[str]) -> None:
    """Note chunks submitted from this process, to prune their journals when the night ends."""
    with _journaled_lock:
        _journaled.update(chunk_ids)


def call_log() -> _LocalLog | _DaskLog:
    """Where this process journals a chunk's calls."""
    try:
        from distributed import get_worker

        return _DaskLog(get_worker())
    except (ImportError, ValueError):  # not on a Dask worker
        return LOCAL


@task(name="run-chunk", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def run_chunk_task(chunk: Chunk) -> ChunkResult:
    """Run one chunk (see `cegraph.batch.run_chunk`), replaying the calls an earlier attempt
    of it paid for before it was lost."""
    log = call_log()
    result = run_chunk(chunk, prior=log.read(chunk.chunk_id),
                       on_call=lambda call: log.add(chunk.chunk_id, call))
    log.done(chunk.chunk_id)
    return result


def prefect_batch(chunks: Sequence[Chunk]) -> list[ChunkResult]:
    """`RunBatch` on the current flow's task runner: every chunk submitted at once."""
    global SUBMITTED
    SUBMITTED += len(chunks)
    journaled([c.chunk_id for c in chunks])
    futures = [run_chunk_task.submit(c) for c in chunks]
    return [f.result() for f in futures]


@task(name="prune-journals", cache_policy=NO_CACHE)
def prune_journals_task(chunk_ids: list[str]) -> None:
    """Drop the journals of these chunks wherever they were kept: on the Dask scheduler
    (run on a worker of it) or in this process."""
    call_log().forget(chunk_ids)


def prune_journals() -> int:
    """Prune the journals of every chunk this process submitted since the last prune, on
    the current flow's task runner (so on its cluster); returns how many chunks. Called when
    a night ends: its calls are stored by then, so no rerun will need them."""
    with _journaled_lock:
        ids = sorted(_journaled)
        _journaled.clear()
    if ids:  # bounded: a runner that cannot take the task must not hold the night open
        prune_journals_task.submit(ids).result(timeout=60)
    return len(ids)
