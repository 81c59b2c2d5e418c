"""Feature backbones of the pseudo-label pipeline, behind one interface (docs/model-reference.md §5.1/§5.2).

A backbone turns a uint8 RGB image ``[H, W, 3]`` into a grid of patch features ``[h, w, C]`` float32
that covers the whole image uniformly. The divide stage cuts a graph of patch affinities, the
conquer stage merges adjacent patches; both only need cosine similarities between patches.

* :class:`ClassicalBackbone` (``"classical"``): no weights at all. Multi-scale colour and texture
  statistics, averaged over SLIC superpixels, pooled onto a regular patch grid and standardised per
  channel. Deterministic, a 512 x 512 image in about 0.1-0.2 s on one CPU core.
* :class:`Sam2Backbone` (``"sam2"``): the image encoder of a loaded SAM 2.1 / UnSAMv2 model, its
  ``vision_features`` (the 64 x 64 map of a 1024 input, 256 channels), aspect ratio kept by padding,
  the grid cropped to the non-padded region.
* ``"dino"``: a DINOv2/DINOv3 ViT from a local weights file (:mod:`unsamv2_engine.pseudo.dino`,
  imported only when asked for).

:func:`make_backbone` builds one by name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from unsamv2_engine.model.build import UnSAMv2Model

__all__ = ["BACKBONES", "Backbone", "ClassicalBackbone", "Sam2Backbone", "default_backbone_name", "make_backbone"]

#: Names :func:`make_backbone` accepts.
BACKBONES = ("classical", "sam2", "dino")


class Backbone(Protocol):
    """What the divide and conquer stages need from a feature extractor."""

    name: str  # "classical", "sam2", "dinov2-vitb14", ...
    patch_size: int  # input pixels per feature cell, at the resolution the backbone was fed

    def features(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[h, w, C]`` float32 patch features covering the whole image.

        ``h ~ H / patch_size`` after the backbone's own resizing; callers rely only on the grid
        covering the image uniformly and resize masks from grid to pixels themselves.
        """
        ...


def _check_rgb8(image: np.ndarray) -> np.ndarray:
    rgb = np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a backbone takes a uint8 [H, W, 3] RGB image, got {rgb.dtype} {rgb.shape}; "
                         "convert with unsamv2_engine.intensity.to_uint8_rgb")
    if min(rgb.shape[:2]) < 2:
        raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small for patch features")
    return rgb


