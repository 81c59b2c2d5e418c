"""Building a :class:`~unsamv2_engine.hierarchy.model.Hierarchy` from masks or label images.

Parents: each object gets the object of the next coarser level that covers the largest fraction
of its pixels, if that fraction is at least ``containment`` (default 0.5), else no parent (0).
Ties go to the smaller label id. :func:`~unsamv2_engine.hierarchy.nesting.enforce_nesting` then
makes ``child ⊂ parent`` hold pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unsamv2_engine.errors import InputError
from unsamv2_engine.hierarchy.model import (
    Hierarchy,
    as_label_stack,
    coarse_order,
    float_or_nan,
    int_or_none,
    label_ids,
)

__all__ = ["assemble", "build_hierarchy", "hierarchy_from_levels", "label_image", "relabel_levels"]


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
        raise InputError(f"containment must be in (0, 1], got {containment}")
    n = len(masks_per_level)
    if n == 0:
        raise InputError("build_hierarchy needs at least one level.")
    if granularities is None:
        granularities = [None] * n
    if len(granularities) != n:
        raise InputError(f"{len(granularities)} granularities given for {n} levels.")
    if scores is not None and len(scores) != n:
        raise InputError(f"{len(scores)} score lists given for {n} levels.")

    images: list[np.ndarray] = []
    level_scores: list[dict[int, float]] = []
    for i, item in enumerate(masks_per_level):
        level_score = None if scores is None else scores[i]
        if isinstance(item, np.ndarray):
            image = label_image(item, i)
            ids = label_ids(image)
            level_scores.append(_scores_for_ids(level_score, ids, i))
        else:
            image, kept = _paint_masks(item, i)
            level_scores.append(_scores_for_masks(level_score, kept, len(item), i))
        images.append(image)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise InputError(f"All levels must have the same spatial shape, got {sorted(shapes)}.")

    stack, mappings = relabel_levels(images)
    known = [
        {mapping[old]: {"score": s} for old, s in level_scores[i].items() if old in mapping}
        for i, mapping in enumerate(mappings)
    ]
    return assemble(
        stack,
        list(granularities),
        None if level_names is None else list(level_names),
        known,
        containment=containment,
        keep_parents=False,
        metadata=dict(metadata or {}),
    )


def label_image(item: np.ndarray, level: int) -> np.ndarray:
    """One level given as a label image (integers >= 0, or bool), checked; bool becomes uint8."""
    image = np.asarray(item)
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if not np.issubdtype(image.dtype, np.integer):
        raise InputError(
            f"Level {level}: a label image must hold integers (or bool), got dtype {image.dtype}; "
            f"pass a list of masks for one object per mask."
        )
    if image.size and image.min() < 0:
        raise InputError(f"Level {level}: labels must be non-negative (0 = background).")
    return image


def _paint_masks(masks: Sequence[np.ndarray], level: int) -> tuple[np.ndarray, list[int]]:
    """Paint masks largest first into a label image whose ids are ``mask index + 1``.

    Returns the image and the indices of the masks that kept at least one pixel, in mask order.
    """
    arrays = [np.asarray(m).astype(bool, copy=False) for m in masks]
    if not arrays:
        raise InputError(
            f"Level {level} has no mask; pass an all-zero label image for an empty level."
        )
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"Level {level}: masks differ in shape: {sorted(shapes)}.")
    areas = [int(a.sum()) for a in arrays]
    image = np.zeros(arrays[0].shape, np.uint32 if len(arrays) >= 65535 else np.uint16)
    for index in sorted(range(len(arrays)), key=lambda k: -areas[k]):  # stable: ties in order
        image[arrays[index]] = index + 1
    kept = [int(k) - 1 for k in label_ids(image)]
    return image, kept


def _scores_for_ids(level_score: Any, ids: np.ndarray, level: int) -> dict[int, float]:
    if level_score is None:
        return {}
    if isinstance(level_score, Mapping):
        return {int(k): float_or_nan(v) for k, v in level_score.items()}
    values = list(level_score)
    if len(values) != len(ids):
        raise InputError(
            f"Level {level}: {len(values)} scores for {len(ids)} labels; give one score per "
            f"non-zero label id (sorted) or a mapping {{label: score}}."
        )
    return {int(k): float_or_nan(v) for k, v in zip(ids, values)}


def _scores_for_masks(level_score: Any, kept: list[int], n_masks: int, level: int) -> dict[int, float]:
    """Scores keyed by the painted ids (mask index + 1)."""
    if level_score is None:
        return {}
    if isinstance(level_score, Mapping):
        return {int(k) + 1: float_or_nan(v) for k, v in level_score.items()}
    values = list(level_score)
    if len(values) != n_masks:
        raise InputError(f"Level {level}: {len(values)} scores for {n_masks} masks.")
    return {k + 1: float_or_nan(values[k]) for k in kept}


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
        raise InputError("hierarchy_from_levels needs at least one level.")
    n = len(images)
    if granularities is None:
        granularities = [None] * n
    if len(granularities) != n:
        raise InputError(f"{len(granularities)} granularities given for {n} levels.")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise InputError(f"All levels must have the same spatial shape, got {sorted(shapes)}.")
    known = [
        {int(row["label"]): dict(row) for row in (table or []) if row.get("label") is not None}
        for table in (tables if tables is not None else [None] * n)
    ]
    if len(known) != n:
        raise InputError(f"{len(known)} tables given for {n} levels.")
    return assemble(
        np.stack([label_image(image, i) for i, image in enumerate(images)]),
        [None if g is None else float(g) for g in granularities],
        None if level_names is None else list(level_names),
        known,
        containment=containment,
        keep_parents=True,
        metadata=dict(metadata or {}),
    )


def assemble(
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
    level_ids = [label_ids(stack[level]) for level in range(n)]
    all_ids = np.concatenate(level_ids) if level_ids else np.zeros(0, np.int64)
    if len(np.unique(all_ids)) != len(all_ids):
        images, mappings = relabel_levels([stack[level] for level in range(n)])
        stack = images
        known = [
            {mapping[old]: {k: v for k, v in row.items() if k not in ("label", "parent")}
             for old, row in rows.items() if old in mapping}
            for rows, mapping in zip(known, mappings)
        ]
        keep_parents = False
        level_ids = [label_ids(stack[level]) for level in range(n)]
    stack = as_label_stack(stack)
    order = coarse_order(granularities)
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
                candidate = int_or_none(row["parent"])
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


def relabel_levels(images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[dict[int, int]]]:
    """Relabel level images to ids ``1..N`` across levels (level order, then increasing id)."""
    offset = 0
    out = []
    mappings = []
    total = sum(len(label_ids(image)) for image in images)
    dtype = np.uint16 if total <= np.iinfo(np.uint16).max else np.uint32
    for image in images:
        ids = label_ids(image)
        new = np.zeros(image.shape, dtype)
        if len(ids):
            index = np.searchsorted(ids, image)
            nonzero = image != 0
            new[nonzero] = (index[nonzero] + offset + 1).astype(dtype)
        mappings.append({int(old): offset + 1 + k for k, old in enumerate(ids)})
        offset += len(ids)
        out.append(new)
    return np.stack(out), mappings
