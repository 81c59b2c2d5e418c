"""Conquer stage: parts of one instance by merging its patch features (docs/model-reference.md §5.2).

Per instance: tight crop -> resize (long side ``local_size``, sides rounded up to a multiple of the
backbone's patch size) -> backbone features -> :func:`~unsamv2_engine.pseudo.merging.iterative_merge`
at thresholds 0.9 .. 0.5 -> every level's clusters upsampled to the crop, kept if more than 90 % of
them lies in the instance, pasted back -> windowed NMS -> protected NMS with the instance (together
with the divide stage's parts of this instance).

Differences from the authors (documented in ``docs/pseudo-labels.md``):

* no CascadePSP refinement (it needs downloaded weights) of the instance or of the parts;
* the crop includes the bounding box's last row and column (theirs excludes them);
* patches mostly outside the instance (less than half of their pixels inside) take no part in
  the merging, so clusters cannot grow through the background; the coverage filter still runs;
* exact duplicates (the same cluster surviving several thresholds) are removed before the NMS;
* merged clusters below ``min_part_area`` pixels are dropped (off by default here; the pipeline
  setting defaults to 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unsamv2_engine.pseudo.merging import coverage, iterative_merge, upsample_mask
from unsamv2_engine.pseudo.nms import protected_nms, windowed_mask_nms

__all__ = ["ConquerPart", "bounding_box", "conquer_instance", "resize_rgb"]


@dataclass
class ConquerPart:
    """A part of an instance: bool ``[H, W]`` mask; ``is_conquer`` True if it came from merging."""

    mask: np.ndarray
    is_conquer: bool


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(y0, y1, x0, x1)`` (end exclusive) of a non-empty bool ``[H, W]`` mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the instance mask is empty")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[size[0], size[1], 3]`` (PIL bicubic up, box-filtered down)."""
    from PIL import Image

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    resample = Image.Resampling.BICUBIC if h * w >= rgb.shape[0] * rgb.shape[1] else Image.Resampling.BOX
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), resample))


def _local_shape(hw: tuple[int, int], local_size: int, multiple: int) -> tuple[int, int]:
    """Resize ``hw`` so its long side is ``local_size``; each side rounded up to a multiple of ``multiple``."""
    h, w = hw
    scale = local_size / max(h, w)
    return (max(multiple, math.ceil(h * scale / multiple) * multiple),
            max(multiple, math.ceil(w * scale / multiple) * multiple))


def _grid_fraction(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each grid cell's pixels inside ``mask [H, W]``: float ``[gh, gw]`` (cells split the image evenly)."""
    h, w = mask.shape
    gh, gw = grid
    ys = np.minimum((np.arange(h) * gh / h).astype(np.int64), gh - 1)
    xs = np.minimum((np.arange(w) * gw / w).astype(np.int64), gw - 1)
    cell = (ys[:, None] * gw + xs[None, :]).reshape(-1)
    inside = np.bincount(cell, weights=mask.reshape(-1).astype(np.float64), minlength=gh * gw)
    total = np.bincount(cell, minlength=gh * gw)
    return (inside / np.maximum(total, 1)).reshape(gh, gw)


def conquer_instance(rgb: np.ndarray, instance: np.ndarray, backbone, *, divide_parts: Sequence[np.ndarray] = (),
                     local_size: int = 768, thetas: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5),
                     min_size: int = 4, coverage_thresh: float = 0.9, nms_iou: float = 0.8,
                     nms_step: int = 5, min_part_area: int = 0) -> list[ConquerPart]:
    """The parts of one instance (§5.3 steps 2-7, without refinement).

    Parameters
    ----------
    rgb
        uint8 ``[H, W, 3]`` image.
    instance
        bool ``[H, W]`` instance mask (non-empty).
    backbone
        a :class:`~unsamv2_engine.pseudo.backbones.Backbone`.
    divide_parts
        bool ``[H, W]`` masks the divide stage found inside this instance.
    min_part_area
        merged clusters smaller than this many pixels of ``rgb`` are dropped (small
        instances are upsampled to ``local_size``, so 4 patches can be a few pixels).

    Returns
    -------
        the kept parts (conquer masks and divide parts), area-descending, the instance excluded.
    """
    inst = np.asarray(instance, bool)
    y0, y1, x0, x1 = bounding_box(inst)
    crop_hw = (y1 - y0, x1 - x0)
    local_hw = _local_shape(crop_hw, local_size, int(backbone.patch_size))
    crop = resize_rgb(rgb[y0:y1, x0:x1], local_hw)
    feats = backbone.features(crop)
    inst_crop = inst[y0:y1, x0:x1]
    valid = _grid_fraction(inst_crop, feats.shape[:2]) >= 0.5
    levels = iterative_merge(feats, thetas, min_size=min_size, valid=valid)

    conquered: list[np.ndarray] = []
    seen: set[bytes] = set()
    for level in levels:
        for cluster in level:
            key = np.packbits(cluster).tobytes()
            if key in seen:
                continue
            seen.add(key)
            small = upsample_mask(cluster, crop_hw)
            if np.count_nonzero(small) < min_part_area or coverage(small, inst_crop) <= coverage_thresh:
                continue
            full = np.zeros_like(inst)
            full[y0:y1, x0:x1] = small
            conquered.append(full)
    conquered = [conquered[k] for k in windowed_mask_nms(conquered, nms_iou, nms_step)]
    candidates = [ConquerPart(m, True) for m in conquered] + [ConquerPart(np.asarray(m, bool), False)
                                                             for m in divide_parts]
    kept = protected_nms(inst, [c.mask for c in candidates], nms_iou, nms_step)
    return [candidates[k] for k in kept]
