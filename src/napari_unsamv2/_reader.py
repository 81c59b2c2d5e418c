"""napari reader for UnSAMv2 label hierarchies (``.tif`` / ``.tiff`` / ``.zarr``).

The reader claims a path only when it is a hierarchy written by
:func:`unsamv2_engine.io.hierarchy.write_hierarchy` (a TIFF whose first page description is our
JSON with ``"format": "unsamv2-hierarchy"``, or a ``.zarr`` group with our attributes); for any
other TIFF or zarr it returns ``None`` so that napari's own reader handles the file.

Each level becomes one Labels layer named ``"hierarchy <level name>"`` (e.g. ``"hierarchy
g=0.30"``), with

``features``
    a dict of columns with one row per object of that level: ``index`` (the label id),
    ``label``, ``parent``, ``area``, ``score``, ``granularity``, ``level``. napari 0.9 maps a
    label value to a features row through the ``index`` column when there is one (otherwise row
    *k* would be label *k*, row 0 the background), so the rows need not be sequential and no
    background row is needed: hovering over an object shows its parent, area and score.
``metadata["unsamv2_hierarchy"]``
    ``format``, ``version``, ``level``, ``n_levels``, ``granularity``, ``level_name``,
    ``granularities``, ``level_names``, ``table`` (this level's rows), ``metadata`` (the
    hierarchy's) and ``source`` (the file), so that the writer can write the hierarchy back.

Only numpy, tifffile (and zarr, for ``.zarr``) are imported; never torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from unsamv2_engine.hierarchy import Hierarchy, table_rows_for_level
from unsamv2_engine.io.hierarchy import FORMAT, VERSION, is_hierarchy_file, read_hierarchy

__all__ = ["FEATURE_COLUMNS", "METADATA_KEY", "get_reader", "hierarchy_to_layer_data", "read_hierarchy_layers"]

#: Key of the hierarchy information in a Labels layer's metadata.
METADATA_KEY = "unsamv2_hierarchy"
#: Feature columns of a level's Labels layer (``index`` = label id, as napari expects).
FEATURE_COLUMNS = ("index", "label", "parent", "area", "score", "granularity", "level")

LayerData = tuple[Any, dict, str]


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reading function for our hierarchy files, ``None`` for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path).rstrip("/\\")
    return read_hierarchy_layers if is_hierarchy_file(path) else None


def read_hierarchy_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Read a hierarchy file into one ``(data, kwargs, "labels")`` tuple per level."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path).rstrip("/\\")
    return hierarchy_to_layer_data(read_hierarchy(path), source=path)


def hierarchy_to_layer_data(h: Hierarchy, *, source: str | None = None) -> list[LayerData]:
    """One Labels layer-data tuple per level of ``h`` (see the module docstring)."""
    layers = []
    for level in range(h.n_levels):
        rows = table_rows_for_level(h, level)
        features = {
            "index": [row["label"] for row in rows],
            "label": [row["label"] for row in rows],
            "parent": [row["parent"] for row in rows],
            "area": [row["area"] for row in rows],
            "score": [float(row["score"]) for row in rows],
            "granularity": [
                float("nan") if row["granularity"] is None else row["granularity"] for row in rows
            ],
            "level": [row["level"] for row in rows],
        }
        info = {
            "format": FORMAT,
            "version": VERSION,
            "level": level,
            "n_levels": h.n_levels,
            "granularity": h.granularities[level],
            "level_name": h.level_names[level],
            "granularities": list(h.granularities),
            "level_names": list(h.level_names),
            "table": rows,
            "metadata": dict(h.metadata),
            "source": source,
        }
        kwargs = {
            "name": f"hierarchy {h.level_names[level]}",
            "features": features,
            "metadata": {METADATA_KEY: info},
        }
        layers.append((h.labels[level], kwargs, "labels"))
    return layers
