"""Bulk history in Parquet, partitioned by date: `<home>/history/<table>/date=YYYY-MM-DD/`.

Each write is one new file, written under a temporary name and renamed, so a crash never
leaves a half file. Files are written in batches (runs, spans and failures of one job): every
row carries its `batch_id`, and the batch's row in the catalog table `batches` is written
after all its files. The views read only committed batches, so a batch is visible all or
nothing, and a crash at any step is repaired by running again. Files written before schema
v3 carry no batch id and count as committed.

A run id may be stored again (a re-grade by a newer evaluator, or a healthy rerun after an
infrastructure error): the views `runs`, `spans`, `failures` show only each run's latest
committed batch; `runs_all`, `spans_all`, `failures_all` keep every committed row, the older
ones with `superseded = true` (the audit trail).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cegraph.storage.schema import TABLE, TABLES, arrow_schema


def write(root: Path, table: str, data: pa.Table | dict[str, list[Any]] | list[dict[str, Any]],
          *, batch_id: str, day: dt.date | None = None) -> Path | None:
    """Append rows to a history table as part of batch `batch_id` (invisible until the batch
    is committed); returns the new file (None for no rows)."""
    schema = arrow_schema(table)
    if isinstance(data, list):
        data = [{**row, "batch_id": batch_id} for row in data]
    if isinstance(data, pa.Table):
        data = data.drop_columns([c for c in ("batch_id",) if c in data.column_names])
        data = data.append_column("batch_id", pa.array([batch_id] * data.num_rows, pa.string()))
        arrow = data.select(schema.names).cast(schema)
    elif isinstance(data, dict):
        n = len(next(iter(data.values()), []))
        data = {**data, "batch_id": [batch_id] * n}
        arrow = pa.Table.from_pydict({k: data[k] for k in schema.names}, schema=schema)
    else:
        arrow = pa.Table.from_pylist(data, schema=schema)
    if arrow.num_rows == 0:
        return None
    day = day or dt.datetime.now(dt.UTC).date()
    folder = root / table / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{batch_id}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(arrow, tmp, compression="zstd")
    tmp.replace(final)
    return final


def has_files(root: Path, table: str) -> bool:
    return any((root / table).glob("date=*/*.parquet"))


def _files_sql(root: Path, table: str) -> str:
    """Every row on disk of `table`, typed by the current schema even when there are no files
    or the files predate a column (a missing column reads as NULL)."""
    cols = ", ".join(f"CAST(NULL AS {c.type}) AS {c.name}" for c in TABLE[table].columns)
    empty = f"SELECT {cols}, CAST(NULL AS DATE) AS date WHERE false"
    if not has_files(root, table):
        return empty
    glob = (root / table / "date=*" / "*.parquet").as_posix().replace("'", "''")
    return (f"{empty} UNION ALL BY NAME SELECT * FROM read_parquet('{glob}', "
            "hive_partitioning = true, union_by_name = true)")


def views(root: Path, *, committed: str) -> list[str]:
    """The statements creating the history views (temporary, so read-only sessions have
    them too). `committed` is a query of the committed batches (batch_id, seq). A view
    re-expands its glob whenever a query binds it, so new files of a table that had files
    need no new views; a table's first file does (its view is the empty select until then)."""
    names = [t.name for t in TABLES if t.history]
    stmts = [f"CREATE OR REPLACE TEMP VIEW _{n}_committed AS SELECT h.*, coalesce(b.seq, 0) "
             f"AS batch_seq FROM ({_files_sql(root, n)}) h LEFT JOIN ({committed}) b "
             "ON h.batch_id = b.batch_id WHERE h.batch_id IS NULL OR b.batch_id IS NOT NULL"
             for n in names]
    latest = " UNION ALL ".join(f"SELECT run_id, batch_seq FROM _{n}_committed" for n in names)
    stmts.append("CREATE OR REPLACE TEMP VIEW _run_latest AS SELECT run_id, max(batch_seq) "
                 f"AS latest_seq FROM ({latest}) GROUP BY run_id")
    for n in names:
        stmts += [f"CREATE OR REPLACE TEMP VIEW {n}_all AS SELECT c.* EXCLUDE (batch_seq), "
                  f"c.batch_seq < l.latest_seq AS superseded FROM _{n}_committed c "
                  "JOIN _run_latest l ON c.run_id = l.run_id",
                  f"CREATE OR REPLACE TEMP VIEW {n} AS SELECT * EXCLUDE (superseded) "
                  f"FROM {n}_all WHERE NOT superseded"]
    return stmts
