"""Mask NMS of the conquer stage (docs/model-reference.md §5.2 steps 5-6).

The authors' NMS is *windowed*: after sorting by area (descending), a kept mask only suppresses
the next ``step - 1`` masks in that order, not every later mask. Near-duplicates further apart in
the area order survive. This reproduces their behaviour on purpose; it is not a full pairwise NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mask_iou", "protected_nms", "windowed_mask_nms"]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool-like masks of equal shape ``[H, W]``; 0.0 if both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 0.0
    return float(np.logical_and(a, b).sum()) / union


def windowed_mask_nms(
    masks: Sequence[np.ndarray], iou_thresh: float = 0.8, step: int = 5
) -> list[int]:
    """Authors' windowed mask NMS (§5.3-6).

    Parameters
    ----------
    masks
        ``N`` bool masks, each ``[H, W]``.
    iou_thresh
        a mask is dropped if its IoU with a kept mask is ``> iou_thresh``.
    step
        window size; kept mask at sorted position ``i`` can only suppress positions
        ``i+1 .. i+step-1``.

    Returns
    -------
        Indices into ``masks`` of the kept masks, in area-descending order (stable for equal
        areas). Masks are sorted by area, descending; walking that order, each still-kept mask
        ``i`` drops any still-kept ``j`` in ``i+1 .. i+step-1`` with ``IoU(i, j) > iou_thresh``.
        A duplicate outside that window is kept (the authors' quirk).
    """
    n = len(masks)
    if n == 0:
        return []
    arrs = [np.asarray(m, dtype=bool) for m in masks]
    areas = np.array([int(np.count_nonzero(m)) for m in arrs])
    order = np.argsort(-areas, kind="stable")
    removed = np.zeros(n, dtype=bool)  # by sorted position
    for i in range(n):
        if removed[i]:
            continue
        for j in range(i + 1, min(i + step, n)):
            if removed[j] or not _may_exceed(areas[order[i]], areas[order[j]], iou_thresh):
                continue
            if _iou_of(arrs[order[i]], arrs[order[j]], areas[order[i]], areas[order[j]]) > iou_thresh:
                removed[j] = True
    return [int(order[k]) for k in range(n) if not removed[k]]


def _iou_of(a: np.ndarray, b: np.ndarray, area_a: int, area_b: int) -> float:
    """:func:`mask_iou` of bool masks of known areas (px): one pass over the pixels instead of three."""
    inter = int(np.count_nonzero(a & b))
    union = int(area_a) + int(area_b) - inter
    return inter / union if union else 0.0


def _may_exceed(area_a: int, area_b: int, iou_thresh: float) -> bool:
    """False when two masks of these areas (px) cannot have IoU > ``iou_thresh``: IoU <= min / max area."""
    small, large = min(area_a, area_b), max(area_a, area_b)
    return large > 0 and small > iou_thresh * large


def protected_nms(
    instance: np.ndarray,
    parts: Sequence[np.ndarray],
    iou_thresh: float = 0.8,
    step: int = 5,
) -> list[int]:
    """Protected NMS (§5.3-7): the instance is always kept and never suppressed.

    Parameters
    ----------
    instance
        bool ``[H, W]`` instance mask.
    parts
        ``N`` bool ``[H, W]`` candidate part masks (conquer masks + detector parts).
    iou_thresh, step
        as in :func:`windowed_mask_nms`.

    Returns
    -------
        Indices into ``parts`` of the kept parts, in area-descending order: parts with
        ``IoU(part, instance) > iou_thresh`` are dropped, then :func:`windowed_mask_nms` runs
        among the rest. The caller's final hierarchy is ``[instance] + kept parts``.
    """
    inst = np.asarray(instance, dtype=bool)
    inst_area = int(np.count_nonzero(inst))
    areas = [int(np.count_nonzero(p)) for p in parts]
    survivors = [k for k, p in enumerate(parts) if not _may_exceed(inst_area, areas[k], iou_thresh)
                 or _iou_of(inst, np.asarray(p, dtype=bool), inst_area, areas[k]) <= iou_thresh]
    kept = windowed_mask_nms([parts[k] for k in survivors], iou_thresh, step)
    return [survivors[k] for k in kept]
