"""Seed workflows shipped with the package: deliberately plain first production versions."""

from __future__ import annotations

from pathlib import Path

from cegraph.graph import Workflow
from cegraph.task import DATASET_KIND

SEEDS = {"math": "math.yaml", "code": "code.yaml", "qa": "qa.yaml"}


def seed(kind: str) -> Workflow:
    """The seed workflow for a task kind (`math`, `code`, `qa`) or a dataset name."""
    kind = DATASET_KIND.get(kind, kind)
    if kind not in SEEDS:
        raise KeyError(f"no seed workflow for {kind!r}; choose one of {', '.join(SEEDS)}")
    return Workflow.load(Path(__file__).parent / SEEDS[kind])
