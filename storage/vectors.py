"""The LanceDB index of signature vectors: nearest past failures, local density, dedup.

Appends are idempotent (`merge_insert` on failure_id), so a job that crashed after writing
vectors and before its catalog rows can simply run again. An IVF_FLAT index is built once
the table holds `INDEX_MIN_ROWS` vectors; rows added later are searched exactly until the
index is optimized, so results stay correct in between.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cegraph.fss.signature import Signature

TABLE = "signatures"
INDEX_MIN_ROWS = 20_000
REINDEX_FRACTION = 0.1


def _quote(value: str) -> str:
    return value.replace("'", "''")


@dataclass(frozen=True)
class Neighbour:
    failure_id: str
    distance: float  # euclidean
    workflow: str
    locus_node: str
    failure_class: str


class VectorIndex:
    def __init__(self, path: str | Path, dim: int) -> None:
        import lancedb  # a second to import: only when the index is opened

        self.db = lancedb.connect(str(path))
        self.dim = dim
        self.schema = pa.schema([
            ("failure_id", pa.string()), ("workflow", pa.string()), ("version_id", pa.string()),
            ("locus_node", pa.string()), ("failure_class", pa.string()),
            ("created_at", pa.float64()), ("vector", pa.list_(pa.float32(), dim))])
        names = self.db.list_tables()
        names = getattr(names, "tables", names)
        self.table = (self.db.open_table(TABLE) if TABLE in names
                      else self.db.create_table(TABLE, schema=self.schema))

    @classmethod
    def open(cls, path: str | Path) -> VectorIndex | None:
        """The existing index at `path` (its dimension read from it), or None if there is none."""
        import lancedb

        db = lancedb.connect(str(path))
        names = db.list_tables()
        if TABLE not in getattr(names, "tables", names):
            return None
        return cls(path, db.open_table(TABLE).schema.field("vector").type.list_size)

    def __len__(self) -> int:
        return self.table.count_rows()

    def add(self, sigs: Sequence[Signature], *, workflow: str, version_id: str,
            replace: bool = False) -> int:
        """Insert signatures not yet indexed (with `replace`, overwrite indexed ones: a
        signature rebuilt by another recipe); returns how many were new."""
        if not sigs:
            return 0
        flat = np.stack([s.vector for s in sigs]).astype(np.float32).ravel()
        data = pa.table({
            "failure_id": [s.failure_id for s in sigs], "workflow": [workflow] * len(sigs),
            "version_id": [version_id] * len(sigs),
            "locus_node": [s.locus_node for s in sigs],
            "failure_class": [s.failure_class for s in sigs],
            "created_at": [time.time()] * len(sigs),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)},
            schema=self.schema)
        before = len(self)
        if before == 0:
            self.table.add(data)
        else:
            merge = self.table.merge_insert("failure_id").when_not_matched_insert_all()
            (merge.when_matched_update_all() if replace else merge).execute(data)
        self.maybe_index()
        return len(self) - before

    def _index_name(self) -> str | None:
        return next((i.name for i in self.table.list_indices() if "vector" in i.columns), None)

    def has_index(self) -> bool:
        return self._index_name() is not None

    def maybe_index(self) -> bool:
        """Build the IVF index once the table is large enough, and fold appended rows into it
        once they pass `REINDEX_FRACTION` of the table; True if an index exists."""
        rows = len(self)
        name = self._index_name()
        if name is not None:
            stats = self.table.index_stats(name)
            if stats is not None and stats.num_unindexed_rows > REINDEX_FRACTION * rows:
                self.table.optimize()  # incremental: new rows join the existing partitions
            return True
        if rows < INDEX_MIN_ROWS:
            return False
        from lancedb.index import IvfFlat

        self.table.create_index("vector", config=IvfFlat(
            distance_type="l2", num_partitions=max(8, int(math.sqrt(rows)))))
        return True

    def vector_of(self, failure_id: str) -> np.ndarray | None:
        """The stored signature vector of a failure, or None if it was never indexed."""
        rows = (self.table.search().where(f"failure_id = '{_quote(failure_id)}'")
                .select(["vector"]).limit(1).to_list())
        return np.asarray(rows[0]["vector"], dtype=np.float32) if rows else None

    def vectors_of(self, failure_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored signature vectors of these failures (those indexed), by failure id."""
        if not failure_ids:
            return {}
        ids = ", ".join(f"'{_quote(f)}'" for f in failure_ids)
        rows = (self.table.search().where(f"failure_id IN ({ids})")
                .select(["failure_id", "vector"]).limit(len(failure_ids)).to_list())
        return {r["failure_id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    def nearest(self, vector: np.ndarray, k: int = 20, *, workflow: str | None = None,
                nprobes: int = 20) -> list[Neighbour]:
        """The `k` past failures whose signatures are closest to `vector`."""
        q = self.table.search(np.asarray(vector, dtype=np.float32)).limit(k).nprobes(nprobes)
        if workflow:
            q = q.where(f"workflow = '{_quote(workflow)}'", prefilter=True)
        rows = q.select(["failure_id", "workflow", "locus_node", "failure_class",
                         "_distance"]).to_list()
        return [Neighbour(r["failure_id"], math.sqrt(max(r["_distance"], 0.0)), r["workflow"],
                          r["locus_node"], r["failure_class"]) for r in rows]

    def count_within(self, vector: np.ndarray, radius: float, *, limit: int = 10_000) -> int:
        """How many stored failures lie within `radius`: a local density estimate."""
        rows = (self.table.search(np.asarray(vector, dtype=np.float32))
                .distance_range(upper_bound=radius * radius).limit(limit)
                .select(["failure_id", "_distance"]).to_list())
        return len(rows)
