"""Label hierarchies: one instance label image per granularity level plus a parent/child table.

The format
    A :class:`Hierarchy` holds ``labels`` ``[L, *spatial]`` (``uint16`` or ``uint32``, 0 =
    background) with one instance label image per level, and a ``table`` with one row per
    object: ``label, level, granularity, parent, area, score`` (plus any extra keys). Label ids
    are **unique across levels**, so a label id names one object of the whole hierarchy and
    ``parent`` (0 = none) is simply the id of the parent object.

Coarser and finer
    A larger granularity g is coarser (g = 1 is the whole object, g = 0.1 its smallest parts).
    When every level has a granularity, levels are ranked by g (ties: list order); otherwise list
    order decides and a later level is coarser. The *next coarser* level of a level is the next
    one in that ranking. Levels are never reordered: ``labels[i]`` stays the i-th level given.

Parents
    :func:`build_hierarchy` (and the readers, for files without a table) give each object the
    object of the next coarser level that covers the largest fraction of its pixels, if that
    fraction is at least ``containment`` (default 0.5), else no parent (0). Ties go to the
    smaller label id. :func:`enforce_nesting` then clips every child to its parent so that
    ``child ⊂ parent`` holds pixel for pixel; :func:`check_nesting` lists what is wrong with a
    hierarchy.

Files (:func:`write_hierarchy`, :func:`read_hierarchy`, chosen by suffix)
    ``.tif`` / ``.tiff``
        A zlib-compressed multi-page label TIFF (:func:`unsamv2_engine.io.images.write_labels`),
        one page per level in level order (for 3D levels ``[Z, H, W]``: Z pages per level, level
        after level), smallest unsigned dtype. The ImageDescription of the first page holds
        JSON: ``{"format": "unsamv2-hierarchy", "version": 1, "shape": [L, ...], "granularities",
        "level_names", "table", "metadata"}`` (NaN scores are stored as ``null``). An optional
        sidecar CSV of the table is written with ``table_csv=``.
    ``.zarr``
        A zarr group (zarr 3 API, zarr 2.18 also works) with one array ``labels`` ``[L, ...]``
        chunked one level per chunk along L, and ``attrs["unsamv2_hierarchy"]`` holding the same
        JSON dict as the TIFF.
    Plain label TIFFs (and zarr groups with a ``labels`` array) without our metadata are read
    too: one level per page (a 2D TIFF is a one-level hierarchy), levels in page order (later =
    coarser), label ids kept when they are already unique across levels (else relabelled level
    by level), and the table taken from a CSV next to the file (``<stem>.csv``; columns
    ``label, level, granularity, parent, area, score``) when there is one, parents recomputed
    by containment otherwise. Areas are always recounted from the pixels.

This module imports numpy and tifffile only (zarr lazily, inside the zarr functions): no torch,
napari or Qt.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.io.images import (
    TIFF_SUFFIXES,
    read_labels,
    to_jsonable,
    write_labels,
    write_table_csv,
)

__all__ = [
    "FORMAT",
    "TABLE_COLUMNS",
    "VERSION",
    "ZARR_ATTR",
    "Hierarchy",
    "build_hierarchy",
    "check_nesting",
    "default_level_name",
    "enforce_nesting",
    "granularity_from_name",
    "hierarchy_from_levels",
    "is_hierarchy_file",
    "read_hierarchy",
    "table_rows_for_level",
    "to_csv",
    "write_hierarchy",
]

FORMAT = "unsamv2-hierarchy"
VERSION = 1
#: Key of the hierarchy metadata in the attributes of a zarr group.
ZARR_ATTR = "unsamv2_hierarchy"
#: The columns every table row has, in CSV order.
TABLE_COLUMNS = ("label", "level", "granularity", "parent", "area", "score")
ZARR_SUFFIXES = (".zarr",)

PathLike = str | os.PathLike


def default_level_name(granularity: float | None, level: int) -> str:
    """``"g=0.30"`` for a granularity, ``"level 2"`` when there is none."""
    return f"g={granularity:.2f}" if granularity is not None else f"level {level}"


# --------------------------------------------------------------------------- the container


@dataclass
class Hierarchy:
    """A stack of instance label images, one per granularity level, and a parent/child table.

    Attributes
    ----------
    labels : np.ndarray
        ``[L, *spatial]`` (``[L, H, W]`` or ``[L, Z, H, W]``), non-negative integers, stored as
        ``uint16`` (or ``uint32`` when a label exceeds 65535); 0 is background. Label ids are
        unique across levels.
    granularities : list of (float or None)
        One per level (``None``: unknown; then list order ranks the levels, later = coarser).
        Default: all ``None``.
    level_names : list of str
        One per level; default ``"g=0.30"`` (or ``"level i"`` without a granularity).
    table : list of dict
        One row per object, sorted by label: ``label`` (int), ``level`` (int, index into
        ``labels``), ``granularity`` (float or None), ``parent`` (int, 0 = none), ``area``
        (int, pixels/voxels), ``score`` (float, NaN when unknown), plus any extra keys.
    metadata : dict
        Free JSON-serialisable metadata (source image, model, prompts ...).
    """

    labels: np.ndarray
    granularities: list[float | None] | None = None
    level_names: list[str] | None = None
    table: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = _as_label_stack(self.labels)
        n = self.labels.shape[0]
        if self.granularities is None:
            self.granularities = [None] * n
        self.granularities = [None if g is None else float(g) for g in self.granularities]
        if len(self.granularities) != n:
            raise ValueError(
                f"{len(self.granularities)} granularities given for {n} levels; give one per "
                f"level (None where unknown)."
            )
        if self.level_names is None:
            self.level_names = [default_level_name(g, i) for i, g in enumerate(self.granularities)]
        self.level_names = [str(name) for name in self.level_names]
        if len(self.level_names) != n:
            raise ValueError(f"{len(self.level_names)} level names given for {n} levels.")
        self.table = sorted((_normalize_row(row) for row in self.table), key=lambda r: r["label"])
        self.metadata = dict(self.metadata or {})

    @property
    def n_levels(self) -> int:
        return int(self.labels.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.labels.shape[1:])

    @property
    def parents(self) -> dict[int, int]:
        """``{label: parent}`` for every object (0 = no parent)."""
        return {row["label"]: row["parent"] for row in self.table}

    def children(self, label: int) -> list[int]:
        """The labels whose parent is ``label``."""
        return [row["label"] for row in self.table if row["parent"] == int(label)]

    def coarseness_order(self) -> list[int]:
        """Level indices from finest to coarsest (see the module docstring)."""
        return _coarse_order(self.granularities)


def table_rows_for_level(h: Hierarchy, level: int) -> list[dict]:
    """The table rows of the objects of ``level`` (a copy of each row), sorted by label."""
    if not -h.n_levels <= level < h.n_levels:
        raise IndexError(f"level {level} out of range for a hierarchy of {h.n_levels} levels")
    level = level % h.n_levels
    return [dict(row) for row in h.table if row["level"] == level]


def to_csv(h: Hierarchy, path: PathLike) -> Path:
    """Write the table of ``h`` as CSV (``label, level, granularity, parent, area, score``, then
    any extra columns); NaN / None are empty cells. Returns the path."""
    path = Path(path)
    extra: dict[str, None] = {}
    for row in h.table:
        for key in row:
            if key not in TABLE_COLUMNS:
                extra.setdefault(str(key), None)
    write_table_csv(path, h.table, columns=[*TABLE_COLUMNS, *extra])
    return path


# --------------------------------------------------------------------------- building


def build_hierarchy(
    masks_per_level: Sequence[Sequence[np.ndarray] | np.ndarray],
    granularities: Sequence[float | None] | None = None,
    scores: Sequence[Sequence[float] | Mapping[int, float] | None] | None = None,
    *,
    containment: float = 0.5,
    level_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Hierarchy:
    """Assemble a hierarchy from per-level masks or label images.

    Parameters
    ----------
    masks_per_level : list, one item per level
        Each item is either a **list (or tuple) of binary masks** ``[*spatial]`` (one object each),
        or **one label image** ``np.ndarray`` ``[*spatial]`` (0 = background; a bool array is one
        object). Pass ``list(stack)`` for a ``[N, *spatial]`` stack of masks. Masks of one level are
        painted largest first, so a smaller mask overlapping a larger one stays whole (a label image
        holds one object per pixel); a mask left with no pixel is dropped.
    granularities : list of (float or None), optional
        One per level. Levels are kept in the given order; ranking (coarser = larger g, or later
        in the list when a granularity is missing) only decides who can be whose parent.
    scores : list, optional
        One item per level: a sequence aligned with that level's masks (mask lists) or with its
        sorted non-zero label ids (label images), or a mapping ``{label id in that image: score}``.
        Missing scores are NaN.
    containment : float
        Minimum fraction of an object's pixels that the candidate parent (the object of the next
        coarser level covering most of it) must cover; below it the object has no parent.
    level_names, metadata : optional
        Stored in the :class:`Hierarchy` (default level names ``"g=0.30"``).

    Returns
    -------
    Hierarchy
        Labels relabelled ``1..N`` level by level (level 0 first; within a level in mask order, or
        in increasing original label id), ``uint16`` / ``uint32``; table with parents and areas.
    """
    if not 0.0 < containment <= 1.0:
        raise ValueError(f"containment must be in (0, 1], got {containment}")
    n = len(masks_per_level)
    if n == 0:
        raise ValueError("build_hierarchy needs at least one level.")
    if granularities is None:
        granularities = [None] * n
    if len(granularities) != n:
        raise ValueError(f"{len(granularities)} granularities given for {n} levels.")
    if scores is not None and len(scores) != n:
        raise ValueError(f"{len(scores)} score lists given for {n} levels.")

    images: list[np.ndarray] = []
    level_scores: list[dict[int, float]] = []
    for i, item in enumerate(masks_per_level):
        level_score = None if scores is None else scores[i]
        if isinstance(item, np.ndarray):
            image = _label_image(item, i)
            ids = _ids(image)
            level_scores.append(_scores_for_ids(level_score, ids, i))
        else:
            image, kept = _paint_masks(item, i)
            level_scores.append(_scores_for_masks(level_score, kept, len(item), i))
        images.append(image)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"All levels must have the same spatial shape, got {sorted(shapes)}.")

    stack, mappings = _relabel_levels(images)
    known = [
        {mapping[old]: {"score": s} for old, s in level_scores[i].items() if old in mapping}
        for i, mapping in enumerate(mappings)
    ]
    return _assemble(
        stack,
        list(granularities),
        None if level_names is None else list(level_names),
        known,
        containment=containment,
        keep_parents=False,
        metadata=dict(metadata or {}),
    )


def _label_image(item: np.ndarray, level: int) -> np.ndarray:
    image = np.asarray(item)
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if not np.issubdtype(image.dtype, np.integer):
        raise ValueError(
            f"Level {level}: a label image must hold integers (or bool), got dtype {image.dtype}; "
            f"pass a list of masks for one object per mask."
        )
    if image.size and image.min() < 0:
        raise ValueError(f"Level {level}: labels must be non-negative (0 = background).")
    return image


def _paint_masks(masks: Sequence[np.ndarray], level: int) -> tuple[np.ndarray, list[int]]:
    """Paint masks largest first into a label image whose ids are ``mask index + 1``.

    Returns the image and the indices of the masks that kept at least one pixel, in mask order.
    """
    arrays = [np.asarray(m).astype(bool, copy=False) for m in masks]
    if not arrays:
        raise ValueError(
            f"Level {level} has no mask; pass an all-zero label image for an empty level."
        )
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"Level {level}: masks differ in shape: {sorted(shapes)}.")
    areas = [int(a.sum()) for a in arrays]
    image = np.zeros(arrays[0].shape, np.uint32 if len(arrays) >= 65535 else np.uint16)
    for index in sorted(range(len(arrays)), key=lambda k: -areas[k]):  # stable: ties in order
        image[arrays[index]] = index + 1
    kept = [int(k) - 1 for k in _ids(image)]
    return image, kept


def _scores_for_ids(level_score: Any, ids: np.ndarray, level: int) -> dict[int, float]:
    if level_score is None:
        return {}
    if isinstance(level_score, Mapping):
        return {int(k): _float_or_nan(v) for k, v in level_score.items()}
    values = list(level_score)
    if len(values) != len(ids):
        raise ValueError(
            f"Level {level}: {len(values)} scores for {len(ids)} labels; give one score per "
            f"non-zero label id (sorted) or a mapping {{label: score}}."
        )
    return {int(k): _float_or_nan(v) for k, v in zip(ids, values)}


def _scores_for_masks(level_score: Any, kept: list[int], n_masks: int, level: int) -> dict[int, float]:
    """Scores keyed by the painted ids (mask index + 1)."""
    if level_score is None:
        return {}
    if isinstance(level_score, Mapping):
        return {int(k) + 1: _float_or_nan(v) for k, v in level_score.items()}
    values = list(level_score)
    if len(values) != n_masks:
        raise ValueError(f"Level {level}: {len(values)} scores for {n_masks} masks.")
    return {k + 1: _float_or_nan(values[k]) for k in kept}


# --------------------------------------------------------------------------- nesting


def enforce_nesting(h: Hierarchy, *, drop_orphans: bool = False) -> Hierarchy:
    """Return a copy of ``h`` in which every child lies inside its parent.

    Levels are processed from coarsest to finest; pixels of a child outside its (already
    clipped) parent's mask become background. Objects left without a pixel are dropped from the
    labels and the table (with them, children of a vanished parent vanish too). Areas are
    recounted. Objects without a parent are kept unless ``drop_orphans`` (then every object of
    a non-coarsest level whose parent is 0 is removed). A parent id that names no object of the
    table counts as no parent (the row's parent is set to 0). Label ids are not changed.
    """
    labels = h.labels.copy()
    rows = {row["label"]: dict(row) for row in h.table}
    level_of = {label: row["level"] for label, row in rows.items()}
    for row in rows.values():
        if row["parent"] and row["parent"] not in rows:
            row["parent"] = 0
    order = _coarse_order(h.granularities)
    coarsest = order[-1]
    for level in reversed(order):  # coarse -> fine
        image = labels[level]
        level_rows = [r for r in rows.values() if r["level"] == level]
        if not level_rows:
            continue
        ids = np.array(sorted(r["label"] for r in level_rows), dtype=np.int64)
        parent = np.array([rows[int(i)]["parent"] for i in ids], dtype=np.int64)
        if drop_orphans and level != coarsest:
            parent = np.where(parent == 0, -1, parent)  # -1: remove every pixel
        idx = np.clip(np.searchsorted(ids, image), 0, len(ids) - 1)
        known = (image != 0) & (ids[idx] == image)
        expected = np.where(known, parent[idx], 0)
        clear = expected == -1
        for parent_level in {level_of[int(p)] for p in parent if p > 0}:
            in_level = np.isin(expected, [p for p in parent if p > 0 and level_of[int(p)] == parent_level])
            clear |= in_level & (labels[parent_level] != expected)
        image[clear] = 0
    # recount areas, drop vanished objects
    for level in range(h.n_levels):
        present, counts = np.unique(labels[level], return_counts=True)
        area = dict(zip(present.tolist(), counts.tolist()))
        for label in [lab for lab, r in rows.items() if r["level"] == level]:
            if label in area and label != 0:
                rows[label]["area"] = int(area[label])
            else:
                del rows[label]
    for row in rows.values():
        if row["parent"] and row["parent"] not in rows:
            row["parent"] = 0
    return Hierarchy(
        labels=labels,
        granularities=list(h.granularities),
        level_names=list(h.level_names),
        table=list(rows.values()),
        metadata=dict(h.metadata),
    )


def check_nesting(h: Hierarchy) -> list[str]:
    """List the problems of a hierarchy (an empty list when it is consistent).

    Checks: a label id used in more than one level; objects in the pixels without a table row
    and rows without pixels; a row's level or area disagreeing with the pixels; a parent that
    is not an object of the table or not on a coarser level; pixels of a child outside its
    parent's mask.
    """
    problems: list[str] = []
    rows = {}
    for row in h.table:
        if row["label"] in rows:
            problems.append(f"label {row['label']} has more than one table row")
        rows[row["label"]] = row
    found: dict[int, tuple[int, int]] = {}  # label -> (level, area)
    for level in range(h.n_levels):
        present, counts = np.unique(h.labels[level], return_counts=True)
        for label, count in zip(present.tolist(), counts.tolist()):
            if label == 0:
                continue
            if label in found:
                problems.append(
                    f"label {label} appears in levels {found[label][0]} and {level}; label ids "
                    f"must be unique across levels"
                )
                continue
            found[label] = (level, count)
    for label, (level, area) in sorted(found.items()):
        row = rows.get(label)
        if row is None:
            problems.append(f"label {label} (level {level}) has no table row")
            continue
        if row["level"] != level:
            problems.append(f"label {label} is in level {level} but its row says level {row['level']}")
        if row["area"] != area:
            problems.append(f"label {label}: the table says area {row['area']}, the pixels {area}")
    for label, row in sorted(rows.items()):
        if label not in found:
            problems.append(f"label {label} (level {row['level']}) has a table row but no pixels")
    rank = {level: k for k, level in enumerate(h.coarseness_order())}
    for label, row in sorted(rows.items()):
        parent = row["parent"]
        if not parent or label not in found:
            continue
        if parent not in found:
            problems.append(f"label {label}: its parent {parent} is not an object of the hierarchy")
            continue
        child_level, parent_level = found[label][0], found[parent][0]
        if rank.get(parent_level, -1) <= rank.get(child_level, -1):
            problems.append(
                f"label {label} (level {child_level}): its parent {parent} is on level "
                f"{parent_level}, which is not coarser"
            )
        inside = h.labels[child_level] == label
        outside = int(np.count_nonzero(inside & (h.labels[parent_level] != parent)))
        if outside:
            problems.append(
                f"label {label} (level {child_level}): {outside} of {int(inside.sum())} pixels lie "
                f"outside its parent {parent} (level {parent_level})"
            )
    return problems


# --------------------------------------------------------------------------- files


def write_hierarchy(
    path: PathLike, h: Hierarchy, *, table_csv: PathLike | bool | None = None
) -> Path:
    """Write ``h`` to ``path``: ``.tif`` / ``.tiff`` (multi-page label TIFF) or ``.zarr`` (zarr group).

    ``table_csv``: also write the table as CSV, to that path, or next to ``path`` as
    ``<stem>.csv`` when ``True``. The file is written beside its destination and moved into
    place; an existing ``.zarr`` directory is replaced only if it is a zarr group. Returns
    ``Path(path)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    meta = _file_metadata(h)
    if suffix in TIFF_SUFFIXES:
        labels = h.labels
        if labels.ndim > 3:  # [L, Z, H, W] -> L*Z pages; "shape" restores it
            labels = labels.reshape(-1, *labels.shape[-2:])
        write_labels(path, labels, metadata=meta)
    elif suffix in ZARR_SUFFIXES:
        _write_zarr(path, h, meta)
    else:
        raise ValueError(
            f"Cannot write a hierarchy to {str(path)!r}: use a .tif, .tiff or .zarr file name."
        )
    if table_csv:
        to_csv(h, path.with_suffix(".csv") if table_csv is True else Path(table_csv))
    return path


def read_hierarchy(path: PathLike, *, containment: float = 0.5) -> Hierarchy:
    """Read a hierarchy written by :func:`write_hierarchy`, or a plain multi-page label TIFF.

    See the module docstring for the accepted files. ``containment`` is used only when parents
    have to be recomputed (files without a table).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unknown suffix, a newer format version, or data that is not a label stack.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such hierarchy file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        data, meta = read_labels(path)
    elif suffix in ZARR_SUFFIXES:
        data, meta = _read_zarr(path)
    else:
        raise ValueError(
            f"Cannot read a hierarchy from {str(path)!r}: expected a .tif, .tiff or .zarr path."
        )
    if meta.get("format") == FORMAT:
        return _from_metadata(path, data, meta)
    return _from_plain_stack(path, data, containment=containment)


def is_hierarchy_file(path: PathLike) -> bool:
    """Whether ``path`` is a hierarchy written by :func:`write_hierarchy` (cheap: reads the
    first TIFF page's description or the zarr group's JSON attributes, never the pixels)."""
    try:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in TIFF_SUFFIXES and path.is_file():
            import tifffile

            with tifffile.TiffFile(path) as tif:
                description = tif.pages[0].description if len(tif.pages) else ""
            meta = json.loads(description)
        elif suffix in ZARR_SUFFIXES and path.is_dir():
            if (path / "zarr.json").is_file():
                attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
            elif (path / ".zattrs").is_file():
                attrs = json.loads((path / ".zattrs").read_text())
            else:
                return False
            meta = attrs.get(ZARR_ATTR, {})
        else:
            return False
        return isinstance(meta, dict) and meta.get("format") == FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return False


def _file_metadata(h: Hierarchy) -> dict:
    return to_jsonable(
        {
            "format": FORMAT,
            "version": VERSION,
            "shape": list(h.labels.shape),
            "granularities": h.granularities,
            "level_names": h.level_names,
            "table": h.table,
            "metadata": h.metadata,
        }
    )


def _from_metadata(path: Path, data: np.ndarray, meta: dict) -> Hierarchy:
    version = meta.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"{str(path)!r} is an {FORMAT} file of version {version}; this version of "
            f"unsamv2_engine reads version {VERSION} at most. Update napari-unsamv2."
        )
    shape = meta.get("shape")
    data = np.asarray(data)
    if shape is not None:
        if int(np.prod(shape)) != data.size:
            raise ValueError(
                f"{str(path)!r}: the stored shape {shape} does not match the {data.shape} pixels."
            )
        data = data.reshape(shape)
    elif data.ndim == 2:
        data = data[None]
    return Hierarchy(
        labels=data,
        granularities=meta.get("granularities"),
        level_names=meta.get("level_names"),
        table=meta.get("table") or [],
        metadata=meta.get("metadata") or {},
    )


def _from_plain_stack(path: Path, data: np.ndarray, *, containment: float) -> Hierarchy:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            f"{str(path)!r} holds an array of shape {data.shape}; a plain label hierarchy is "
            f"one 2D label image per page."
        )
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise ValueError(f"{str(path)!r} does not hold integer labels (dtype {data.dtype}).")
    n = data.shape[0]
    csv_path = path.with_suffix(".csv")
    csv_rows = _read_table_csv(csv_path) if csv_path.is_file() else []
    known: list[dict[int, dict]] = []
    granularities: list[float | None] = []
    for level in range(n):
        ids = set(_ids(data[level]).tolist())
        rows = {
            r["label"]: r
            for r in csv_rows
            if r.get("label") in ids and r.get("level") in (None, level)
        }
        known.append(rows)
        gs = [r["granularity"] for r in rows.values() if r.get("granularity") is not None]
        granularities.append(gs[0] if gs else None)
    metadata = {"source": str(path)}
    if csv_rows:
        metadata["table_source"] = str(csv_path)
    return _assemble(
        data,
        granularities,
        None,
        known,
        containment=containment,
        keep_parents=True,
        metadata=metadata,
    )


def _read_table_csv(path: Path) -> list[dict]:
    """Rows of a hierarchy CSV with typed core columns (empty cells -> None / NaN)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {k: v for k, v in raw.items() if k is not None}
            try:
                row["label"] = int(float(row["label"]))
            except (KeyError, TypeError, ValueError):
                continue  # not a row of ours
            for key in ("level", "parent", "area"):
                row[key] = _int_or_none(row.get(key))
            for key in ("granularity", "score"):
                value = _float_or_nan(row.get(key))
                row[key] = None if (key == "granularity" and math.isnan(value)) else value
            if row["parent"] is None:
                row.pop("parent")
            rows.append(row)
    return rows


def _write_zarr(path: Path, h: Hierarchy, meta: dict) -> None:
    import zarr

    if path.exists():
        if not path.is_dir() or not any(
            (path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")
        ):
            raise ValueError(
                f"{str(path)!r} exists and is not a zarr store; refusing to replace it."
            )
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        group = zarr.open_group(store=str(partial), mode="w")
        labels = h.labels
        spatial = labels.shape[1:]
        side = 1024 if len(spatial) <= 2 else 128
        chunks = (1, *(min(int(s), side) for s in spatial))
        if hasattr(group, "create_array"):  # zarr >= 3
            array = group.create_array("labels", shape=labels.shape, dtype=labels.dtype, chunks=chunks)
            array[...] = labels
        else:  # zarr 2.18
            group.create_dataset("labels", data=labels, chunks=chunks)
        group.attrs.update({ZARR_ATTR: meta})
        del group
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def _read_zarr(path: Path) -> tuple[np.ndarray, dict]:
    import zarr

    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"Cannot open {str(path)!r} as a zarr group ({type(exc).__name__}: {exc}).") from exc
    if "labels" not in group:
        raise ValueError(f"The zarr group {str(path)!r} has no 'labels' array.")
    labels = np.asarray(group["labels"][...])
    meta = dict(group.attrs).get(ZARR_ATTR) or {}
    return labels, dict(meta)


def hierarchy_from_levels(
    levels: Sequence[np.ndarray] | np.ndarray,
    granularities: Sequence[float | None] | None = None,
    level_names: Sequence[str] | None = None,
    tables: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    *,
    containment: float = 0.5,
    metadata: Mapping[str, Any] | None = None,
) -> Hierarchy:
    """A Hierarchy from label images that may already carry ids and table rows (napari layers,
    plain files).

    Unlike :func:`build_hierarchy`, label ids are kept when they are unique across levels (else
    every level is relabelled, level by level, and parents are recomputed). ``tables[i]`` holds
    known rows of level ``i`` (matched by ``label``): their score, extra keys and parent are
    kept when the parent is still an object of a coarser level; other parents are computed by
    containment; areas, levels and granularities always come from the pixels and arguments.
    """
    images = [np.asarray(level) for level in levels]
    if not images:
        raise ValueError("hierarchy_from_levels needs at least one level.")
    n = len(images)
    if granularities is None:
        granularities = [None] * n
    if len(granularities) != n:
        raise ValueError(f"{len(granularities)} granularities given for {n} levels.")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"All levels must have the same spatial shape, got {sorted(shapes)}.")
    known = [
        {int(row["label"]): dict(row) for row in (table or []) if row.get("label") is not None}
        for table in (tables if tables is not None else [None] * n)
    ]
    if len(known) != n:
        raise ValueError(f"{len(known)} tables given for {n} levels.")
    return _assemble(
        np.stack([_label_image(image, i) for i, image in enumerate(images)]),
        [None if g is None else float(g) for g in granularities],
        None if level_names is None else list(level_names),
        known,
        containment=containment,
        keep_parents=True,
        metadata=dict(metadata or {}),
    )


