"""Ground-truth tables from a sample: the hierarchy table and the COCO document.

COCO masks are encoded from whole label images at once (one run-length pass per 2D plane, then
``pycocotools`` compression), which gives exactly the RLE of
:func:`unsamv2_engine.io.coco.encode_rle` for every object, at a fraction of the cost of one
full-size boolean mask per object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from unsamv2_engine.io.coco import coco_document

from .scene import ObjectRecord

__all__ = ["HIERARCHY_COLUMNS", "coco_for_sample", "hierarchy_rows", "label_rles"]

HIERARCHY_COLUMNS: list[str] = ["label", "level", "level_name", "parent", "root", "area", "granularity",
                                "granularity_graco", "granularity_cell", "bbox", "centroid"]


def hierarchy_rows(objects: list[ObjectRecord]) -> tuple[list[dict], list[str]]:
    """Rows and columns of ``hierarchy.csv`` (a ``frame`` column first for time-lapse samples)."""
    rows = [o.to_row() for o in objects]
    columns = list(HIERARCHY_COLUMNS)
    if any(o.frame is not None for o in objects):
        columns = ["frame", *columns]
    return rows, columns


def label_rles(plane: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, np.ndarray]:
    """COCO compressed RLEs of every object of a 2D label image ``[H, W]``.

    Returns
    -------
    ids : int64 ``[N]`` sorted object ids present; rles : ``{"size": [H, W], "counts": str}`` each;
    areas : int64 ``[N]``; bboxes : float64 ``[N, 4]`` COCO ``[x, y, w, h]``.
    """
    h, w = plane.shape
    flat = np.asarray(plane).ravel(order="F")
    if not flat.any():
        return np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [flat.size]])
    vals = flat[starts]
    keep = vals != 0
    starts, ends, vals = starts[keep], ends[keep], vals[keep]
    order = np.argsort(vals, kind="stable")
    starts, ends, vals = starts[order], ends[order], vals[order]
    ids, first = np.unique(vals, return_index=True)
    bounds = np.append(first, vals.size)
    objs = []
    for i in range(ids.size):
        s = starts[bounds[i]:bounds[i + 1]]
        e = ends[bounds[i]:bounds[i + 1]]
        counts = np.empty(2 * s.size + 1, dtype=np.int64)
        counts[0] = s[0]
        counts[2:-1:2] = s[1:] - e[:-1]
        counts[1::2] = e - s
        counts[-1] = flat.size - e[-1]
        if counts[-1] == 0:
            counts = counts[:-1]
        objs.append({"size": [h, w], "counts": counts.tolist()})
    compressed = mask_utils.frPyObjects(objs, h, w)
    areas = np.asarray(mask_utils.area(compressed), dtype=np.int64)
    boxes = np.asarray(mask_utils.toBbox(compressed), dtype=np.float64).reshape(-1, 4)
    rles = [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in compressed]
    return ids.astype(np.int64), rles, areas, boxes


def coco_for_sample(sample: Any, *, name: str = "") -> dict[str, Any]:
    """The COCO document of a sample (class-agnostic category 1, ``iscrowd`` 0, RLE masks).

    * 2D: one image (``image_rgb.png``) and one annotation per object.
    * time-lapse: one image per frame (``frame`` field) and one annotation per object per frame,
      with that frame's granularities.
    * 3D: one image per z-slice (``z`` field) and one annotation per object per slice where the object
      is present; granularities are those of the 3D object (volume-based).

    Each annotation carries ``granularity`` (UnSAMv2 sqrt-area rule in its tissue tree),
    ``granularity_graco``, ``granularity_cell``, ``level``, ``level_name``, ``label`` (object id),
    ``parent`` and ``instance_id`` (the id of its root tissue object).
    """
    image = sample.image
    h, w = (image.shape[-3], image.shape[-2]) if sample.modality == "he" else image.shape[-2:]
    ndim = sample.ndim
    if ndim == "2":
        planes = [None]
        images = [{"id": 1, "file_name": "image_rgb.png", "height": int(h), "width": int(w)}]
    else:
        depth = next(iter(sample.labels.values())).shape[0]
        planes = list(range(depth))
        key = "frame" if ndim == "t" else "z"
        images = [{"id": p + 1, "file_name": "image.tif", "height": int(h), "width": int(w), key: p} for p in planes]
    for img in images:
        img.update({"sample": name, "seed": int(sample.seed), "modality": sample.modality})
    by_key: dict[tuple[int | None, int], ObjectRecord] = {(o.frame, o.id): o for o in sample.objects}
    anns: list[dict[str, Any]] = []
    next_id = 1
    for p, img in zip(planes, images):
        per_plane = []
        for lab in sample.labels.values():
            ids, rles, areas, boxes = label_rles(lab if p is None else lab[p])
            per_plane.extend(zip(ids.tolist(), rles, areas.tolist(), boxes.tolist()))
        per_plane.sort(key=lambda item: item[0])
        for oid, rle, area, box in per_plane:
            rec = by_key[(p if ndim == "t" else None, oid)]
            ann = {"id": next_id, "image_id": img["id"], "category_id": 1, "iscrowd": 0, "area": int(area),
                   "bbox": [float(v) for v in box], "segmentation": rle, "granularity": rec.granularity,
                   "granularity_graco": rec.granularity_graco, "granularity_cell": rec.granularity_cell,
                   "level": rec.level, "level_name": rec.level_name, "label": rec.id, "parent": rec.parent,
                   "instance_id": rec.root}
            if ndim == "t":
                ann["frame"] = p
            elif ndim == "3":
                ann["z"] = p
            anns.append(ann)
            next_id += 1
    info = {"description": "unsamv2_engine.synth synthetic microscopy", "sample": name,
            "generator_version": sample.generator_version, "seed": int(sample.seed), "modality": sample.modality,
            "ndim": ndim, "levels": list(sample.levels)}
    return coco_document(images, anns, info=info)