# ============================================================================ classical
@dataclass(frozen=True)
class ClassicalBackbone:
    """Weight-free patch features: colour + multi-scale texture on superpixels.

    Per pixel (``L, a, b`` = CIE Lab of the image, L scaled to 0..1): ``L, a, b``, and for every
    scale ``s = k * patch_size`` (``k`` in ``scales``): Gaussian mean of L, local standard deviation
    of L, gradient magnitude of the smoothed L and the scale-normalised Laplacian of Gaussian
    (``-s^2 * LoG``, positive on bright blobs). These are averaged within SLIC superpixels of about
    ``superpixel_patches`` patches each, pooled (averaged) onto the ``patch_size`` grid and
    standardised per channel over the grid (zero mean, unit variance; a constant channel becomes 0).
    All of it is computed on the image resized so that one patch is ``detail x detail`` pixels
    (the grid is all that is returned), which bounds the cost by the grid size.

    ``features`` of an ``[H, W, 3]`` image is ``[ceil(H / p), ceil(W / p), 3 + 4 * len(scales)]``
    float32 (``p = patch_size``; 16 gives the authors' 48 x 48 grid on a 768 crop).
    """

    patch_size: int = 16
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    superpixel_patches: float = 1.0
    slic_compactness: float = 10.0
    detail: int = 4
    name: str = "classical"

    def features(self, image: np.ndarray) -> np.ndarray:
        rgb = _check_rgb8(image)
        h, w = rgb.shape[:2]
        grid = (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))
        # Work where one patch is `detail` x `detail` pixels: the grid is all we return, and the
        # filters cost (patch_size / detail)^2 times less than at full resolution.
        detail = min(self.detail, self.patch_size)
        small = _resize_rgb8(rgb, (grid[0] * detail, grid[1] * detail))
        per_pixel = self.pixel_features(small, pixels_per_patch=detail)
        superpixels = self.superpixels(per_pixel[..., 0], pixels_per_patch=detail)
        if superpixels is not None:
            per_pixel = _average_in_regions(per_pixel, superpixels)
        return _standardise(_pool_to_grid(per_pixel, detail))

    def pixel_features(self, rgb: np.ndarray, *, pixels_per_patch: float | None = None) -> np.ndarray:
        """``[H, W, 3]`` uint8 -> ``[H, W, 3 + 4 * len(scales)]`` float32 per-pixel features (unnormalised).

        ``pixels_per_patch``: the size of one patch in ``rgb``'s pixels (default ``patch_size``);
        the filter scales are ``scales`` times that.
        """
        from scipy import ndimage as ndi
        from skimage.color import rgb2lab

        unit = float(pixels_per_patch or self.patch_size)
        lab = rgb2lab(rgb).astype(np.float32)
        lum = lab[..., 0] / 100.0
        channels = [lum, lab[..., 1] / 100.0, lab[..., 2] / 100.0]
        for k in self.scales:
            s = max(float(k) * unit, 0.5)
            mean = ndi.gaussian_filter(lum, s, mode="reflect")
            sq = ndi.gaussian_filter(lum * lum, s, mode="reflect")
            channels.append(mean)
            channels.append(np.sqrt(np.maximum(sq - mean * mean, 0.0)))
            channels.append(ndi.gaussian_gradient_magnitude(lum, s, mode="reflect") * s)
            channels.append(-ndi.gaussian_laplace(lum, s, mode="reflect") * s * s)
        return np.stack(channels, axis=-1).astype(np.float32)

    def superpixels(self, lum: np.ndarray, *, pixels_per_patch: float | None = None) -> np.ndarray | None:
        """SLIC labels ``[H, W]`` int (0..n-1) of the luminance ``[H, W]``; None below 2 px per superpixel."""
        from skimage.segmentation import slic

        h, w = lum.shape
        side = self.superpixel_patches * float(pixels_per_patch or self.patch_size)  # superpixel side in pixels
        if side < 2:
            return None
        n_segments = max(1, int(round(h * w / (side * side))))
        return slic(lum.astype(np.float64), n_segments=n_segments, compactness=self.slic_compactness / 100.0,
                    channel_axis=None, start_label=0, enforce_connectivity=False)


