"""Failure modes: the dense regions of the Failure Signature Space, and their identity
across nights.

Why weighted DBSCAN on distinct signatures rather than HDBSCAN on all points: production
failures repeat. After message normalization, 100,000 failures are typically a few thousand
*distinct* signatures (same locus, same normalized text => the same vector). Clustering
the distinct vectors with each weighted by its count gives exactly the density of failures
(a point is a core point when at least `min_size` failures lie within `eps`), costs
O(distinct) rather than O(failures), and keeps a heavily repeated single template a mode
instead of a lone point. sklearn's HDBSCAN takes no sample weights, so it would see that
template as one point and call it noise. `eps` is meaningful because signature vectors have
a fixed scale (unit parts, see `signature.py`). When distinct signatures are many, PCA to
`reduce_dim` dimensions first keeps neighbour search cheap. Failures in no mode are noise:
kept, counted in the mass, listed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cegraph.fss.signature import Signature

DEFAULT_EPS = 0.30
DEFAULT_MIN_SIZE = 3
MATCH_DISTANCE = 0.35


@dataclass
class FailureMode:
    mode_id: str
    failure_ids: list[str]
    centroid: np.ndarray
    density: float  # failures per unit mean squared radius around the centroid
    locus_node: str
    locus_operator: str
    template: str  # the most common normalized message
    representative_ids: list[str]
    status: str = "new"  # new | growing | shrinking | stable | resolved
    previous_mode_id: str | None = None
    mass: float = 0.0
    mass_lo: float = 0.0
    mass_hi: float = 0.0
    llm_label: str | None = None  # see cegraph.fss.mode_label
    kind_label: str | None = None  # from its members' diagnoses (cegraph.fss.diagnosis)

    @property
    def size(self) -> int:
        return len(self.failure_ids)

    @property
    def label(self) -> str:
        rule = f"{self.locus_node} ({self.locus_operator}): {self.kind_label or self.template}"
        return f"{self.llm_label} [{rule}]" if self.llm_label else rule


@dataclass
class ModeResult:
    modes: list[FailureMode]
    noise_ids: list[str] = field(default_factory=list)


def _mode_id(seed_failure: str, attempt: int = 0) -> str:
    seed = seed_failure if attempt == 0 else f"{seed_failure}#{attempt}"
    return "m-" + hashlib.sha256(seed.encode()).hexdigest()[:10]


def find_modes(signatures: Sequence[Signature], *, eps: float = DEFAULT_EPS,
               min_size: int = DEFAULT_MIN_SIZE, reduce_dim: int = 32,
               reduce_above: int = 2000) -> ModeResult:
    """Cluster signatures into modes ranked by size (= mass on a shared run count)."""
    if not signatures:
        return ModeResult([])
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, s in enumerate(signatures):
        groups.setdefault((s.locus_node, s.locus_operator, s.text_hash), []).append(i)
    members = list(groups.values())
    points = np.stack([signatures[m[0]].vector for m in members])
    weights = np.array([len(m) for m in members], dtype=float)
    space = points
    if len(points) > reduce_above and points.shape[1] > reduce_dim:
        from sklearn.decomposition import PCA  # seconds to import: only when clustering

        space = PCA(n_components=reduce_dim, random_state=0).fit_transform(points)
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=eps, min_samples=min_size).fit(space, sample_weight=weights).labels_

    modes: list[FailureMode] = []
    noise: list[str] = []
    for label in sorted(set(labels)):
        idx = [i for g, lab in enumerate(labels) if lab == label for i in members[g]]
        ids = [signatures[i].failure_id for i in idx]
        if label == -1:
            noise.extend(ids)
            continue
        vecs = np.stack([signatures[i].vector for i in idx])
        centroid = vecs.mean(axis=0)
        sq = ((vecs - centroid) ** 2).sum(axis=1)
        locus = Counter((signatures[i].locus_node, signatures[i].locus_operator) for i in idx)
        template = Counter(signatures[i].text for i in idx).most_common(1)[0][0]
        nearest = [idx[j] for j in np.argsort(sq, kind="stable")[:3]]
        modes.append(FailureMode(
            mode_id=_mode_id(min(ids)), failure_ids=ids, centroid=centroid,
            density=len(idx) / (float(sq.mean()) + 1e-3),
            locus_node=locus.most_common(1)[0][0][0], locus_operator=locus.most_common(1)[0][0][1],
            template=template, representative_ids=[signatures[i].failure_id for i in nearest]))
    modes.sort(key=lambda m: (-m.size, m.mode_id))
    return ModeResult(modes, noise)


@dataclass(frozen=True)
class PreviousMode:
    """Yesterday's mode as stored: enough to match it and to mark it resolved."""

    mode_id: str
    centroid: np.ndarray
    mass: float
    label: str
    mass_lo: float = 0.0  # its 95% interval; unknown = [0, 1], which no trend separates from
    mass_hi: float = 1.0


def trend(mode: FailureMode, previous: PreviousMode) -> str:
    """`growing`/`shrinking` only when the 95% intervals of the two masses do not overlap:
    2 vs 3 failures is noise, not a trend."""
    if mode.mass_lo > previous.mass_hi:
        return "growing"
    if mode.mass_hi < previous.mass_lo:
        return "shrinking"
    return "stable"


def match_modes(previous: Sequence[PreviousMode], current: list[FailureMode], *,
                used_ids: Iterable[str] = (),
                max_distance: float = MATCH_DISTANCE) -> list[PreviousMode]:
    """Give matched current modes yesterday's id and a trend; return the resolved ones.

    Matching is a minimum-cost assignment on centroid distance, accepted only within
    `max_distance` (a mode that moved further is a different mode). A new mode gets an id
    that no mode of the workflow ever had (`used_ids`: every id stored for it, resolved
    ones included), so two modes never share an id. Current modes must carry their mass.
    """
    for mode in current:
        mode.status, mode.previous_mode_id = "new", None
    matched: set[int] = set()
    if previous and current:
        a = np.stack([m.centroid for m in current])
        b = np.stack([p.centroid for p in previous])
        dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(dist)
        for r, c in zip(rows, cols, strict=True):
            if dist[r, c] > max_distance:
                continue
            mode, prev = current[r], previous[c]
            matched.add(c)
            mode.previous_mode_id = prev.mode_id
            mode.mode_id = prev.mode_id  # identity is stable across nights
            mode.status = trend(mode, prev)
    taken = {*used_ids, *(p.mode_id for p in previous),
             *(m.mode_id for m in current if m.previous_mode_id)}
    for mode in current:
        if mode.previous_mode_id is None:
            seed, attempt = min(mode.failure_ids), 0
            while mode.mode_id in taken:
                attempt += 1
                mode.mode_id = _mode_id(seed, attempt)
            taken.add(mode.mode_id)
    return [p for i, p in enumerate(previous) if i not in matched]
