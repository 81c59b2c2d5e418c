"""Lazy 2D images: windows read on demand from numpy, memory-mapped TIFF, zarr or dask arrays.

:class:`ImageSource` wraps any array-like with ``shape``, ``dtype`` and slicing (napari layer data,
``tifffile.memmap``, ``zarr.Array``, ``dask.array``) and never reads more than the window asked
for. Because tiles are converted to 8-bit one at a time, the intensity map must be global: the
contrast limits are given, or computed once from the whole image block by block (finite min / max,
the rule of :mod:`unsamv2_engine.intensity`), so the same pixel value maps to the same grey in every
tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unsamv2_engine.intensity import to_uint8_rgb

BLOCK_ROWS = 1024
BAND_PIXELS = 1 << 23  # full-resolution pixels read at a time for a reduced (coarse) window


class ImageSource:
    """A 2D image ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` read window by window.

    contrast_limits: (lo, hi) mapped to (0, 255); None: uint8 and bool images pass through, others
    use the image's finite min / max (computed lazily, once, block by block).
    """

    def __init__(self, data: Any, *, contrast_limits: tuple[float, float] | None = None,
                 rgb: bool | None = None) -> None:
        shape = tuple(int(s) for s in data.shape)
        if rgb is None:
            rgb = len(shape) == 3 and shape[-1] in (3, 4)
        if len(shape) != (3 if rgb else 2):
            raise ValueError(f"expected a 2D image [H, W] or a colour image [H, W, 3|4], got shape {shape}; "
                             "slice stacks to one plane first")
        self.data = data
        self.rgb = bool(rgb)
        self.shape_hw = shape[:2]
        self.dtype = np.dtype(data.dtype)
        self._limits = None if contrast_limits is None else (float(contrast_limits[0]), float(contrast_limits[1]))

    @property
    def contrast_limits(self) -> tuple[float, float] | None:
        """The global map (None for uint8 / bool images without limits: they pass through)."""
        if self._limits is None and self.dtype not in (np.uint8, np.bool_):
            self._limits = finite_range(self.data, self.rgb)
        return self._limits

    def window(self, box: tuple[int, int, int, int], step: int = 1, *, band_pixels: int = BAND_PIXELS) -> np.ndarray:
        """The uint8 RGB ``[h, w, 3]`` of ``box`` = (x0, y0, x1, y1), reduced by ``step`` (area mean) if > 1.

        A reduced window is read in bands of whole ``step``-row blocks of about ``band_pixels`` pixels, each
        converted and reduced before the next is read: a coarse view of a whole 16384^2 slide holds one band
        at full resolution, never the window (the result equals reducing the whole window at once).
        """
        x0, y0, x1, y1 = box
        if step <= 1:
            return self._rgb8(self.data[y0:y1, x0:x1])
        rows = step * max(1, band_pixels // max(step * (x1 - x0), 1))
        bands = [block_reduce(self._rgb8(self.data[y:min(y + rows, y1), x0:x1]), step) for y in range(y0, y1, rows)]
        return bands[0] if len(bands) == 1 else np.concatenate(bands, axis=0)

    def _rgb8(self, raw: Any) -> np.ndarray:
        return to_uint8_rgb(np.asarray(raw), contrast_limits=self.contrast_limits, rgb=self.rgb)

    def signature_parts(self) -> dict[str, Any]:
        return {"shape": list(self.shape_hw), "dtype": self.dtype.str, "rgb": self.rgb,
                "contrast_limits": None if self.contrast_limits is None else list(self.contrast_limits)}


def block_reduce(rgb: np.ndarray, step: int) -> np.ndarray:
    """Area mean over ``step`` x ``step`` blocks (the last partial block is averaged over what exists)."""
    h, w = rgb.shape[:2]
    hh, ww = -(-h // step), -(-w // step)
    pad = np.pad(rgb.astype(np.float32), ((0, hh * step - h), (0, ww * step - w), (0, 0)))
    count = np.pad(np.ones((h, w), np.float32), ((0, hh * step - h), (0, ww * step - w)))
    sums = pad.reshape(hh, step, ww, step, -1).sum(axis=(1, 3))
    n = count.reshape(hh, step, ww, step).sum(axis=(1, 3))[..., None]
    return np.rint(sums / n).astype(np.uint8)


def finite_range(data: Any, rgb: bool = False) -> tuple[float, float]:
    """(min, max) of the finite values of a large array, read ``BLOCK_ROWS`` rows at a time."""
    lo, hi = np.inf, -np.inf
    for y in range(0, int(data.shape[0]), BLOCK_ROWS):
        block = np.asarray(data[y:y + BLOCK_ROWS])
        if rgb and block.shape[-1] == 4:
            block = block[..., :3]
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if not np.isfinite(lo):
        return 0.0, 0.0
    return lo, hi
