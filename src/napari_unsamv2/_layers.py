"""Qt-free conversions between napari layer data and engine requests/results.

Everything here works on plain numpy arrays and dicts, so it is unit-tested without a viewer.
Conventions: napari points are (..., row, col) in data coordinates of the image layer; the
engine wants (x, y) = (col, row). An nD image is prompted on one 2D plane, addressed by the
indices of its leading (non-displayed) axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

POLARITY = "polarity"
POSITIVE = "positive"
NEGATIVE = "negative"
POLARITY_COLOURS = {POSITIVE: "#22dd55", NEGATIVE: "#ff3355"}


def spatial_ndim(image_ndim: int, rgb: bool) -> int:
    return image_ndim - 1 if rgb else image_ndim


def level0(layer) -> object:
    """The full-resolution array of an image layer: ``data`` (numpy, dask, zarr ...), or level 0 of a multiscale
    layer. Never converted: slice it to read only what is needed.
    """
    data = layer.data
    return data[0] if getattr(layer, "multiscale", False) else data


def plane_of(data, leading: tuple[int, ...], rgb: bool) -> np.ndarray:
    """The 2D plane (``[H, W]`` or ``[H, W, C]``) at ``leading`` indices of an nD image (any array-like:
    only that plane is read from a dask or zarr array).
    """
    ndim = len(data.shape)
    n_lead = spatial_ndim(ndim, rgb) - 2
    if len(leading) != n_lead:
        raise ValueError(f"expected {n_lead} leading indices for a {ndim}-D image, got {leading}")
    plane = data[tuple(leading)] if leading else data
    return np.asarray(plane)


def is_lazy(data) -> bool:
    """Whether layer data is read on demand (dask, zarr, memmap-like wrappers) rather than a numpy array."""
    return not isinstance(data, np.ndarray)


def box_index(leading: tuple[int, ...], box: tuple[int, int, int, int] | None) -> tuple:
    """Index of a mask's window in an nD labels array: ``leading`` + the rows and columns of ``box`` =
    (x0, y0, x1, y1) (None: the whole plane).
    """
    if box is None:
        return tuple(leading)
    x0, y0, x1, y1 = box
    return (*leading, slice(y0, y1), slice(x0, x1))


def leading_indices(current_step: Sequence[int], image_ndim: int, rgb: bool) -> tuple[int, ...]:
    """Indices of the non-displayed axes for the plane shown now (the last two axes are displayed)."""
    n_lead = spatial_ndim(image_ndim, rgb) - 2
    steps = tuple(int(s) for s in current_step)
    return steps[len(steps) - n_lead - 2: len(steps) - 2] if n_lead else ()


def image_key(layer_name: str, layer_id: int, leading: tuple[int, ...], *, content: str = "",
              contrast: tuple[float, float] | None = None) -> str:
    """Engine cache key of a layer's plane: the layer and plane, plus what the model sees of it,
    ``content`` (:func:`plane_signature`) and ``contrast`` (the intensity mapping, None for uint8).
    """
    key = f"{layer_name}#{layer_id}@{','.join(map(str, leading))}"
    if content or contrast is not None:
        limits = "" if contrast is None else ",".join(f"{c:.17g}" for c in contrast)
        key += f"|{content}|{limits}"
    return key


def plane_signature(plane: np.ndarray) -> str:
    """BLAKE2b (16 bytes, hex) of a plane's shape, dtype and pixels: edits of the data change it."""
    import hashlib

    h = hashlib.blake2b(repr((plane.shape, plane.dtype.str)).encode(), digest_size=16)
    h.update(np.ascontiguousarray(plane).tobytes())
    return h.hexdigest()


def file_signature(path: str, frame: int | None) -> str:
    """Content key of a file's plane without reading it: path, size, modification time (ns) and frame."""
    import os

    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{frame}"


