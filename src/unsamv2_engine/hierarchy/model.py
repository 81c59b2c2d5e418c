"""The label hierarchy: one instance label image per granularity level plus a parent/child table.

A :class:`Hierarchy` holds ``labels`` ``[L, *spatial]`` (``uint16`` or ``uint32``, 0 =
background) with one instance label image per level, and a ``table`` with one row per object:
``label, level, granularity, parent, area, score`` (plus any extra keys). Label ids are **unique
across levels**, so a label id names one object of the whole hierarchy and ``parent`` (0 = none)
is simply the id of the parent object.

Coarser and finer
    A larger granularity g is coarser (g = 1 is the whole object, g = 0.1 its smallest parts).
    When every level has a granularity, levels are ranked by g (ties: list order); otherwise list
    order decides and a later level is coarser. The *next coarser* level of a level is the next
    one in that ranking. Levels are never reordered: ``labels[i]`` stays the i-th level given.

Building and nesting live in :mod:`unsamv2_engine.hierarchy.build` and
:mod:`unsamv2_engine.hierarchy.nesting`; files in :mod:`unsamv2_engine.io.hierarchy`.
numpy only: no torch, napari or Qt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsamv2_engine.errors import InputError

__all__ = [
    "TABLE_COLUMNS",
    "Hierarchy",
    "as_label_stack",
    "coarse_order",
    "default_level_name",
    "float_or_nan",
    "granularity_from_name",
    "int_or_none",
    "label_ids",
    "table_rows_for_level",
]

#: The columns every table row has, in CSV order.
TABLE_COLUMNS = ("label", "level", "granularity", "parent", "area", "score")


def default_level_name(granularity: float | None, level: int) -> str:
    """``"g=0.30"`` for a granularity, ``"level 2"`` when there is none."""
    return f"g={granularity:.2f}" if granularity is not None else f"level {level}"



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
        self.labels = as_label_stack(self.labels)
        n = self.labels.shape[0]
        if self.granularities is None:
            self.granularities = [None] * n
        self.granularities = [None if g is None else float(g) for g in self.granularities]
        if len(self.granularities) != n:
            raise InputError(
                f"{len(self.granularities)} granularities given for {n} levels; give one per "
                f"level (None where unknown)."
            )
        if self.level_names is None:
            self.level_names = [default_level_name(g, i) for i, g in enumerate(self.granularities)]
        self.level_names = [str(name) for name in self.level_names]
        if len(self.level_names) != n:
            raise InputError(f"{len(self.level_names)} level names given for {n} levels.")
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
        return coarse_order(self.granularities)


def table_rows_for_level(h: Hierarchy, level: int) -> list[dict]:
    """The table rows of the objects of ``level`` (a copy of each row), sorted by label."""
    if not -h.n_levels <= level < h.n_levels:
        raise IndexError(f"level {level} out of range for a hierarchy of {h.n_levels} levels")
    level = level % h.n_levels
    return [dict(row) for row in h.table if row["level"] == level]


def label_ids(image: np.ndarray) -> np.ndarray:
    """Sorted non-zero label ids of an image."""
    ids = np.unique(image)
    return ids[ids != 0]



def coarse_order(granularities: Sequence[float | None]) -> list[int]:
    """Level indices from finest to coarsest: by granularity (ties: list order) when every level
    has one, else list order.
    """
    n = len(granularities)
    if n and all(g is not None for g in granularities):
        return sorted(range(n), key=lambda i: (granularities[i], i))
    return list(range(n))


def as_label_stack(labels: Any) -> np.ndarray:
    """``labels`` as a checked ``[L, *spatial]`` integer stack (bool becomes uint8), ids >= 0 fitting uint32."""
    data = np.asarray(labels)
    if data.ndim < 3:
        raise InputError(
            f"Hierarchy labels must be [L, *spatial] with at least 2 spatial axes, got shape "
            f"{data.shape} (use labels[None] for one level)."
        )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"Hierarchy labels must be integers, got dtype {data.dtype}.")
    high = int(data.max()) if data.size else 0
    if data.size and int(data.min()) < 0:
        raise InputError("Hierarchy labels must be non-negative (0 = background).")
    if high > np.iinfo(np.uint32).max:
        raise InputError(f"The largest label {high} does not fit in uint32.")
    dtype = np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32
    return np.ascontiguousarray(data, dtype=dtype)


def _normalize_row(row: Mapping[str, Any]) -> dict:
    out = dict(row)
    try:
        out["label"] = int(out["label"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"A table row needs an integer 'label': {dict(row)!r}") from None
    out["level"] = int_or_none(out.get("level"))
    out["parent"] = int_or_none(out.get("parent")) or 0
    out["area"] = int_or_none(out.get("area"))
    g = out.get("granularity")
    out["granularity"] = None if g is None or (isinstance(g, float) and math.isnan(g)) else float(g)
    out["score"] = float_or_nan(out.get("score"))
    return {**{key: out[key] for key in TABLE_COLUMNS}, **out}  # core columns first


def int_or_none(value: Any) -> int | None:
    """A table cell as an int; None for an empty, NaN or non-numeric cell."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def float_or_nan(value: Any) -> float:
    """A table cell as a float; NaN for an empty or non-numeric cell."""
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
