"""Every byte on disk: the DuckDB catalog, the Parquet history, the LanceDB vectors."""

from storage.vectors import VectorIndex
from storage.warehouse import Warehouse, default_home

__all__ = ["VectorIndex", "Warehouse", "default_home"]