# --------------------------------------------------------------------------- helpers


def _assemble(
    stack: np.ndarray,
    granularities: list[float | None],
    level_names: list[str] | None,
    known: list[dict[int, dict]],
    *,
    containment: float,
    keep_parents: bool,
    metadata: dict,
) -> Hierarchy:
    """A Hierarchy from a label stack and known rows per level (keyed by label id in that level).

    Ids colliding across levels are relabelled level by level (then known parents are dropped).
    Known parents are kept when ``keep_parents`` and they name an object of a coarser level;
    other parents are computed by containment. Areas are always counted from the pixels.
    """
    stack = np.asarray(stack)
    n = stack.shape[0]
    level_ids = [_ids(stack[level]) for level in range(n)]
    all_ids = np.concatenate(level_ids) if level_ids else np.zeros(0, np.int64)
    if len(np.unique(all_ids)) != len(all_ids):
        images, mappings = _relabel_levels([stack[level] for level in range(n)])
        stack = images
        known = [
            {mapping[old]: {k: v for k, v in row.items() if k not in ("label", "parent")}
             for old, row in rows.items() if old in mapping}
            for rows, mapping in zip(known, mappings)
        ]
        keep_parents = False
        level_ids = [_ids(stack[level]) for level in range(n)]
    stack = _as_label_stack(stack)
    order = _coarse_order(granularities)
    rank = {level: k for k, level in enumerate(order)}
    level_of = {int(label): level for level in range(n) for label in level_ids[level]}

    rows: list[dict] = []
    for level in range(n):
        labels, counts = np.unique(stack[level], return_counts=True)
        areas = {int(k): int(c) for k, c in zip(labels, counts) if k != 0}
        coarser = order[rank[level] + 1] if rank[level] + 1 < n else None
        computed = (
            _best_parents(stack[level], stack[coarser], areas, containment)
            if coarser is not None
            else {}
        )
        for label, area in areas.items():
            row = dict(known[level].get(label, {}))
            parent = computed.get(label, 0)
            if keep_parents and "parent" in row:
                candidate = _int_or_none(row["parent"])
                if candidate == 0 or (
                    candidate in level_of and rank[level_of[candidate]] > rank[level]
                ):
                    parent = candidate
            row.update(
                label=label,
                level=level,
                granularity=granularities[level],
                parent=parent,
                area=area,
                score=row.get("score", math.nan),
            )
            rows.append(row)
    return Hierarchy(
        labels=stack,
        granularities=granularities,
        level_names=level_names,
        table=rows,
        metadata=metadata,
    )


