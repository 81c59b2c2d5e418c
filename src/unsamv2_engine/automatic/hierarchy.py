"""From whole-image masks at several granularities to one nested label hierarchy and COCO JSON.

The parent of a mask is the mask of the next coarser level (larger g) that covers the largest
share of it, if that share is at least ``containment`` (default 0.5); then nesting is enforced
by clipping every child to its parent (:func:`unsamv2_engine.hierarchy.enforce_nesting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unsamv2_engine.automatic.segmenter import AutoMasks
from unsamv2_engine.hierarchy import Hierarchy, build_hierarchy, enforce_nesting
from unsamv2_engine.io.coco import coco_document, mask_to_annotation

DEFAULT_CONTAINMENT = 0.5


def levels_to_hierarchy(levels: Sequence[AutoMasks], *, containment: float = DEFAULT_CONTAINMENT,
                        metadata: dict[str, Any] | None = None) -> Hierarchy:
    """One nested :class:`Hierarchy` (levels in the order given) from per-granularity results."""
    if not levels:
        raise ValueError("no levels to build a hierarchy from")
    # an empty level enters as an all-background label image (a level of its own, with no objects)
    per_level = [list(level.masks) if len(level) else np.zeros(level.masks.shape[1:], np.uint32) for level in levels]
    hierarchy = build_hierarchy(per_level, [level.granularity for level in levels],
                                scores=[[float(s) for s in level.scores] for level in levels],
                                containment=containment, metadata=dict(metadata or {}))
    return enforce_nesting(hierarchy)


def hierarchy_to_coco(hierarchy: Hierarchy, *, image_id: int = 1, file_name: str = "",
                      info: dict[str, Any] | None = None) -> dict[str, Any]:
    """COCO document: one annotation per object of every level, with ``granularity``, ``level``,
    ``label`` and ``parent`` (0 = none), and the predicted IoU as ``score``.
    """
    h, w = hierarchy.labels.shape[-2:]
    annotations = []
    for row in hierarchy.table:
        mask = hierarchy.labels[row["level"]] == row["label"]
        score = row.get("score")
        annotations.append(mask_to_annotation(
            mask, ann_id=len(annotations) + 1, image_id=image_id, granularity=row["granularity"],
            level=int(row["level"]), label=int(row["label"]), parent=int(row["parent"]),
            score=None if score is None or not np.isfinite(score) else float(score)))
    image = {"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}
    return coco_document([image], annotations, info)


def masks_to_coco(result: AutoMasks, *, image_id: int = 1, file_name: str = "",
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """COCO document of one granularity's masks (overlaps kept: each mask whole), with scores."""
    h, w = result.masks.shape[1:]
    annotations = [mask_to_annotation(m, ann_id=i + 1, image_id=image_id, granularity=result.granularity,
                                      score=float(result.scores[i]), stability=float(result.stability[i]),
                                      point=[float(v) for v in result.points[i]])
                   for i, m in enumerate(result.masks)]
    return coco_document([{"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}],
                         annotations, info)
