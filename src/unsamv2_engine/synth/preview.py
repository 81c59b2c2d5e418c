"""Visual spot checks: a sample's image beside the same image with every level's outlines drawn.

Outline colours: tissue yellow, cluster magenta (drawn just outside the cluster), cell green,
nucleus red, nucleolus cyan. Non-8-bit images are shown with a 0.5-99.8 percentile stretch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .generate import Sample

__all__ = ["LEVEL_COLOURS", "overlay", "save_preview"]

LEVEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "tissue": (255, 220, 0), "cluster": (255, 0, 255), "cell": (0, 230, 0), "nucleus": (255, 40, 40),
    "nucleolus": (0, 200, 255)}


def _display(image: np.ndarray) -> np.ndarray:
    from unsamv2_engine.intensity import to_uint8_rgb

    if image.dtype == np.uint8:
        return to_uint8_rgb(image)
    lo, hi = np.percentile(image, [0.5, 99.8])
    return to_uint8_rgb(image, contrast_limits=(float(lo), float(max(hi, lo + 1))))


def overlay(sample: Sample, index: int | None = None) -> np.ndarray:
    """``uint8 [H, 2W, 3]``: the image (slice / frame ``index`` of a stack, default the middle one)
    and, to its right, the same image with the outlines of every level.
    """
    from skimage.segmentation import find_boundaries

    image, labels = sample.image, sample.labels
    if sample.ndim != "2":
        index = labels["cell"].shape[0] // 2 if index is None else index
        image = image[index]
        labels = {k: v[index] for k, v in labels.items()}
    base = _display(image)
    out = base.copy()
    for level, colour in LEVEL_COLOURS.items():
        if level in labels:
            mode = "outer" if level == "cluster" else "inner"
            out[find_boundaries(labels[level], mode=mode) & (labels[level] == 0 if mode == "outer" else True)] = colour
    return np.concatenate([base, out], axis=1)


def save_preview(sample: Sample, path: str | os.PathLike, *, index: int | None = None,
                 crop: int | None = None) -> Path:
    """Write :func:`overlay` as a PNG (optionally only the top-left ``crop`` x ``crop`` pixels of each half)."""
    from PIL import Image

    rgb = overlay(sample, index)
    if crop is not None:
        w = rgb.shape[1] // 2
        rgb = np.concatenate([rgb[:crop, :crop], rgb[:crop, w:w + crop]], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="PNG", optimize=True)
    return path
