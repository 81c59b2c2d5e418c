"""A PNG to check pseudo-labels by eye: the image with every mask's outline coloured by its granularity.

Colours follow matplotlib's ``viridis`` map from g = 0.1 (dark violet, the finest parts) to g = 1.0
(yellow, whole instances). Coarse masks are drawn first so that fine outlines stay visible on top.
Images larger than ``max_side`` are shown downscaled (the JSON keeps full resolution).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from unsamv2_engine.io.coco import decode_rle

__all__ = ["granularity_colour", "overlay_image", "overlay_png_bytes"]


def granularity_colour(g: float) -> np.ndarray:
    """uint8 ``[3]`` RGB of granularity ``g`` (0.1 .. 1.0) on the viridis map."""
    from matplotlib import colormaps

    t = float(np.clip((g - 0.1) / 0.9, 0.0, 1.0))
    return (np.asarray(colormaps["viridis"](t)[:3]) * 255).round().astype(np.uint8)


def overlay_image(rgb: np.ndarray, annotations: Sequence[dict[str, Any]], *, max_side: int = 1024) -> np.ndarray:
    """uint8 ``[h, w, 3]``: ``rgb`` (dimmed to 70 %) with 1-pixel outlines of every annotation's mask.

    ``rgb`` uint8 ``[H, W, 3]``; annotations carry ``segmentation`` (COCO RLE of ``[H, W]``) and
    ``granularity``. ``h, w`` = ``H, W`` scaled so the long side is at most ``max_side``.
    """
    from skimage.segmentation import find_boundaries

    from unsamv2_engine.pseudo.conquer import resize_rgb
    from unsamv2_engine.pseudo.merging import upsample_mask

    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    canvas = (resize_rgb(rgb, size).astype(np.float32) * 0.7).astype(np.uint8)
    for ann in sorted(annotations, key=lambda a: -float(a.get("granularity", 1.0))):
        mask = decode_rle(ann["segmentation"])
        if mask.shape != size:
            mask = upsample_mask(mask, size)
        edge = find_boundaries(mask, mode="inner")
        canvas[edge] = granularity_colour(float(ann.get("granularity", 1.0)))
    return canvas


def overlay_png_bytes(rgb: np.ndarray, annotations: Sequence[dict[str, Any]], *, max_side: int = 1024) -> bytes:
    """:func:`overlay_image` encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay_image(rgb, annotations, max_side=max_side)).save(buffer, format="PNG")
    return buffer.getvalue()
