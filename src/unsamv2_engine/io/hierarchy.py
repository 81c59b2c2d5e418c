"""Hierarchy files: write and read a :class:`~unsamv2_engine.hierarchy.Hierarchy` as TIFF or zarr.

The data model, building and nesting are in :mod:`unsamv2_engine.hierarchy` (re-exported here
for older imports).

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
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.errors import InputError
from unsamv2_engine.hierarchy import (
    TABLE_COLUMNS,
    Hierarchy,
    build_hierarchy,
    check_nesting,
    default_level_name,
    enforce_nesting,
    granularity_from_name,
    hierarchy_from_levels,
    table_rows_for_level,
)
from unsamv2_engine.hierarchy.build import assemble
from unsamv2_engine.hierarchy.model import float_or_nan, int_or_none, label_ids
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
ZARR_SUFFIXES = (".zarr",)

PathLike = str | os.PathLike


def to_csv(h: Hierarchy, path: PathLike) -> Path:
    """Write the table of ``h`` as CSV (``label, level, granularity, parent, area, score``, then
    any extra columns); NaN / None are empty cells. Returns the path.
    """
    path = Path(path)
    extra: dict[str, None] = {}
    for row in h.table:
        for key in row:
            if key not in TABLE_COLUMNS:
                extra.setdefault(str(key), None)
    write_table_csv(path, h.table, columns=[*TABLE_COLUMNS, *extra])
    return path


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
        raise InputError(
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
        raise InputError(
            f"Cannot read a hierarchy from {str(path)!r}: expected a .tif, .tiff or .zarr path."
        )
    if meta.get("format") == FORMAT:
        return _from_metadata(path, data, meta)
    return _from_plain_stack(path, data, containment=containment)


def is_hierarchy_file(path: PathLike) -> bool:
    """Whether ``path`` is a hierarchy written by :func:`write_hierarchy` (cheap: reads the
    first TIFF page's description or the zarr group's JSON attributes, never the pixels).
    """
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
        raise InputError(
            f"{str(path)!r} is an {FORMAT} file of version {version}; this version of "
            f"unsamv2_engine reads version {VERSION} at most. Update napari-unsamv2."
        )
    shape = meta.get("shape")
    data = np.asarray(data)
    if shape is not None:
        if int(np.prod(shape)) != data.size:
            raise InputError(
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
        raise InputError(
            f"{str(path)!r} holds an array of shape {data.shape}; a plain label hierarchy is "
            f"one 2D label image per page."
        )
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise InputError(f"{str(path)!r} does not hold integer labels (dtype {data.dtype}).")
    n = data.shape[0]
    csv_path = path.with_suffix(".csv")
    csv_rows = _read_table_csv(csv_path) if csv_path.is_file() else []
    known: list[dict[int, dict]] = []
    granularities: list[float | None] = []
    for level in range(n):
        ids = set(label_ids(data[level]).tolist())
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
    return assemble(
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
                row[key] = int_or_none(row.get(key))
            for key in ("granularity", "score"):
                value = float_or_nan(row.get(key))
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
            raise InputError(
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
        raise InputError(f"Cannot open {str(path)!r} as a zarr group ({type(exc).__name__}: {exc}).") from exc
    if "labels" not in group:
        raise InputError(f"The zarr group {str(path)!r} has no 'labels' array.")
    labels = np.asarray(group["labels"][...])
    meta = dict(group.attrs).get(ZARR_ATTR) or {}
    return labels, dict(meta)
