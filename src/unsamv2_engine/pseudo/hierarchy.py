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


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
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
        box = _box(m)
        if box is None:
            continue
        area = int(np.count_nonzero(m))
        duplicate = False
        for q, qb, qa in zip(props, boxes, areas):
            if not (box[0] < qb[1] and qb[0] < box[1] and box[2] < qb[3] and qb[2] < box[3]):
                continue
            if min(area, qa) <= duplicate_iou * max(area, qa):
                continue  # areas too different for IoU > duplicate_iou
            sl = (slice(min(box[0], qb[0]), max(box[1], qb[1])), slice(min(box[2], qb[2]), max(box[3], qb[3])))
            inter = int(np.count_nonzero(m[sl] & q[sl]))
            if inter / (area + qa - inter) > duplicate_iou:
                duplicate = True
                break
        if not duplicate:
            props.append(m)
            boxes.append(box)
            areas.append(area)
            kept_names.append(name)
    n = len(props)
    contained_in: list[list[int]] = [[] for _ in range(n)]  # i -> the proposals that contain i
    for i in range(n):
        bi = boxes[i]
        for j in range(n):
            if i == j or areas[j] < areas[i] or (areas[j] == areas[i] and j > i):
                continue  # only a larger proposal (or an earlier one of equal area) contains i
            bj = boxes[j]
            if not (bi[0] < bj[1] and bj[0] < bi[1] and bi[2] < bj[3] and bj[2] < bi[3]):
                continue
            sl = (slice(bi[0], bi[1]), slice(bi[2], bi[3]))
            if np.count_nonzero(props[i][sl] & props[j][sl]) > contain_thresh * areas[i]:
                contained_in[i].append(j)
    instances = []
    for i in range(n):
        if contained_in[i] or areas[i] < min_instance_area:
            continue
        parts = [props[k] for k in range(n) if i in contained_in[k]]
        instances.append(DividedInstance(props[i], parts, kept_names[i]))
    instances.sort(key=lambda inst: -int(np.count_nonzero(inst.mask)))
    return instances
