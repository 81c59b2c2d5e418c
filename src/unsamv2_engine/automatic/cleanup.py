"""Small-region clean-up without sam2's CUDA extension: remove islands and fill holes below an area.

As sam2's ``postprocess_small_regions``: per mask, drop disconnected pieces and fill holes smaller
than ``min_area`` pixels (connected components by scipy), then NMS again on the new boxes with
unchanged masks preferred.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from sam2.utils.amg import batched_mask_to_box
from scipy import ndimage

from unsamv2_engine.nms import greedy_nms


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """``mode="holes"`` fills background components under ``min_area``; ``"islands"`` removes
    foreground components under it (keeping the largest if all are small). Returns (mask, changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    working = ~mask if mode == "holes" else mask
    labels, n = ndimage.label(working, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size == 0:
        return mask, False
    if mode == "holes":
        out = mask | np.isin(labels, small)
    else:
        keep = np.flatnonzero(sizes >= min_area) + 1
        if keep.size == 0:
            keep = np.array([int(np.argmax(sizes)) + 1])
        out = np.isin(labels, keep)
    return out, True


def remove_small_regions_all(result, min_area: int, nms_thresh: float):
    """Apply both clean-ups to every mask of an :class:`AutoMasks`, then NMS (unchanged masks first)."""
    cleaned, unchanged = [], []
    for mask in result.masks:
        m, changed_h = remove_small_regions(mask, min_area, "holes")
        m, changed_i = remove_small_regions(m, min_area, "islands")
        cleaned.append(m)
        unchanged.append(not (changed_h or changed_i))
    if not cleaned:
        return result
    masks = np.stack(cleaned)
    boxes = batched_mask_to_box(torch.from_numpy(masks))
    keep = greedy_nms(boxes.float(), torch.tensor(unchanged, dtype=torch.float32), nms_thresh).numpy()
    keep.sort()
    return replace(result, masks=masks[keep], scores=result.scores[keep], stability=result.stability[keep],
                   boxes=boxes.numpy()[keep], points=result.points[keep])
