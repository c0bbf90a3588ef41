"""Thin Prefect tasks over the cegraph library and the storage layer."""
