"""Stored failures read back as `RunDigest`s (question, each node's output, expected vs.
observed) from the history's runs and spans: what the diagnosis reads, the benchmark
recomputes trace features from, and `cegraph bench failures` prints for hand labelling."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cegraph.fss.failure import Failure
from cegraph.fss.features import NodeOutput, RunDigest, kind_of_dataset, outputs_text, question_of

if TYPE_CHECKING:
    from cegraph.storage.warehouse import Warehouse


def run_digests(wh: Warehouse, failures: Sequence[Failure]) -> dict[str, RunDigest]:
    """The digest of each failure whose run and spans are stored, by failure id."""
    run_ids = list({f.run_id for f in failures})
    if not run_ids:
        return {}
    runs = {r[0]: (r[1], r[2]) for r in wh.rows(
        "SELECT run_id, output, dataset FROM runs WHERE run_id IN "
        "(SELECT unnest(?::VARCHAR[]))", [run_ids])}
    spans: dict[str, list[tuple]] = {}
    for row in wh.rows(
            "SELECT run_id, node_id, operator, depth, inputs, outputs, truncated, error, "
            "error_type, skipped FROM spans WHERE run_id IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY run_id, position", [run_ids]):
        spans.setdefault(row[0], []).append(row)
    out = {}
    for f in failures:
        if f.run_id not in runs or f.run_id not in spans:
            continue
        output, dataset = runs[f.run_id]
        rows = spans[f.run_id]
        nodes = tuple(NodeOutput(node, op, depth or 0, outputs_text(json.loads(outs or "{}")),
                                 bool(cut), f"{etype}: {err}" if err else None)
                      for _, node, op, depth, _, outs, cut, err, etype, skipped in rows
                      if not skipped)
        question = question_of([json.loads(r[4] or "{}") for r in rows])
        out[f.failure_id] = RunDigest(f.run_id, f.task_id,
                                      kind_of_dataset(dataset, f.failure_class), question,
                                      nodes, output or "", f.failure_class, f.message,
                                      f.expected, f.observed)
    return out


def passing_solutions(wh: Warehouse, dataset: str, task_ids: Sequence[str]) -> dict[str, str]:
    """A right path for each of these tasks that some stored run passed (any version, e.g.
    the version that fixed it): that run's reasoning, every node's output but the last (the
    one that formats the answer), by task id; the latest passing run wins."""
    if not task_ids:
        return {}
    rows = wh.rows(
        "SELECT r.task_id, r.run_id, s.outputs FROM runs r JOIN spans s USING (run_id) "
        "WHERE r.passed AND r.dataset = ? AND r.task_id IN (SELECT unnest(?::VARCHAR[])) "
        "AND NOT coalesce(s.skipped, false) ORDER BY r.ended_at, r.run_id, s.position",
        [dataset, list(task_ids)])
    runs: dict[str, dict[str, list[str]]] = {}
    for task_id, run_id, outputs in rows:
        runs.setdefault(task_id, {}).setdefault(run_id, []).append(
            outputs_text(json.loads(outputs or "{}")))
    return {task: "\n".join(texts[:-1] if len(texts) > 1 else texts)
            for task, by_run in runs.items() for texts in [list(by_run.values())[-1]]}
