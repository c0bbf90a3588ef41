"""The 2-D map of the Failure Signature Space: a PCA projection of the signature vectors.

PCA rather than UMAP: it is deterministic, needs no extra dependency (scikit-learn is one
already), and on a few hundred failures its two axes are the two directions the failures
differ most in, which is what the map is for; the share of variance they keep is shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


@dataclass(frozen=True)
class Projection:
    xy: np.ndarray  # (n, 2)
    method: str  # what the axes are, for the plot's caption


def project(vectors: np.ndarray) -> Projection:
    """Project `vectors` (n, d) to 2-D; fewer than 3 vectors are placed on a line."""
    n = len(vectors)
    if n == 0:
        return Projection(np.zeros((0, 2)), "no signatures")
    if n < 3 or vectors.shape[1] < 2:
        return Projection(np.column_stack([np.arange(n, dtype=float), np.zeros(n)]),
                          f"{n} signature(s): too few to project")
    vectors = np.asarray(vectors, dtype=np.float64)
    if np.allclose(vectors, vectors[0], atol=1e-6):
        return Projection(np.zeros((n, 2)), f"all {n} signatures coincide (one point)")
    pca = PCA(n_components=2, random_state=0)
    xy = pca.fit_transform(vectors)
    # an axis along which the points do not spread carries rounding noise (1e-16), which a
    # plot would stretch into a spread: set it to 0
    flat = pca.explained_variance_ <= 1e-9 * pca.explained_variance_.sum()
    xy[:, flat] = 0.0
    kept = float(pca.explained_variance_ratio_.sum())
    line = " (they lie on a line)" if flat.any() else ""
    return Projection(xy, f"PCA of {vectors.shape[1]}-d signatures ({kept:.0%} of the "
                          f"variance on these two axes){line}")
