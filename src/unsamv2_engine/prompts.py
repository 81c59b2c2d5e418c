"""Validation of interactive prompts (points, labels, granularity) with errors a user can act on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The granularity range of the model (the paper's [0.1, 1]); here, not in model/, so that prompts are
#: validated without torch (the light install's CLI with --server).
GRANULARITY_MIN = 0.1
GRANULARITY_MAX = 1.0


class PromptError(ValueError):
    """A prompt the engine cannot use (and why)."""


def check_granularity(g: float | None) -> float | None:
    """A float in [0.1, 1.0] (ints accepted), or None for 'no granularity token'."""
    if g is None:
        return None
    try:
        value = float(g)
    except (TypeError, ValueError):
        raise PromptError(f"granularity must be a number in [0.1, 1.0], got {g!r}") from None
    if not np.isfinite(value) or not (GRANULARITY_MIN - 1e-9 <= value <= GRANULARITY_MAX + 1e-9):
        raise PromptError(
            f"granularity must be in [{GRANULARITY_MIN}, {GRANULARITY_MAX}] (0.1 = smallest parts, 1.0 = whole "
            f"objects), got {g!r}"
        )
    return min(max(value, GRANULARITY_MIN), GRANULARITY_MAX)


def check_granularities(values: Sequence[float]) -> list[float]:
    values = list(values)
    if not values:
        raise PromptError("give at least one granularity for a sweep")
    return [check_granularity(v) for v in values]  # type: ignore[misc]


def check_points(points: object, labels: object, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[N, 2]`` as (x, y) pixels and labels ``[N]`` (1 positive, 0 negative).

    Pixel centres are at integer coordinates, as in napari: a point is inside the image when
    ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``. At least one positive point is required.
    Returns float32 ``[N, 2]`` and int32 ``[N]``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1 and pts.shape == (2,):
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"points must have shape [N, 2] as (x, y) pixel coordinates, got shape {pts.shape}")
    if len(pts) == 0:
        raise PromptError("no points given: click at least one positive point on the object")
    if not np.all(np.isfinite(pts)):
        raise PromptError("points contain NaN or infinite coordinates")
    lab = np.asarray(labels)
    if lab.ndim == 0:
        lab = lab[None]
    if lab.shape != (len(pts),):
        raise PromptError(f"labels must have shape [{len(pts)}] (one per point), got shape {lab.shape}")
    if not np.all(np.isin(lab, (0, 1))):
        raise PromptError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(lab.tolist()))}")
    if not np.any(lab == 1):
        raise PromptError("all points are negative: add at least one positive point on the object")
    h, w = image_hw
    outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
    if np.any(outside):
        bad = ", ".join(f"({x:g}, {y:g})" for x, y in pts[outside][:5])
        raise PromptError(f"points outside the {w}x{h} (width x height) image: {bad}; coordinates are (x, y) = (column, row)")
    return pts.astype(np.float32), lab.astype(np.int32)
