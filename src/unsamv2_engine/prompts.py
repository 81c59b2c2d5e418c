"""Validation of interactive prompts (points, labels, granularity) with errors a user can act on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The granularity range of the model (the paper's [0.1, 1]); here, not in model/, so that prompts are
#: validated without torch (the light install's CLI with --server).
GRANULARITY_MIN = 0.1
GRANULARITY_MAX = 1.0


from unsamv2_engine.errors import PromptError  # noqa: E402 - re-exported: prompts.PromptError

#: Most granularities one sweep decodes (each costs a [256, 256] logit map and an [H, W] mask):
#: 0.1:1.0:91 is a step of 0.01, finer than the model resolves.
MAX_SWEEP_GRANULARITIES = 100


def check_granularity(g: float | None) -> float | None:
    """A float in [0.1, 1.0] (ints and numpy numbers accepted), or None for 'no granularity token'.

    Booleans and strings are refused: ``True`` or ``'0.5'`` is a mistake, not a granularity.
    """
    if g is None:
        return None
    if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, float, np.integer, np.floating)):
        raise PromptError(f"granularity must be a number in [0.1, 1.0], got {type(g).__name__} {g!r}")
    value = float(g)
    if not np.isfinite(value) or not (GRANULARITY_MIN - 1e-9 <= value <= GRANULARITY_MAX + 1e-9):
        raise PromptError(
            f"granularity must be in [{GRANULARITY_MIN}, {GRANULARITY_MAX}] (0.1 = smallest parts, 1.0 = whole "
            f"objects), got {g!r}"
        )
    return min(max(value, GRANULARITY_MIN), GRANULARITY_MAX)


def check_granularities(values: Sequence[float]) -> list[float]:
    """A list of 1 .. :data:`MAX_SWEEP_GRANULARITIES` granularities in [0.1, 1.0], order kept.

    A single number or a string is refused with the form to use instead.
    """
    if isinstance(values, (str, bytes)):
        raise PromptError(f"granularities must be a list of numbers such as [0.1, 0.5, 1.0], got the string {values!r}")
    if isinstance(values, (int, float, np.number)) or np.ndim(values) == 0:
        raise PromptError(f"granularities must be a list of numbers such as [0.1, 0.5, 1.0], got {values!r}; "
                          f"for one granularity pass [{values!r}] or use predict()")
    values = list(np.asarray(values).ravel()) if isinstance(values, np.ndarray) else list(values)
    if not values:
        raise PromptError("give at least one granularity for a sweep")
    if len(values) > MAX_SWEEP_GRANULARITIES:
        raise PromptError(f"{len(values)} granularities are too many for one sweep (at most "
                          f"{MAX_SWEEP_GRANULARITIES}; 0.1:1.0:91 is already a step of 0.01): use fewer")
    return [check_granularity(v) for v in values]  # type: ignore[misc]


def check_mask_threshold(value: object) -> float:
    """The mask threshold as a finite float (logits above it are foreground); NaN or inf is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PromptError(f"mask threshold must be a number (a logit, e.g. 0.0 or -1.0), got {value!r}")
    if not np.isfinite(value):
        raise PromptError(f"mask threshold must be a finite number (a logit, e.g. 0.0 or -1.0), got {value!r}")
    return float(value)


def check_points(points: object, labels: object, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[N, 2]`` as (x, y) pixels and labels ``[N]`` (1 positive, 0 negative).

    Pixel centres are at integer coordinates, as in napari: a point is inside the image when
    ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``. At least one positive point is required.
    Returns float32 ``[N, 2]`` and int32 ``[N]``.
    """
    try:
        if isinstance(points, (str, bytes)) or np.asarray(points).dtype.kind not in "biuf":
            raise TypeError("not numbers")
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"points must be numbers of shape [N, 2] as (x, y) pixel coordinates, e.g. [[120, 80]]; "
                          f"got {_short(points)}") from None
    if pts.ndim == 1 and pts.shape == (2,):
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"points must have shape [N, 2] as (x, y) pixel coordinates, got shape {pts.shape}")
    if len(pts) == 0:
        raise PromptError("no points given: click at least one positive point on the object")
    if not np.all(np.isfinite(pts)):
        raise PromptError("points contain NaN or infinite coordinates")
    try:
        if isinstance(labels, (str, bytes)) or np.asarray(labels).dtype.kind not in "biuf":
            raise TypeError("not numbers")
        lab = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"labels must be 1 (positive) or 0 (negative), one per point; got {_short(labels)}") from None
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
        raise PromptError(f"points outside the {w}x{h} (width x height) image: {bad}; coordinates are (x, y) = "
                          "(column, row)")
    return pts.astype(np.float32), lab.astype(np.int32)


def _short(value: object) -> str:
    """``repr(value)``, cut to 80 characters for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
