"""How an image napari can hold becomes the uint8 RGB image the model sees.

UnSAMv2 (like SAM 2.1) is trained on 8-bit RGB photographs. Microscopy and other
scientific images come as 16-bit, signed, floating point, greyscale or RGBA arrays, so
every image passes through :func:`to_uint8_rgb` before it reaches the model. The rule is
a user-facing contract and is stated here in full.

Layout
    * ``[H, W]`` is a greyscale image; its value is repeated into 3 identical channels.
    * ``[H, W, 3]`` is RGB.
    * ``[H, W, 4]`` is RGBA; the alpha channel is dropped (it never influences the
      colours nor the intensity range).
    * ``rgb=None`` infers the layout: a 3D array whose last axis has size 3 or 4 is a
      colour image. ``rgb=True`` requires such an array. ``rgb=False`` with a 3D array
      means the array is a stack of 2D images, which is refused: pass a single 2D slice.
    * Any other shape is refused with a ``ValueError`` naming the shape.

Intensities
    * ``uint8`` without ``contrast_limits`` passes through untouched, bit for bit (this
      is what the authors' predictor does with 8-bit images).
    * ``bool`` becomes 0 / 255 (``contrast_limits`` are ignored for boolean images).
    * Every other dtype (``uint16``, signed integers, floats), and ``uint8`` when
      ``contrast_limits`` are given, is mapped linearly so that ``lo`` becomes 0 and
      ``hi`` becomes 255: ``out = clip(rint((x - lo) * 255 / (hi - lo)), 0, 255)``.
      ``(lo, hi)`` are the ``contrast_limits`` when given (the napari plugin passes the
      layer's contrast limits, so the model sees what the user sees), otherwise the
      minimum and maximum of the image over all colour channels jointly, ignoring NaN
      and +/-inf. Values outside ``[lo, hi]`` are clipped (``+inf`` to 255, ``-inf`` to
      0); NaN is treated as ``lo`` (0). If ``hi == lo`` (a constant image, or an image
      without any finite value) the result is all zeros.
    * The map is the same for all channels: there is no per-channel stretch, so colours
      keep their balance.

The result is always a new C-contiguous ``uint8`` array of shape ``[H, W, 3]``, whatever
the strides of the input (napari views may be reversed, with negative strides).

This module imports numpy only.
"""

from __future__ import annotations

import numpy as np

from unsamv2_engine.errors import ImageError

__all__ = ["describe_intensity_rule", "to_uint8_rgb"]

_ACCEPTED = (
    "accepted are a 2D greyscale image [H, W], an RGB image [H, W, 3] "
    "or an RGBA image [H, W, 4]"
)


def describe_intensity_rule() -> str:
    """Return the intensity rule as one human-readable paragraph.

    Returns
    -------
    str
        A plain-text paragraph suitable for documentation and command-line help.
    """
    return (
        "The model sees an 8-bit RGB image. A 2D image [H, W] is greyscale and is "
        "repeated into 3 channels; [H, W, 3] is RGB; [H, W, 4] is RGBA and its alpha "
        "channel is dropped; stacks must be sliced to a single 2D image first. 8-bit "
        "images are used as they are, unchanged. Boolean images become 0/255. Any other "
        "image (16-bit, signed, floating point), or an 8-bit image for which contrast "
        "limits are given, is mapped linearly so that the low limit becomes 0 and the "
        "high limit 255, with rounding and clipping; the limits are the given contrast "
        "limits (in napari: the layer's contrast limits, so the model sees what you "
        "see), otherwise the minimum and maximum of the image, ignoring NaN and "
        "infinite values. NaN becomes 0 and a constant image becomes all zeros. The "
        "same map applies to all colour channels, so colours keep their balance."
    )


def to_uint8_rgb(
    image: np.ndarray,
    *,
    contrast_limits: tuple[float, float] | None = None,
    rgb: bool | None = None,
) -> np.ndarray:
    """Convert a 2D image to the uint8 RGB image the model sees.

    See the module docstring for the full rule.

    Parameters
    ----------
    image : np.ndarray
        ``[H, W]`` greyscale, ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA, of any boolean,
        integer or floating point dtype. Array-likes (dask, zarr) are read with
        ``np.asarray``. Any strides, including negative ones.
    contrast_limits : tuple of float, optional
        ``(lo, hi)`` mapped to ``(0, 255)``. Default: the finite minimum and maximum of
        the image for non-uint8 images; uint8 images are then passed through unchanged.
    rgb : bool, optional
        Whether the last axis holds colour channels. ``None`` infers it (a 3D array with
        a last axis of size 3 or 4 is colour), as napari does.

    Returns
    -------
    np.ndarray
        ``uint8`` array of shape ``[H, W, 3]``, C-contiguous, never a view of ``image``.

    Raises
    ------
    ValueError
        For an unsupported shape or dtype, a stack (``rgb=False`` with a 3D array),
        or invalid contrast limits.
    """
    data = np.asarray(image)
    colour = _resolve_layout(data.shape, rgb)
    _check_dtype(data.dtype)
    if colour and data.shape[-1] == 4:
        data = data[..., :3]
    limits = None if contrast_limits is None else _check_limits(contrast_limits)

    if data.dtype == np.bool_:
        mapped = np.where(data, np.uint8(255), np.uint8(0))
    elif data.dtype == np.uint8 and limits is None:
        mapped = data
    else:
        if limits is None:
            limits = _finite_range(data)
        mapped = _linear_map(data, *limits)
    return _as_rgb(mapped)


