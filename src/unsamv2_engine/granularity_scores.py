"""Granularity targets of masks in one part/whole hierarchy (docs/model-reference.md §5.4).

Within one instance tree (the instance and all its parts), sorted by pixel area:
the smallest mask gets 0.1, the largest 1.0, every other
``0.1 + 0.9 * (sqrt(A_i + 1e-10) - sqrt(A_min + 1e-10)) / (sqrt(A_max + 1e-10) - sqrt(A_min + 1e-10))``.
All areas equal (a single mask included) -> 1.0 each; NaN/inf -> 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

G_MIN = 0.1
G_MAX = 1.0
_EPS = 1e-10


def sqrt_area_granularity(areas: Sequence[float] | np.ndarray) -> np.ndarray:
    """Granularity of each mask of one hierarchy from its pixel area; same order as ``areas``, float64 ``[N]``."""
    a = np.asarray(areas, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"areas must be a 1-D sequence, got shape {a.shape}")
    if a.size == 0:
        return a.copy()
    roots = np.sqrt(a + _EPS)
    lo, hi = roots.min(), roots.max()
    if not hi > lo:
        return np.full(a.shape, G_MAX)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = G_MIN + (G_MAX - G_MIN) * (roots - lo) / (hi - lo)
    g[np.argmin(a)] = G_MIN
    g[np.argmax(a)] = G_MAX
    g[~np.isfinite(g)] = G_MAX
    return g