def prompt_from_points(points: np.ndarray, polarity: Sequence[str],
                       leading: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
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


def plane_indices(mask: np.ndarray, leading: tuple[int, ...],
                  box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, ...]:
    """Fancy indices of the True pixels of a 2D mask inside an nD label array (for ``data_setitem``); a mask
    over ``box`` = (x0, y0, x1, y1) image pixels (a tiled image's decode) is placed there.
    """
    rows, cols = np.nonzero(mask)
    if box is not None:
        rows, cols = rows + box[1], cols + box[0]
    return tuple(np.full(rows.shape, i, dtype=np.intp) for i in leading) + (rows, cols)


def file_plane(path: str | None, layer_data, leading: tuple[int, ...], rgb: bool, *, samples: int = 3,
               side: int = 32) -> tuple[str, int | None] | None:
    """``(path, frame)`` when the engine can read the plane at ``leading`` from the layer's file itself (lazily:
    :func:`unsamv2_engine.io.omezarr.open_lazy_image`), else None.

    Checked cheaply, without reading the plane: the file opens lazily, its plane has the layer plane's shape
    and dtype, and ``samples`` windows of ``side`` px (corner, centre, far corner) are equal. At most one
    leading axis (the file's stack axis, ``frame``).
    """
    from unsamv2_engine.io.omezarr import open_lazy_image

    if not path or len(leading) > 1:
        return None
    frame = int(leading[0]) if leading else None
    try:
        lazy = open_lazy_image(path, frame=frame)
    except Exception:  # noqa: BLE001 - any unreadable / other layout: send the pixels instead
        return None
    want = tuple(int(s) for s in layer_data.shape[len(leading):])
    if tuple(int(s) for s in lazy.shape) != want or np.dtype(lazy.dtype) != np.dtype(layer_data.dtype):
        return None
    h, w = want[:2]
    for fy, fx in [(0, 0), (0.5, 0.5), (1, 1)][:samples]:
        y, x = int(max(0, (h - side) * fy)), int(max(0, (w - side) * fx))
        window = (slice(y, y + side), slice(x, x + side))
        if not np.array_equal(np.asarray(lazy[window]), np.asarray(layer_data[tuple(leading) + window])):
            return None
    return str(path), frame


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


# ------------------------------------------------------------------------------ propagation
# A z-stack or time-lapse layer is propagated along one of its leading axes, through the current
# plane: the "sub-stack" holds every index of that axis and the current index of the other leading
# axes ([N, H, W], or [N, H, W, C] for RGB). Conventions of the engine: ``unsamv2_engine.video``.

OBJECT = "object"


def propagation_axes(image_ndim: int, rgb: bool) -> tuple[int, ...]:
    """The leading axes a layer can be propagated along (``()`` for a 2D image)."""
    return tuple(range(max(spatial_ndim(image_ndim, rgb) - 2, 0)))


def substack_index(leading: tuple[int, ...], axis: int) -> tuple[int | slice, ...]:
    """Index of the sub-stack through the plane at ``leading`` along leading axis ``axis``.

    Basic indexing only (ints and one ``slice(None)``), so it gives a view of the image data
    (``[N, H, W]`` or ``[N, H, W, C]``) and of a labels volume of the image's spatial shape.
    """
    if not 0 <= axis < len(leading):
        raise ValueError(f"axis {axis} is not a leading axis of a plane addressed by {tuple(leading)}: "
                         f"choose one of 0 .. {len(leading) - 1}")
    return tuple(slice(None) if i == axis else int(v) for i, v in enumerate(leading))


def object_prompts(points: np.ndarray, polarity: Sequence[str], objects: Sequence[int], leading: tuple[int, ...],
                   axis: int, granularity: float | None, per_object: Mapping[int, float] | None = None) -> list:
    """Prompts-layer points as the engine's :class:`~unsamv2_engine.video.data.ObjectPrompt` list.

    points ``[N, D]`` in image data coordinates (``D = len(leading) + 2``); polarity ``[N]``; objects
    ``[N]`` object ids (>= 1). Only the points on the sub-stack (:func:`substack_index`) count: their
    other leading coordinates round to ``leading``. One prompt per (object, slice), slice = the rounded
    coordinate along ``axis``, ordered by object then slice; x = column, y = row. Each object gets its
    g from ``per_object`` (object id -> g), else ``granularity``. ValueError, with what to do, when
    there is no point on the sub-stack or an object has only negative points on a slice.
    """
    from unsamv2_engine.video.data import ObjectPrompt  # numpy only

    index = substack_index(leading, axis)
    n_lead = len(leading)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, n_lead + 2) if len(points) else np.zeros((0, n_lead + 2))
    pol = np.asarray(polarity, dtype=object)
    ids = np.asarray(objects).astype(np.int64) if len(objects) else np.zeros(0, np.int64)
    if not len(pol) == len(ids) == len(pts):
        raise ValueError(f"{len(pts)} points but {len(pol)} polarity values and {len(ids)} object ids")
    if np.any(ids < 1):
        bad = sorted(set(ids[ids < 1].tolist()))
        raise ValueError(f"object ids must be >= 1 (they become label values), got {bad}")
    lead = np.rint(pts[:, :n_lead]).astype(np.int64)
    others = [i for i in range(n_lead) if i != axis]
    on_stack = np.all(lead[:, others] == np.asarray([index[i] for i in others], dtype=np.int64), axis=1)
    if not on_stack.any():
        raise ValueError("no prompts on this stack: click the object on a slice first (points on other "
                         "positions of the non-propagated axes do not count)")
    prompts = []
    for object_id, frame in sorted({(int(o), int(f)) for o, f in zip(ids[on_stack], lead[on_stack, axis])}):
        group = on_stack & (ids == object_id) & (lead[:, axis] == frame)
        labels = (pol[group] != NEGATIVE).astype(np.int32)
        if not labels.any():
            raise ValueError(f"object {object_id} has only negative points on slice {frame}: add a positive point "
                             f"on the object there too, or delete those points")
        g = (per_object or {}).get(object_id, granularity)
        prompts.append(ObjectPrompt(object_id, frame, pts[group][:, -2:][:, ::-1].astype(np.float32), labels, g))
    return prompts


