"""Bulk history in Parquet, partitioned by date: `<home>/history/<table>/date=YYYY-MM-DD/`.

Each write is one new file, written under a temporary name and renamed, so a crash never
leaves a half file that a view would read. DuckDB reads the partitions through views.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schema import TABLE, arrow_schema


def write(root: Path, table: str, data: pa.Table | dict[str, list[Any]] | list[dict[str, Any]],
          *, day: dt.date | None = None) -> Path | None:
    """Append rows to a history table; returns the new file (None for no rows)."""
    schema = arrow_schema(table)
    if isinstance(data, pa.Table):
        arrow = data.select(schema.names).cast(schema)
    elif isinstance(data, dict):
        arrow = pa.Table.from_pydict({n: data[n] for n in schema.names}, schema=schema)
    else:
        arrow = pa.Table.from_pylist(data, schema=schema)
    if arrow.num_rows == 0:
        return None
    day = day or dt.datetime.now(dt.UTC).date()
    folder = root / table / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(arrow, tmp, compression="zstd")
    tmp.replace(final)
    return final


def view_sql(root: Path, table: str) -> str:
    """A view over every partition of `table`, typed even when there are no files yet."""
    if any((root / table).glob("date=*/*.parquet")):
        glob = (root / table / "date=*" / "*.parquet").as_posix().replace("'", "''")
        return (f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, "
                "union_by_name = true)")
    cols = ", ".join(f"CAST(NULL AS {c.type}) AS {c.name}" for c in TABLE[table].columns)
    return f"SELECT {cols}, CAST(NULL AS DATE) AS date WHERE false"
