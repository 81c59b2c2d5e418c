"""From a uint8 RGB image to the model input, exactly as the authors' ``SAM2ImagePredictor``.

``[H, W, 3] uint8 -> float / 255 -> square resize to 1024 (bilinear, antialiased,
align_corners=False; no aspect preservation) -> ImageNet mean/std -> [1, 3, 1024, 1024]``.

Images larger than :data:`MAX_EXACT_SIDE` on a side are first reduced by an integer box
filter (area average) to at most that size, to bound memory on whole slides; below that size
the result equals upstream's bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_EXACT_SIDE = 4096


def _box_reduce(rgb: np.ndarray) -> np.ndarray:
    factor = int(np.ceil(max(rgb.shape[:2]) / MAX_EXACT_SIDE))
    h, w = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    blocks = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return np.rint(blocks.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)


def preprocess_image(rgb: np.ndarray, image_size: int = 1024, device: torch.device | str = "cpu") -> torch.Tensor:
    """``rgb`` uint8 ``[H, W, 3]`` -> normalised float32 tensor ``[1, 3, image_size, image_size]`` on ``device``."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}; see unsamv2_engine.intensity")
    if max(rgb.shape[:2]) > MAX_EXACT_SIDE:
        rgb = _box_reduce(rgb)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).unsqueeze(0)
    x = x.to(torch.float32) / 255.0
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