def data_signature(data: object, *, max_samples: int = 1 << 16) -> str:
    """A cheap signature of layer data: shape, dtype, identity and (numpy) a hash of a strided sample
    of at most about ``max_samples`` values. It changes when the data is replaced or edited in a
    sampled pixel; it is not a full hash (a stack may be gigabytes).
    """
    import hashlib

    shape = tuple(int(s) for s in data.shape)  # type: ignore[attr-defined]
    text = f"{'x'.join(map(str, shape))}:{np.dtype(data.dtype).str}:{id(data):x}"  # type: ignore[attr-defined]
    if isinstance(data, np.ndarray) and data.size:
        per_axis = max(1, int(round(max_samples ** (1.0 / data.ndim))))
        sample = data[tuple(slice(None, None, max(1, s // per_axis)) for s in shape)]
        text += ":" + hashlib.blake2b(np.ascontiguousarray(sample).tobytes(), digest_size=8).hexdigest()
    return text


def stack_key(layer_name: str, layer_id: int, leading: tuple[int, ...], axis: int, signature: str) -> str:
    """Engine cache key of a sub-stack: the layer, the axis (``*``) and the other indices, the data signature."""
    position = ",".join("*" if i == axis else str(int(v)) for i, v in enumerate(leading))
    return f"{layer_name}#{layer_id}@{position}|{signature}"


def write_propagated(volume: np.ndarray, index: tuple[int | slice, ...], labels: np.ndarray,
                     frames_done: np.ndarray, axis: int = 0) -> np.ndarray:
    """Write the finished slices of a propagation into ``volume`` in place; returns ``volume``.

    volume: the labels layer data (the image's spatial shape); index: :func:`substack_index`;
    labels: the engine's sub-stack labels ``[N, H, W]``; frames_done: bool ``[N]``; axis: the slice
    axis of ``labels``. Slices a cancel left unfinished keep what ``volume`` had.
    """
    target = volume[index]
    if target.shape != labels.shape:
        raise ValueError(f"propagated labels of shape {labels.shape} do not fit the sub-stack {target.shape}")
    done = np.asarray(frames_done, bool)
    take = tuple(done if i == axis else slice(None) for i in range(labels.ndim))
    target[take] = labels[take]
    return volume


def propagation_features(labels: np.ndarray, object_ids: Sequence[int], scores: np.ndarray,
                         granularities: dict[int, float | None], prompted: dict[int, list[int]],
                         axis: int = 0) -> dict[str, list]:
    """One row per object: ``index`` (its label), ``granularity``, ``score`` (mean predicted IoU over
    the slices computed, NaN if none), ``slices`` (slices where it is present), ``area`` (voxels),
    ``prompted`` (its prompted slices, ``"2,5"``). labels: the sub-stack labels; scores
    ``[n_slices, n_objects]`` in ``object_ids`` order.
    """
    rows: dict[str, list] = {"index": [], "granularity": [], "score": [], "slices": [], "area": [], "prompted": []}
    other_axes = tuple(i for i in range(labels.ndim) if i != axis)
    for k, object_id in enumerate(object_ids):
        mask = labels == object_id
        column = np.asarray(scores, np.float64)[:, k]
        rows["index"].append(int(object_id))
        rows["granularity"].append(granularities.get(int(object_id)))
        rows["score"].append(float(np.nanmean(column)) if np.isfinite(column).any() else float("nan"))
        rows["slices"].append(int(mask.any(axis=other_axes).sum()))
        rows["area"].append(int(mask.sum()))
        rows["prompted"].append(",".join(map(str, prompted.get(int(object_id), []))))
    return rows


def propagation_metadata(reply: object, *, leading: tuple[int, ...], axis: int, direction: str,
                         granularity: float | None | Mapping[int, float | None],
                         mask_threshold: float) -> dict[str, object]:
    """The ``unsamv2_propagation`` metadata of the result layer (plain lists, NaN kept).

    reply: a :class:`~unsamv2_engine.protocol.Propagated`. ``axis`` is the layer's propagation axis;
    ``position`` the layer's leading indices with None on that axis; ``scores`` / ``object_scores``
    ``[n_slices][n_objects]`` in ``object_ids`` order; ``frames_done`` one bool per slice.
    """
    ids = [int(i) for i in reply.object_ids]  # type: ignore[attr-defined]
    return {
        "axis": int(axis), "position": [None if i == axis else int(v) for i, v in enumerate(leading)],
        "direction": direction, "mask_threshold": float(mask_threshold), "object_ids": ids,
        "granularities": {i: granularity.get(i) if isinstance(granularity, Mapping) else granularity for i in ids},
        "scores": np.asarray(reply.scores, np.float64).tolist(),  # type: ignore[attr-defined]
        "object_scores": np.asarray(reply.object_scores, np.float64).tolist(),  # type: ignore[attr-defined]
        "frames_done": [bool(d) for d in reply.frames_done],  # type: ignore[attr-defined]
        "cancelled": bool(reply.cancelled), "seconds": float(reply.seconds),  # type: ignore[attr-defined]
    }


def feature_defaults_with(defaults: object, **values: object) -> dict[str, object]:
    """A points layer's one-row ``feature_defaults`` table as a dict, with some columns changed
    (napari wants every column when the defaults are set).
    """
    out = {str(c): defaults[c].iloc[0] for c in defaults.columns}  # type: ignore[attr-defined]
    out.update(values)
    return out
