"""COCO-style masks: compressed RLE (pycocotools), annotations with a ``granularity`` field, files.

Annotation layout (shared by the synthetic generator, whole-image outputs, pseudo-labels and the
evaluation): ``{"id", "image_id", "category_id": 1, "iscrowd": 0, "area", "bbox": [x, y, w, h],
"segmentation": {"size": [H, W], "counts": str}, "granularity"?, "score"?, ...extra}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 1, "name": "fg", "supercategory": "object"}]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool ``[H, W]`` -> ``{"size": [H, W], "counts": ascii str}`` (COCO compressed RLE)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {m.shape}")
    m = m.view(np.uint8) if m.dtype == bool else m.astype(np.uint8)  # a bool array is 0/1 bytes already
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (compressed, ascii or bytes counts; or uncompressed list counts) -> bool ``[H, W]``."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(obj).view(bool)  # 0/1 bytes: a view, not a copy


def mask_to_annotation(mask: np.ndarray, *, ann_id: int, image_id: int, **fields: Any) -> dict[str, Any]:
    """One COCO annotation for a binary mask (class-agnostic category 1); ``fields`` are added as is."""
    rle = encode_rle(mask)
    x, y, w, h = (float(v) for v in mask_utils.toBbox({**rle, "counts": rle["counts"].encode("ascii")}))
    ann = {"id": int(ann_id), "image_id": int(image_id), "category_id": 1, "iscrowd": 0,
           "area": int(np.count_nonzero(mask)), "bbox": [x, y, w, h], "segmentation": rle}
    ann.update(fields)
    return ann


def coco_document(images: Iterable[Mapping[str, Any]], annotations: Iterable[Mapping[str, Any]],
                  info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A standard COCO dict (``images`` list, ``annotations``, one class-agnostic category)."""
    return {"info": dict(info or {}), "images": [dict(i) for i in images],
            "annotations": [dict(a) for a in annotations], "categories": CATEGORIES}


def write_coco(path: str | os.PathLike, document: Mapping[str, Any]) -> Path:
    """Write a COCO document as compact JSON, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":")))
    return path


def read_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO JSON; a single ``"image"`` dict (the UnSAMv2 pseudo-label layout) becomes ``"images"``."""
    doc = json.loads(Path(path).read_text())
    if "images" not in doc and isinstance(doc.get("image"), dict):
        doc["images"] = [doc["image"]]
    doc.setdefault("annotations", [])
    return doc