def _best_parents(
    child: np.ndarray, parent: np.ndarray, areas: Mapping[int, int], containment: float
) -> dict[int, int]:
    """``{child label: parent label}`` for children covered >= ``containment`` by one parent."""
    both = (child != 0) & (parent != 0)
    if not both.any():
        return {}
    c = child[both].astype(np.uint64)
    p = parent[both].astype(np.uint64)
    base = np.uint64(int(parent.max()) + 1)
    keys, counts = np.unique(c * base + p, return_counts=True)
    cids = (keys // base).astype(np.int64)
    pids = (keys % base).astype(np.int64)
    order = np.lexsort((pids, -counts, cids))  # by child, most overlap first, then smaller id
    cids, pids, counts = cids[order], pids[order], counts[order]
    first = np.r_[True, cids[1:] != cids[:-1]]
    return {
        int(c_): int(p_)
        for c_, p_, n_ in zip(cids[first], pids[first], counts[first])
        if n_ / areas[int(c_)] >= containment
    }


def _relabel_levels(images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[dict[int, int]]]:
    """Relabel level images to ids ``1..N`` across levels (level order, then increasing id)."""
    offset = 0
    out = []
    mappings = []
    total = sum(len(_ids(image)) for image in images)
    dtype = np.uint16 if total <= np.iinfo(np.uint16).max else np.uint32
    for image in images:
        ids = _ids(image)
        new = np.zeros(image.shape, dtype)
        if len(ids):
            index = np.searchsorted(ids, image)
            nonzero = image != 0
            new[nonzero] = (index[nonzero] + offset + 1).astype(dtype)
        mappings.append({int(old): offset + 1 + k for k, old in enumerate(ids)})
        offset += len(ids)
        out.append(new)
    return np.stack(out), mappings


def _ids(image: np.ndarray) -> np.ndarray:
    """Sorted non-zero label ids of an image."""
    ids = np.unique(image)
    return ids[ids != 0]


def _coarse_order(granularities: Sequence[float | None]) -> list[int]:
    """Level indices from finest to coarsest: by granularity (ties: list order) when every level
    has one, else list order."""
    n = len(granularities)
    if n and all(g is not None for g in granularities):
        return sorted(range(n), key=lambda i: (granularities[i], i))
    return list(range(n))


def _as_label_stack(labels: Any) -> np.ndarray:
    data = np.asarray(labels)
    if data.ndim < 3:
        raise ValueError(
            f"Hierarchy labels must be [L, *spatial] with at least 2 spatial axes, got shape "
            f"{data.shape} (use labels[None] for one level)."
        )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"Hierarchy labels must be integers, got dtype {data.dtype}.")
    high = int(data.max()) if data.size else 0
    if data.size and int(data.min()) < 0:
        raise ValueError("Hierarchy labels must be non-negative (0 = background).")
    if high > np.iinfo(np.uint32).max:
        raise ValueError(f"The largest label {high} does not fit in uint32.")
    dtype = np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32
    return np.ascontiguousarray(data, dtype=dtype)


def _normalize_row(row: Mapping[str, Any]) -> dict:
    out = dict(row)
    try:
        out["label"] = int(out["label"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"A table row needs an integer 'label': {dict(row)!r}") from None
    out["level"] = _int_or_none(out.get("level"))
    out["parent"] = _int_or_none(out.get("parent")) or 0
    out["area"] = _int_or_none(out.get("area"))
    g = out.get("granularity")
    out["granularity"] = None if g is None or (isinstance(g, float) and math.isnan(g)) else float(g)
    out["score"] = _float_or_nan(out.get("score"))
    return {**{key: out[key] for key in TABLE_COLUMNS}, **out}  # core columns first


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def _float_or_nan(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_G_PATTERN = re.compile(r"g\s*=\s*([0-9]*\.?[0-9]+)")


def granularity_from_name(name: str) -> float | None:
    """The granularity in a name such as ``"hierarchy g=0.30"``, or None."""
    match = _G_PATTERN.search(str(name))
    return float(match.group(1)) if match else None
