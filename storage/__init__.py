"""Every byte on disk: the DuckDB catalog, the Parquet history, the LanceDB vectors."""

from typing import Any

from cegraph.storage.warehouse import Warehouse, default_home

__all__ = ["VectorIndex", "Warehouse", "default_home"]


def __getattr__(name: str) -> Any:
    # LanceDB takes a second to import: `VectorIndex` loads it on first use (PEP 562)
    if name == "VectorIndex":
        from cegraph.storage.vectors import VectorIndex

        return VectorIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
