"""A z-stack or time-lapse seen as a sequence of 2D frames, preprocessed lazily one frame at a time.

Layout rules (the user-facing contract, also in ``docs/propagation.md``):

* ``[N0, N1, N2]``: a stack of grey frames. ``axis`` (default 0) is the propagation axis (z or t);
  the two remaining axes, in their original order, are the frame's rows and columns.
* 4D: one axis holds channels (``channel_axis``, default the last one). It is removed first; ``axis``
  then counts among the three remaining axes *of the original array* (``axis`` and ``channel_axis``
  both index the input array and must differ). Per frame: 1 channel is grey; 2 channels become red
  and green (blue 0); 3 or more: the first three are RGB (RGBA drops alpha).
* 2D input, 5D input, a channel axis on a 3D stack or an ``axis`` out of range are refused.

Intensities follow :mod:`unsamv2_engine.intensity` with ONE contrast range for the whole stack, so a
slice keeps its brightness relative to its neighbours: the given ``contrast_limits``, else the finite
minimum and maximum over the whole stack (all used channels); ``uint8`` without limits is used as is.

Frames are read from the array (numpy, or array-likes such as zarr/dask: one ``np.asarray`` per
slice) only when the model needs them: nothing is converted or held for the whole stack.
"""

from __future__ import annotations

import numpy as np
import torch

from unsamv2_engine.errors import ImageError
from unsamv2_engine.intensity import to_uint8_rgb
from unsamv2_engine.preprocess import preprocess_image
from unsamv2_engine.video.layout import StackLayout, stack_layout

__all__ = ["StackFrames", "StackLayout", "stack_layout"]


def _frame_channels(frame: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` -> grey ``[H, W]`` (C = 1), ``[H, W, 3]`` (C = 2 padded with 0, C >= 3 first three)."""
    c = frame.shape[-1]
    if c == 1:
        return frame[..., 0]
    if c == 2:
        return np.concatenate([frame, np.zeros_like(frame[..., :1])], axis=-1)
    return frame[..., :3]


class StackFrames:
    """Lazy access to the frames of a stack, each as the model's uint8 RGB image or input tensor.

    ``stack``: an array or array-like (``shape``, ``dtype`` and slicing); see the module docstring
    for ``axis``, ``channel_axis`` and ``contrast_limits``.
    """

    def __init__(self, stack: object, *, axis: int = 0, channel_axis: int | None = None,
                 contrast_limits: tuple[float, float] | None = None) -> None:
        if not hasattr(stack, "shape") or not hasattr(stack, "dtype"):
            stack = np.asarray(stack)
        self.stack = stack
        self.layout = stack_layout(tuple(stack.shape), axis, channel_axis)
        dtype = np.dtype(stack.dtype)
        if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ImageError(f"cannot use a stack of dtype {dtype}: give integer, floating point or boolean data")
        self.dtype = dtype
        self.contrast_limits = self._stack_contrast_limits(contrast_limits)

    # ------------------------------------------------------------------ geometry
    @property
    def n_frames(self) -> int:
        return self.layout.n_frames

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(H, W) of one frame: rows and columns of the point coordinates (x = column, y = row)."""
        return self.layout.frame_hw

    def __len__(self) -> int:
        return self.n_frames

    # ------------------------------------------------------------------ frames
    def raw_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored: ``[H, W]`` or ``[H, W, C]``, the input dtype."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the stack of {self.n_frames} frames")
        lay = self.layout
        key = tuple(index if i == lay.axis else slice(None) for i in range(len(lay.shape)))
        frame = np.asarray(self.stack[key])  # remaining axes keep their order
        if lay.channel_axis is None:
            return frame
        channel_pos = lay.channel_axis - (1 if lay.channel_axis > lay.axis else 0)
        return np.moveaxis(frame, channel_pos, -1)

    def rgb8(self, index: int) -> np.ndarray:
        """Frame ``index`` as the model sees it: uint8 ``[H, W, 3]`` with the stack's contrast range."""
        frame = self.raw_frame(index)
        if frame.ndim == 3:
            frame = _frame_channels(frame)
        return to_uint8_rgb(frame, contrast_limits=self.contrast_limits, rgb=frame.ndim == 3)

    def pixels(self, index: int, image_size: int, device: torch.device) -> torch.Tensor:
        """Frame ``index`` preprocessed exactly as the image path: float32 ``[1, 3, S, S]`` on ``device``."""
        return preprocess_image(self.rgb8(index), image_size, device)

    # ------------------------------------------------------------------ intensity
    def _stack_contrast_limits(self, limits: tuple[float, float] | None) -> tuple[float, float] | None:
        """The one (lo, hi) for every frame; None keeps uint8 / bool frames unchanged."""
        if limits is not None:
            try:
                lo, hi = (float(v) for v in limits)
            except (TypeError, ValueError):
                raise ImageError(f"contrast_limits must be two numbers (lo, hi), got {limits!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
                raise ImageError(f"contrast_limits must be finite with lo <= hi, got ({lo}, {hi})")
            return lo, hi
        if self.dtype in (np.dtype(np.uint8), np.dtype(np.bool_)):
            return None
        lo, hi = np.inf, -np.inf
        for index in range(self.n_frames):  # one frame at a time: bounded memory on array-likes
            frame = self.raw_frame(index)
            if frame.ndim == 3:
                frame = frame[..., :3]  # the channels the model sees (a 2-channel pad of 0 is not data)
            finite = frame if np.issubdtype(frame.dtype, np.integer) else frame[np.isfinite(frame)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        return (0.0, 0.0) if lo > hi else (lo, hi)
