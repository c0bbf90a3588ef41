"""What a round aims at. `cegraph` aims at the densest failure mode not yet tried on this
version (failures in no mode, grouped by locus and class, come after the modes, so rare
errors are not ignored); the `scalar` and `random` baselines aim at all failures at once,
seeing only the score and a random handful of failures.

A selector sees only the shown-role failures (what a proposer may read); `members` then says
which verification-role failures a target stands for, so verification can sample them
without their text ever reaching a target's label or examples."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from cegraph.fss.diagnosis import KINDS
from cegraph.fss.failure import Failure
from cegraph.fss.failure_space import Analysis
from cegraph.fss.modes import DEFAULT_EPS
from cegraph.fss.signature import SignatureBuilder
from cegraph.refine.proposer import Counterexample, Target
from cegraph.task import Task
from cegraph.trace import Trace

EXAMPLES = 5


class TargetSelector(Protocol):
    """Contract: returns the targets of a version in the order to try them, each with its
    shown counterexamples (task ids) and a few examples; deterministic for the same inputs.
    `members` returns those of `failures` (verification-role failures of the same version,
    never shown) that the target of the last `targets` call stands for."""

    def targets(self, failures: Sequence[Failure], analysis: Analysis | None, runs: int,
                traces: dict[str, Trace], tasks: dict[str, Task]) -> list[Target]: ...

    def members(self, target: Target, failures: Sequence[Failure],
                builder: SignatureBuilder | None) -> list[Failure]: ...


def _example(f: Failure, traces: dict[str, Trace], tasks: dict[str, Task]) -> Counterexample:
    trace = traces.get(f.task_id)
    span = next((s for s in trace.spans if s.node_id == f.locus_node), None) if trace else None
    out = " | ".join(str(v) for v in span.outputs.values()) if span and span.outputs else (
        span.error or "" if span else "")
    task = tasks[f.task_id]
    return Counterexample(f.task_id, task.input, f.expected or task.reference[:200], f.observed,
                          f.message, f.locus_node, out)


def _target(target_id: str, label: str, members: Sequence[Failure], runs: int,
            traces: dict[str, Trace], tasks: dict[str, Task],
            shown: Sequence[Failure]) -> Target:
    locus = Counter((f.locus_node, f.locus_operator) for f in members).most_common(1)[0][0]
    cls = Counter(f.failure_class for f in members).most_common(1)[0][0]
    return Target(target_id, label, locus[0], locus[1], cls,
                  tuple(sorted({f.task_id for f in members})), len(members) / max(1, runs),
                  tuple(_example(f, traces, tasks) for f in shown[:EXAMPLES]), runs=runs)


class ModeTargets:
    """Failure modes by mass, then noise groups (locus x class) of two or more. A failure
    belongs to the mode of its nearest mode member if that is within `eps` (the density
    radius modes are found with), else to the noise group of its locus and class."""

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        self.eps = eps
        self._vectors: list[tuple[str, np.ndarray]] = []  # (mode id, a shown member)

    def targets(self, failures: Sequence[Failure], analysis: Analysis | None, runs: int,
                traces: dict[str, Trace], tasks: dict[str, Task]) -> list[Target]:
        by_id = {f.failure_id: f for f in failures}
        mode_of = {i: m.mode_id for m in (analysis.modes if analysis else [])
                   for i in m.failure_ids}
        self._vectors = [(mode_of[sig.failure_id], sig.vector)
                         for sig in (analysis.signatures if analysis else [])
                         if sig.failure_id in mode_of]
        out = []
        for mode in analysis.modes if analysis else []:
            members = [by_id[i] for i in mode.failure_ids]
            reps = [by_id[i] for i in mode.representative_ids]
            # the nearest to the centroid first, then the most distant others (diversity)
            rest = [f for f in members if f.failure_id not in mode.representative_ids]
            target = _target(mode.mode_id, mode.label, members, runs, traces, tasks,
                             reps[:3] + rest[::-1][:2])
            # the kind of error its diagnoses name ranks the edits of the operator prior
            kind = next((k for k, v in KINDS.items() if (mode.kind_label or "").startswith(v)),
                        "")
            out.append(replace(target, kind=kind,
                               centroid=tuple(float(x) for x in mode.centroid)))
        noise = [by_id[i] for i in analysis.noise_ids] if analysis else list(failures)
        groups: dict[tuple[str, str], list[Failure]] = {}
        for f in noise:
            groups.setdefault((f.locus_node, f.failure_class), []).append(f)
        for (node, cls), members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            if len(members) >= 2:
                out.append(_target(f"noise:{node}:{cls}", f"{node}: {cls} (no dense mode)",
                                   members, runs, traces, tasks, members))
        return out

    def members(self, target: Target, failures: Sequence[Failure],
                builder: SignatureBuilder | None) -> list[Failure]:
        modes = [self._mode(sig.vector) for sig in builder.build(failures)] \
            if builder is not None and self._vectors and failures else [None] * len(failures)
        if not target.target_id.startswith("noise:"):
            return [f for f, m in zip(failures, modes, strict=True) if m == target.target_id]
        return [f for f, m in zip(failures, modes, strict=True) if m is None
                and (f.locus_node, f.failure_class) == (target.locus_node, target.failure_class)]

    def _mode(self, vector: np.ndarray) -> str | None:
        dist, mode = min((float(np.linalg.norm(vector - v)), m) for m, v in self._vectors)
        return mode if dist <= self.eps else None


class AggregateTarget:
    """One target: every failure, shown as a random handful (the information collapse)."""

    def __init__(self, seed: int = 0, size: int = 12) -> None:
        self.seed = seed
        self.size = size

    def targets(self, failures: Sequence[Failure], analysis: Analysis | None, runs: int,
                traces: dict[str, Trace], tasks: dict[str, Task]) -> list[Target]:
        if not failures:
            return []
        rng = random.Random(f"{self.seed}:{len(failures)}:{runs}")
        picked = rng.sample(list(failures), min(self.size, len(failures)))
        t = _target("aggregate", "all failures", picked, runs, traces, tasks, picked)
        return [Target(t.target_id, t.label, "", "", "", t.task_ids, len(failures) / runs,
                       tuple(Counterexample(e.task_id, e.input, e.expected, e.observed,
                                            e.message, "") for e in t.examples))]

    def members(self, target: Target, failures: Sequence[Failure],
                builder: SignatureBuilder | None) -> list[Failure]:
        return list(failures)  # the aggregate target stands for every failure


def untried(targets: Sequence[Target], tried: Collection[str]) -> list[Target]:
    return [t for t in targets if t.target_id not in tried]
