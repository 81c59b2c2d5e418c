"""Qt-free conversions between napari layer data and engine requests/results.

Everything here works on plain numpy arrays and dicts, so it is unit-tested without a viewer.
Conventions: napari points are (..., row, col) in data coordinates of the image layer; the
engine wants (x, y) = (col, row). An nD image is prompted on one 2D plane, addressed by the
indices of its leading (non-displayed) axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POLARITY = "polarity"
POSITIVE = "positive"
NEGATIVE = "negative"
POLARITY_COLOURS = {POSITIVE: "#22dd55", NEGATIVE: "#ff3355"}


def spatial_ndim(image_ndim: int, rgb: bool) -> int:
    return image_ndim - 1 if rgb else image_ndim


def plane_of(data: np.ndarray, leading: tuple[int, ...], rgb: bool) -> np.ndarray:
    """The 2D plane (``[H, W]`` or ``[H, W, C]``) at ``leading`` indices of an nD image."""
    n_lead = spatial_ndim(data.ndim, rgb) - 2
    if len(leading) != n_lead:
        raise ValueError(f"expected {n_lead} leading indices for a {data.ndim}-D image, got {leading}")
    return np.asarray(data[tuple(leading)])


def leading_indices(current_step: Sequence[int], image_ndim: int, rgb: bool) -> tuple[int, ...]:
    """Indices of the non-displayed axes for the plane shown now (the last two axes are displayed)."""
    n_lead = spatial_ndim(image_ndim, rgb) - 2
    steps = tuple(int(s) for s in current_step)
    return steps[len(steps) - n_lead - 2: len(steps) - 2] if n_lead else ()


def image_key(layer_name: str, layer_id: int, leading: tuple[int, ...]) -> str:
    """Engine cache key of a layer's plane."""
    return f"{layer_name}#{layer_id}@{','.join(map(str, leading))}"


def prompt_from_points(points: np.ndarray, polarity: Sequence[str], leading: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Points on the current plane as engine prompts.

    points ``[N, D]`` in image data coordinates (``D = len(leading) + 2``); polarity ``[N]``.
    Returns points_xy ``[M, 2]`` float32 (x = col, y = row) and labels ``[M]`` (1 positive, 0
    negative) for the M points whose leading coordinates round to ``leading``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, len(leading) + 2) if len(points) else \
        np.zeros((0, len(leading) + 2))
    pol = np.asarray(polarity, dtype=object)
    if len(pol) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(pol)} polarity values")
    on_plane = np.all(np.rint(pts[:, :len(leading)]) == np.asarray(leading), axis=1) if leading else \
        np.ones(len(pts), bool)
    rc = pts[on_plane][:, -2:]
    labels = (pol[on_plane] != NEGATIVE).astype(np.int32)
    return rc[:, ::-1].astype(np.float32), labels


def plane_indices(mask: np.ndarray, leading: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Fancy indices of the True pixels of a 2D mask inside an nD label array (for ``data_setitem``)."""
    rows, cols = np.nonzero(mask)
    return tuple(np.full(rows.shape, i, dtype=np.intp) for i in leading) + (rows, cols)


def parent_label(labels_plane: np.ndarray, mask: np.ndarray, *, containment: float = 0.5) -> int:
    """The existing label covering most of ``mask`` (at least ``containment`` of it), else 0."""
    under = labels_plane[mask]
    under = under[under > 0]
    if under.size == 0:
        return 0
    values, counts = np.unique(under, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]) if counts[best] >= containment * mask.sum() else 0


def append_row(features: dict[str, list], row: dict[str, object]) -> dict[str, list]:
    """Append one row to a dict-of-lists features table (columns created as needed)."""
    n = len(next(iter(features.values()))) if features else 0
    out = {k: list(v) for k, v in features.items()}
    for key in row:
        out.setdefault(key, [None] * n)
    for key in out:
        out[key].append(row.get(key))
    return out


def parse_granularity_list(text: str) -> list[float]:
    """``"0.1,0.5,1"`` or ``"0.1:1.0:10"`` (N values, inclusive) -> granularities; ValueError if malformed."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError("use START:STOP:N, e.g. 0.1:1.0:10")
        start, stop, n = float(parts[0]), float(parts[1]), int(parts[2])
        if n < 1:
            raise ValueError("N must be at least 1")
        values = np.linspace(start, stop, n).round(10).tolist()
    else:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if not values:
        raise ValueError("give at least one granularity")
    bad = [v for v in values if not 0.1 - 1e-9 <= v <= 1.0 + 1e-9]
    if bad:
        raise ValueError(f"granularities must be in [0.1, 1.0]: {bad}")
    return values
