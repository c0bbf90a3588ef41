"""Ingest production logs, then map the failures of every workflow they touched."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT
from cegraph.storage import default_home
from cegraph.tasks.failure_space import analyze_and_store
from cegraph.tasks.ingest import DATASET, SOURCE, Ingested, ingest_files


@flow(name="ingest-logs", log_prints=True)
def ingest_logs(paths: list[str] | None = None, home: str | None = None, fmt: str = "auto",
                mapping: str | None = None, modes: bool = True,
                locus_weight: float = DEFAULT_LOCUS_WEIGHT) -> Ingested:
    """Ingest OTLP/JSON (GenAI, OpenInference) or cegraph JSONL files, then compute the
    signatures and failure modes of each (workflow, version, model) pool they touched, so
    `cegraph modes` shows production failures right away. No `paths`: the home's `inbox`
    folder (where a deployment's logs are dropped)."""
    if paths is None:
        paths = [str((Path(home) if home else default_home()) / "inbox")]
    result = ingest_files(home, paths, fmt=fmt, mapping=mapping)
    if modes and result.pools:
        for n, (workflow, version_id, model) in enumerate(result.pools):
            analyze_and_store(home, workflow=workflow, version_id=version_id,
                              night_id=f"{result.ingest_id}-{n}", model=model,
                              dataset=DATASET, source=SOURCE, locus_weight=locus_weight)
    return result
