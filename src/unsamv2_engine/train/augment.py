"""Training augmentations for microscopy: flips, 90 degree rotations, a mild affine, intensity jitter.

The geometric transforms are applied identically to the image and to every mask (masks with
nearest-neighbour sampling, so they stay binary); the intensity transforms touch the image only.
Everything happens on the image at its own resolution, before the square resize to the model input,
and every random draw comes from the ``numpy.random.Generator`` passed in, so a sample is a pure
function of its seed (the dataset seeds it from ``(seed, epoch, index)``).

Why these and not the SA-1B recipe of docs/model-reference.md §4.2 (affine 25 deg + shear 20, colour jitter,
random greyscale): microscopy has no canonical orientation, so flips and 90 degree rotations are free
and exact; a strong shear distorts cell shapes the model should learn; colour jitter is replaced by
brightness, contrast and gamma, the variations between microscopy acquisitions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["AugmentConfig", "augment_sample"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (set a probability to 0 to disable one).

    Attributes
    ----------
    hflip, vflip : float
        Probability of a horizontal / vertical flip.
    rot90 : float
        Probability of a rotation by 90, 180 or 270 degrees (chosen uniformly).
    affine : float
        Probability of the mild affine transform below.
    max_rotation_deg : float
        Rotation angle drawn uniformly in ``[-max, max]`` degrees.
    scale_range : tuple of float
        Isotropic zoom factor drawn log-uniformly in ``[lo, hi]``.
    max_translate : float
        Shift drawn uniformly in ``[-max, max]`` times the image height / width.
    intensity : float
        Probability of the intensity jitter below (image only).
    brightness : float
        Additive offset in ``[-b, b]`` on the [0, 1] intensity scale.
    contrast : float
        Multiplicative factor in ``[1 - c, 1 + c]`` around the image mean.
    gamma_range : tuple of float
        Gamma drawn log-uniformly in ``[lo, hi]``; ``out = in ** gamma`` on [0, 1].
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    affine: float = 0.5
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_translate: float = 0.05
    intensity: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.15
    gamma_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90", "affine", "intensity"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augmentation probability {name} must be in [0, 1], got {p}")
        for name in ("scale_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")

    @property
    def geometric(self) -> bool:
        """Whether any transform moves pixels (and so changes the masks)."""
        return max(self.hflip, self.vflip, self.rot90, self.affine) > 0

    @property
    def changes_image(self) -> bool:
        """Whether the model input can differ from the un-augmented image."""
        return self.geometric or self.intensity > 0

    def to_dict(self) -> dict:
        return asdict(self)


def augment_sample(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                   config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random draw of the augmentations to an image and its masks.

    Parameters
    ----------
    image : np.ndarray
        uint8 ``[H, W, 3]``, what the model sees (after the intensity rule).
    masks : np.ndarray
        bool ``[O, H, W]``.
    rng : np.random.Generator
        The only source of randomness; the number of draws does not depend on the data, so the
        same seed gives the same transform for any image.
    config : AugmentConfig

    Returns
    -------
    (np.ndarray, np.ndarray)
        uint8 ``[H', W', 3]`` and bool ``[O, H', W']``, new C-contiguous arrays (``H', W'`` swap
        with an odd 90 degree rotation). Masks may come out empty (an affine shift can push a
        small object out of the frame); the caller drops those.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks {masks.shape} do not match the image {image.shape}")
    # Draw everything first, in a fixed order, so the stream never depends on the data.
    draws = rng.random(5)
    k = int(rng.integers(1, 4))
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    scale = float(np.exp(rng.uniform(*np.log(config.scale_range))))
    shift = rng.uniform(-config.max_translate, config.max_translate, size=2)
    brightness = rng.uniform(-config.brightness, config.brightness)
    contrast = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast)
    gamma = float(np.exp(rng.uniform(*np.log(config.gamma_range))))

    img, msk = image, masks
    if draws[0] < config.hflip:
        img, msk = img[:, ::-1], msk[:, :, ::-1]
    if draws[1] < config.vflip:
        img, msk = img[::-1], msk[:, ::-1]
    if draws[2] < config.rot90:
        img, msk = np.rot90(img, k, axes=(0, 1)), np.rot90(msk, k, axes=(1, 2))
    if draws[3] < config.affine:
        img, msk = _affine(np.ascontiguousarray(img), np.ascontiguousarray(msk), angle, scale, shift)
    if draws[4] < config.intensity:
        img = _intensity(img, brightness, contrast, gamma)
    return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def _affine(image: np.ndarray, masks: np.ndarray, angle_deg: float, scale: float,
            shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle_deg`` and zoom by ``scale`` about the centre, then shift by ``shift * (H, W)``.

    The image is sampled bilinearly with edge replication (no black border, no mirrored objects
    without masks); masks nearest, with 0 outside the frame.
    """
    from scipy import ndimage

    h, w = image.shape[:2]
    theta = np.deg2rad(angle_deg)
    # output (row, col) -> input (row, col): inverse of "rotate then zoom" about the centre.
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / scale
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset_px = shift * np.array([h, w])
    offset = centre - rot @ (centre + offset_px)
    out_img = np.empty_like(image)
    for c in range(3):
        channel = ndimage.affine_transform(image[..., c].astype(np.float32), rot, offset=offset, order=1,
                                           mode="nearest")
        out_img[..., c] = np.clip(np.rint(channel), 0, 255).astype(np.uint8)
    matrix3 = np.eye(3)
    matrix3[1:, 1:] = rot
    offset3 = np.concatenate([[0.0], offset])
    out_masks = ndimage.affine_transform(masks.astype(np.uint8), matrix3, offset=offset3, order=0,
                                         mode="constant", cval=0) > 0
    return out_img, out_masks


def _intensity(image: np.ndarray, brightness: float, contrast: float, gamma: float) -> np.ndarray:
    """Contrast about the mean, brightness offset, then gamma, on the [0, 1] scale; back to uint8."""
    x = image.astype(np.float32) / 255.0
    x = (x - x.mean()) * contrast + x.mean() + brightness
    x = np.clip(x, 0.0, 1.0) ** gamma
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