def _resize_rgb8(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[size[0], size[1], 3]`` (PIL box filter down, bilinear up)."""
    from PIL import Image

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    down = h * w <= rgb.shape[0] * rgb.shape[1]
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), method))


def _average_in_regions(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Replace each pixel's ``[C]`` vector by the mean over its region; ``values [H, W, C]``, ``labels [H, W]`` int."""
    flat = labels.reshape(-1)
    n = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    counts[counts == 0] = 1.0
    c = values.shape[-1]
    vals = values.reshape(-1, c)
    means = np.stack([np.bincount(flat, weights=vals[:, i], minlength=n) / counts for i in range(c)], axis=-1)
    return means[flat].reshape(values.shape).astype(np.float32)


def _pool_to_grid(values: np.ndarray, patch: int) -> np.ndarray:
    """Average ``[H, W, C]`` over ``patch x patch`` cells -> ``[ceil(H/patch), ceil(W/patch), C]``."""
    h, w, c = values.shape
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    padded = np.zeros((gh * patch, gw * patch, c), np.float64)
    padded[:h, :w] = values
    weight = np.zeros((gh * patch, gw * patch), np.float64)
    weight[:h, :w] = 1.0
    sums = padded.reshape(gh, patch, gw, patch, c).sum(axis=(1, 3))
    counts = weight.reshape(gh, patch, gw, patch).sum(axis=(1, 3))
    return (sums / np.maximum(counts, 1.0)[..., None]).astype(np.float32)


def _standardise(grid: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per channel over the grid ``[h, w, C]``; constant channels become 0."""
    flat = grid.reshape(-1, grid.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    out = np.where(std > 1e-6, (flat - mean) / np.maximum(std, 1e-12), 0.0)
    return out.reshape(grid.shape).astype(np.float32)


# ============================================================================ SAM 2
class Sam2Backbone:
    """The image encoder of a loaded model: ``vision_features``, 256 channels, 16 input pixels per cell.

    The image is resized so its long side is ``model.image_size`` (1024; 128 or 256 for a miniature)
    with the aspect ratio kept (bilinear, antialiased), ImageNet-normalised, zero-padded (after
    normalisation) at the bottom and right to a square, and encoded once under ``inference_mode`` (bf16
    autocast on CUDA). The returned grid is the part of the ``image_size / 16`` square map (64 x 64 at
    1024 px) that covers the image: ``[ceil(h' / 16), ceil(w' / 16), 256]`` for a resized image of
    ``h' x w'``. ``no_mem_embed`` (a constant vector the
    decoder path adds) is not added: it would only shift every cosine similarity.
    """

    name = "sam2"

    def __init__(self, model: UnSAMv2Model) -> None:
        self.model = model
        self.image_size = int(model.image_size)
        self.patch_size = 16  # the stride of SAM 2's image embedding at any input size

    def features(self, image: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from unsamv2_engine.devices import inference_context
        from unsamv2_engine.preprocess import IMAGENET_MEAN, IMAGENET_STD

        rgb = _check_rgb8(image)
        h, w = rgb.shape[:2]
        size = self.image_size
        scale = size / max(h, w)
        rh, rw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
        device = self.model.device
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).to(device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        x = F.interpolate(x, (rh, rw), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = F.pad((x - mean) / std, (0, size - rw, 0, size - rh))
        with inference_context(device):
            feats = self.model.sam.forward_image(x)["vision_features"]  # [1, 256, size / 16, size / 16]
        gh, gw = math.ceil(rh / self.patch_size), math.ceil(rw / self.patch_size)
        grid = feats[0, :, :gh, :gw].permute(1, 2, 0).float().cpu().numpy()
        return np.ascontiguousarray(grid, dtype=np.float32)


# ============================================================================ factory
def default_backbone_name(model: Any | None) -> str:
    """``"sam2"`` when a model is loaded, else ``"classical"``."""
    return "sam2" if model is not None else "classical"


def make_backbone(name: str | None, *, model: UnSAMv2Model | None = None,
                  dino_weights: str | os.PathLike | None = None, device: Any = "cpu") -> Backbone:
    """A backbone by name: ``"classical"``, ``"sam2"`` (needs ``model``) or ``"dino"`` (needs ``dino_weights``).

    ``None`` means ``"sam2"`` when a model is given, else ``"classical"``. ``device`` is used by the
    DINO backbone only (the SAM 2 backbone runs where the model is).
    """
    name = default_backbone_name(model) if name is None else str(name).strip().lower()
    if name == "classical":
        return ClassicalBackbone()
    if name == "sam2":
        if model is None:
            raise ValueError("the sam2 backbone uses the image encoder of a loaded model: give --checkpoint or "
                             "--model, or choose --backbone classical (no weights needed)")
        return Sam2Backbone(model)
    if name in ("dino", "dinov2", "dinov3"):
        if dino_weights is None:
            raise ValueError("the dino backbone needs a local weights file: pass --dino-weights PATH (a DINOv2/"
                             "DINOv3 ViT state dict), or choose --backbone classical or sam2")
        from unsamv2_engine.pseudo.dino import DinoBackbone

        return DinoBackbone(dino_weights, device=device)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
