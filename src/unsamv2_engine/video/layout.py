"""Where the frames are in a stack: the layout rules of :mod:`unsamv2_engine.video.frames`, checked.

Numpy only (no torch): the CLI's ``propagate --server`` checks a stack and its prompts with it on a
client without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unsamv2_engine.errors import ImageError

__all__ = ["StackLayout", "stack_layout"]


@dataclass(frozen=True)
class StackLayout:
    """Where things are in the input array.

    axis / channel_axis: non-negative indices into the input array (channel_axis None for 3D);
    frame_axes: the (row, column) axes of a frame; labels_shape: the input shape without channels.
    """

    shape: tuple[int, ...]
    axis: int
    channel_axis: int | None
    frame_axes: tuple[int, int]

    @property
    def n_frames(self) -> int:
        return self.shape[self.axis]

    @property
    def frame_hw(self) -> tuple[int, int]:
        return self.shape[self.frame_axes[0]], self.shape[self.frame_axes[1]]

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel_axis)

    @property
    def labels_axis(self) -> int:
        """The propagation axis in the label volume (the input axis, shifted if channels came before it)."""
        return self.axis - (1 if self.channel_axis is not None and self.channel_axis < self.axis else 0)


def _normalise_axis(value: object, ndim: int, what: str, shape: tuple[int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ImageError(f"{what} must be an integer axis index, got {value!r}")
    if not -ndim <= int(value) < ndim:
        raise ImageError(f"{what} {value} is out of range for a stack of shape {shape} ({ndim} axes: "
                         f"use {-ndim} .. {ndim - 1})")
    return int(value) % ndim


def stack_layout(shape: tuple[int, ...], axis: int = 0, channel_axis: int | None = None) -> StackLayout:
    """Validate a stack shape and the propagation / channel axes (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim == 2:
        raise ImageError(f"propagation needs a stack of 2D frames (3D [Z, H, W] / [T, H, W], or 4D with a channel "
                         f"axis); got a single 2D image of shape {shape}: segment it with 'unsamv2 segment' / "
                         f"ImageSession instead")
    if ndim not in (3, 4):
        raise ImageError(f"propagation needs a 3D stack [Z, H, W] or a 4D stack with one channel axis; got shape "
                         f"{shape} ({ndim} axes): remove singleton or extra axes first")
    if ndim == 3 and channel_axis is not None:
        raise ImageError(f"channel_axis={channel_axis} was given but the stack of shape {shape} is 3D: a 3D stack "
                         f"is read as grey frames; a colour stack needs 4 axes")
    axis_i = _normalise_axis(axis, ndim, "axis", shape)
    channel_i = None
    if ndim == 4:
        channel_i = _normalise_axis(-1 if channel_axis is None else channel_axis, ndim, "channel_axis", shape)
        if channel_i == axis_i:
            raise ImageError(f"axis and channel_axis both name axis {axis_i} of the stack of shape {shape}: the "
                             f"propagation axis must be a spatial (z or t) axis")
    frame_axes = tuple(i for i in range(ndim) if i not in (axis_i, channel_i))
    layout = StackLayout(shape, axis_i, channel_i, frame_axes)  # type: ignore[arg-type]
    if layout.n_frames < 1:
        raise ImageError(f"the stack of shape {shape} has no frames along axis {axis_i}")
    if min(layout.frame_hw) < 2:
        raise ImageError(f"frames of {layout.frame_hw[1]}x{layout.frame_hw[0]} pixels (axis {axis_i} of shape "
                         f"{shape}) are too small to segment: is --axis the z/t axis?")
    return layout
