"""Instances and their parts from many proposals (docs/model-reference.md §5.1 rules), fast for hundreds of masks.

The §5.2 rules -- ``is_contained(a, b) = |a & b| / |a| > contain_thresh``; an instance is contained
in no other proposal; its parts are the proposals contained in it -- evaluated on bounding-box
crops, so that 300-600 proposals of a 1024-px image cost well under a second. Near-duplicates
(IoU > ``duplicate_iou`` with an earlier proposal) are dropped first: several sources find the
same object, and two copies would each be "contained in the other" and lose instance status.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unsamv2_engine.pseudo.divide import DividedInstance

__all__ = ["build_instances"]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the mask's pixels (end exclusive), None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def build_instances(masks: Sequence[np.ndarray], *, sources: Sequence[str] | None = None,
                    contain_thresh: float = 0.8, duplicate_iou: float = 0.9, min_instance_area: int = 0
                    ) -> list[DividedInstance]:
    """Instances (bool ``[H, W]``, not contained in another proposal, area >= ``min_instance_area`` px),
    each with every other proposal contained in it as a part; largest first.

    Proposals are taken in the given order (put the most trusted sources first: a later near-duplicate
    is dropped). A part may belong to several instances only if they overlap, which the rules allow.
    """
    names = list(sources) if sources is not None else ["proposal"] * len(masks)
    props: list[np.ndarray] = []
    boxes: list[tuple[int, int, int, int]] = []
    areas: list[int] = []
    kept_names: list[str] = []
    for m, name in zip(masks, names):
        m = np.asarray(m, bool)
        box = mask_box(m)
        if box is None:
            continue
        area = int(np.count_nonzero(m))
        if not _is_duplicate(m, box, area, props, boxes, areas, duplicate_iou):
            props.append(m)
            boxes.append(box)
            areas.append(area)
            kept_names.append(name)
    contained_in = _containers(props, np.array(boxes, np.int64).reshape(-1, 4), np.array(areas, np.int64),
                               contain_thresh)
    holds: list[list[int]] = [[] for _ in props]  # j -> the proposals j contains, in index order
    for k, containers in enumerate(contained_in):
        for j in containers:
            holds[j].append(k)
    instances = []
    for i in range(len(props)):
        if contained_in[i] or areas[i] < min_instance_area:
            continue
        parts = [props[k] for k in holds[i]]
        instances.append(DividedInstance(props[i], parts, kept_names[i]))
    instances.sort(key=lambda inst: -int(np.count_nonzero(inst.mask)))
    return instances


def _touching(boxes: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Bool ``[N]``: which of ``boxes`` (int ``[N, 4]``, rows ``(y0, y1, x0, x1)``) overlap ``box``."""
    return (boxes[:, 0] < box[1]) & (box[0] < boxes[:, 1]) & (boxes[:, 2] < box[3]) & (box[2] < boxes[:, 3])


def _is_duplicate(m: np.ndarray, box: tuple[int, int, int, int], area: int, props: Sequence[np.ndarray],
                  boxes: Sequence[tuple[int, int, int, int]], areas: Sequence[int], duplicate_iou: float) -> bool:
    """Whether bool ``[H, W]`` ``m`` (``box``, ``area`` px) has IoU > ``duplicate_iou`` with one of ``props``.

    Only proposals whose boxes overlap and whose areas are within the ratio ``duplicate_iou`` are
    compared (IoU <= smaller / larger area).
    """
    if not props:
        return False
    a = np.asarray(areas)
    near = _touching(np.asarray(boxes), box) & (np.minimum(a, area) > duplicate_iou * np.maximum(a, area))
    for k in np.flatnonzero(near):
        qb, qa = boxes[k], areas[k]
        sl = (slice(min(box[0], qb[0]), max(box[1], qb[1])), slice(min(box[2], qb[2]), max(box[3], qb[3])))
        inter = int(np.count_nonzero(m[sl] & props[k][sl]))
        if inter / (area + qa - inter) > duplicate_iou:
            return True
    return False


def _containers(props: Sequence[np.ndarray], boxes: np.ndarray, areas: np.ndarray, contain_thresh: float
                ) -> list[list[int]]:
    """For each proposal ``i``, the indices ``j`` (increasing) of the proposals that contain it:
    ``|i & j| > contain_thresh * |i|`` with ``j`` larger, or of equal area and earlier.

    ``props`` bool ``[H, W]`` each, ``boxes`` int ``[N, 4]``, ``areas`` int ``[N]`` px.
    """
    n = len(props)
    index = np.arange(n)
    out: list[list[int]] = []
    for i in range(n):
        bi = boxes[i]
        larger = (areas > areas[i]) | ((areas == areas[i]) & (index < i))
        sl = (slice(bi[0], bi[1]), slice(bi[2], bi[3]))
        need = contain_thresh * areas[i]
        out.append([int(j) for j in np.flatnonzero(larger & _touching(boxes, bi))
                    if np.count_nonzero(props[i][sl] & props[j][sl]) > need])
    return out