def _resolve_layout(shape: tuple[int, ...], rgb: bool | None) -> bool:
    """Validate ``shape`` and return whether its last axis holds colour channels."""
    if len(shape) == 2:
        if rgb:
            raise ImageError(
                f"rgb=True but the image has shape {shape}, which has no channel axis; "
                f"{_ACCEPTED}."
            )
        colour = False
    elif len(shape) == 3:
        is_colour_shape = shape[-1] in (3, 4)
        if rgb is False or (rgb is None and not is_colour_shape):
            raise ImageError(
                f"The image has shape {shape}, which is a stack of 2D images, not a "
                f"single image: pass a single 2D slice (for example image[i]); "
                f"{_ACCEPTED}."
            )
        if not is_colour_shape:
            raise ImageError(
                f"rgb=True but the last axis of shape {shape} has size {shape[-1]}, "
                f"not 3 or 4; {_ACCEPTED}."
            )
        colour = True
    else:
        raise ImageError(
            f"Cannot use an image of shape {shape} ({len(shape)} dimensions); "
            f"{_ACCEPTED}. Slice stacks and volumes to one 2D image first."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ImageError(f"The image of shape {shape} is empty; it has no pixels.")
    return colour


def _check_dtype(dtype: np.dtype) -> None:
    """Refuse dtypes that have no meaningful intensity (complex, object, strings)."""
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return
    if np.issubdtype(dtype, np.floating):
        return
    raise ImageError(
        f"Cannot convert an image of dtype {dtype} to intensities; use a boolean, "
        f"integer or real floating point image (for complex data, pass np.abs(image))."
    )


def _check_limits(contrast_limits: tuple[float, float]) -> tuple[float, float]:
    """Validate ``(lo, hi)``: two finite numbers with ``lo <= hi``."""
    try:
        lo, hi = (float(v) for v in contrast_limits)
    except (TypeError, ValueError):
        raise ImageError(
            f"contrast_limits must be two numbers (lo, hi), got {contrast_limits!r}."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError(f"contrast_limits must be finite, got ({lo}, {hi}).")
    if hi < lo:
        raise ImageError(
            f"contrast_limits must satisfy lo <= hi, got ({lo}, {hi}); swap them."
        )
    return lo, hi


def _finite_range(data: np.ndarray) -> tuple[float, float]:
    """Joint minimum and maximum over all channels, ignoring NaN and +/-inf.

    Returns ``(0.0, 0.0)`` when the image has no finite value (the map then gives zeros).
    """
    if np.issubdtype(data.dtype, np.integer):
        return float(data.min()), float(data.max())
    finite = np.isfinite(data)
    if finite.all():
        return float(data.min()), float(data.max())
    if not finite.any():
        return 0.0, 0.0
    values = data[finite]
    return float(values.min()), float(values.max())


def _linear_map(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 255]`` with rounding and clipping.

    Parameters
    ----------
    data : np.ndarray
        ``[H, W]`` or ``[H, W, 3]``, integer or floating point.
    lo, hi : float
        Finite limits with ``lo <= hi``.

    Returns
    -------
    np.ndarray
        ``uint8``, same shape as ``data``. All zeros when ``hi == lo``.
    """
    if hi == lo:
        return np.zeros(data.shape, dtype=np.uint8)
    work = data.astype(np.float64)  # always a copy, safe to modify in place
    np.nan_to_num(work, copy=False, nan=lo, posinf=np.inf, neginf=-np.inf)
    work -= lo
    work *= 255.0
    work /= hi - lo
    np.rint(work, out=work)
    np.clip(work, 0.0, 255.0, out=work)
    return work.astype(np.uint8)


def _as_rgb(mapped: np.ndarray) -> np.ndarray:
    """Return a new C-contiguous ``[H, W, 3]`` uint8 array from ``[H, W]`` or ``[H, W, 3]``."""
    out = np.empty((mapped.shape[0], mapped.shape[1], 3), dtype=np.uint8)
    if mapped.ndim == 2:
        out[...] = mapped[:, :, None]
    else:
        out[...] = mapped
    return out
