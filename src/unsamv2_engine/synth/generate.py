"""``generate_sample``: one seeded synthetic sample (image + per-level labels + object table).

Randomness: ``SeedSequence(seed).spawn`` gives one independent stream per concern, in the fixed
order of :data:`STREAMS` (new streams are only ever appended, so adding one never reshuffles the
others); every stream is a ``numpy.random.Generator(PCG64(child))``. Global RNG state is never used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import DEFAULT_SHAPES, LEVELS, MODALITIES, NDIMS, SynthConfig
from .render import CHANNEL_NAMES, Illumination, Intensities, bandpass_noise, render_volume, stroma_fibres
from .scene import ObjectRecord, assign_ids, object_records, rasterize, sample_scene
from .stack import simulate_frames

__all__ = ["GENERATOR_VERSION", "STREAMS", "Sample", "generate_sample"]

#: Bumped whenever the same (config, seed) would give different pixels or labels.
GENERATOR_VERSION = "1.0.0"

STREAMS: tuple[str, ...] = ("tissue", "cells", "nuclei", "nucleoli", "dynamics", "intensity", "texture",
                            "illumination", "noise", "fibres")

#: Correlation of the chromatin texture between consecutive frames of a time-lapse.
TEXTURE_FRAME_CORRELATION = 0.9


@dataclass
class Sample:
    """One synthetic sample.

    Attributes
    ----------
    image : the raw image. ``ndim="2"``: ``[H, W]`` uint16 (fluorescence), ``[H, W]`` uint8
        (brightfield) or ``[H, W, 3]`` uint8 RGB (he). ``ndim="3"``: ``[Z, H, W]``.
        ``ndim="t"``: ``[T, H, W]``.
    labels : level name -> instance label image, spatial shape of the image (``[H, W]``,
        ``[Z, H, W]`` or ``[T, H, W]``), uint16 (uint32 beyond 65535 objects); 0 = background; ids
        unique across levels.
    objects : one :class:`ObjectRecord` per object (per object and frame for time-lapse).
    levels : level names, coarse to fine (the level index of an object is its position).
    pixel_size_um : lateral pixel size (µm); ``spacing_um`` the µm per pixel of each spatial axis
        (``(dz, dy, dx)`` for 3D, ``(dy, dx)`` otherwise).
    axes : image axes, e.g. ``"YX"``, ``"YXS"`` (RGB), ``"ZYX"``, ``"TYX"``.
    channels : optional separate stain channels (fluorescence with ``config.channels``):
        uint16 ``[C, ...]`` (``[T, C, H, W]`` for time-lapse), names in ``channel_names``.
    """

    image: np.ndarray
    labels: dict[str, np.ndarray]
    objects: list[ObjectRecord]
    levels: list[str]
    pixel_size_um: float
    seed: int
    modality: str
    ndim: str
    config: SynthConfig
    spacing_um: tuple[float, ...] = ()
    axes: str = ""
    channels: np.ndarray | None = None
    channel_names: tuple[str, ...] = ()
    generator_version: str = GENERATOR_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def parents(self) -> dict[int, int]:
        """Object id -> parent id (0 for a root)."""
        return {o.id: o.parent for o in self.objects}


def _check(seed: int, modality: str, ndim: str, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if ndim not in NDIMS:
        raise ValueError(f"ndim must be one of {', '.join(NDIMS)}, got {ndim!r}")
    if modality == "he" and ndim != "2":
        raise ValueError("modality 'he' (a stained thin section) is 2D only; use ndim='2'")
    out = tuple(int(v) for v in (shape if shape is not None else DEFAULT_SHAPES[ndim]))
    want = 2 if ndim == "2" else 3
    if len(out) != want:
        raise ValueError(f"shape for ndim={ndim!r} must have {want} values, got {out}")
    if min(out[-2:]) < 32 or (ndim != "2" and out[0] < 1):
        raise ValueError(f"shape {out} is too small (at least 32 x 32 pixels per image)")
    return out


def generate_sample(seed: int, *, modality: str = "fluorescence", ndim: str = "2",
                    shape: tuple[int, ...] | None = None, config: SynthConfig | None = None) -> Sample:
    """Generate one synthetic microscopy sample with a 5-level part/whole hierarchy.

    Parameters
    ----------
    seed : non-negative int; the same (seed, modality, ndim, shape, config) always gives the same sample.
    modality : ``"fluorescence"``, ``"brightfield"`` or ``"he"`` (2D only).
    ndim : ``"2"`` (``[H, W]``), ``"3"`` (``[Z, H, W]``, z step ``config.z_step_um``) or ``"t"``
        (``[T, H, W]`` time-lapse).
    shape : image shape; default 512 x 512 (2D), 32 x 256 x 256 (3D), 10 x 256 x 256 (time-lapse).
    config : :class:`SynthConfig`; default the ``medium`` preset.

    Returns
    -------
    Sample
    """
    ndim = str(ndim)
    full_shape = _check(seed, modality, ndim, shape)
    cfg = config if config is not None else SynthConfig()
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    seqs = dict(zip(STREAMS, children))
    rngs = {name: np.random.Generator(np.random.PCG64(s)) for name, s in seqs.items()}
    px = float(cfg.pixel_size_um)

    if ndim == "3":
        spatial, spacing = full_shape, (float(cfg.z_step_um), px, px)
        min_size = cfg.min_size_voxels
    else:
        spatial, spacing = full_shape[-2:], (px, px)
        min_size = cfg.min_size_px
    params = sample_scene(rngs, spatial, spacing, cfg)
    if ndim == "t":
        raws = simulate_frames(params, cfg, rngs["dynamics"], full_shape[0], min_size)
    else:
        raws = [rasterize(params, cfg, min_size)]
    frames, parent, level = assign_ids(raws)

    if ndim == "t":
        objects = [rec for t, lab in enumerate(frames) for rec in object_records(lab, parent, level, frame=t)]
        labels = {name: np.stack([fr[k] for fr in frames]) for k, name in enumerate(LEVELS)}
    else:
        objects = object_records(frames[0], parent, level)
        labels = {name: frames[0][k] for k, name in enumerate(LEVELS)}

    inten = Intensities.draw(rngs["intensity"], max(parent, default=0), cfg.intensity_sigma)
    illum = Illumination.draw(rngs["illumination"])
    tex = bandpass_noise(rngs["texture"], spatial, spacing)
    fibres = stroma_fibres(rngs["fibres"], spatial, spacing) if modality == "he" else None
    if ndim == "t":
        images, chans = [], []
        for t, (lab, raw, noise_seq) in enumerate(zip(frames, raws, seqs["noise"].spawn(len(frames)))):
            if t:
                rho = TEXTURE_FRAME_CORRELATION
                tex = rho * tex + np.sqrt(1 - rho**2) * bandpass_noise(rngs["texture"], spatial, spacing)
            img, ch = render_volume(lab, spacing, modality, cfg, inten=inten, illum=illum, tex=tex,
                                    noise_rng=np.random.Generator(np.random.PCG64(noise_seq)), fibres=fibres,
                                    bleach=float(np.exp(-cfg.bleaching * t)), depth=raw.depth)
            images.append(img)
            chans.append(ch)
        image = np.stack(images)
        channels = np.stack(chans) if chans[0] is not None else None
    else:
        image, channels = render_volume(frames[0], spacing, modality, cfg, inten=inten, illum=illum, tex=tex,
                                        noise_rng=rngs["noise"], fibres=fibres, stack_axis_is_z=ndim == "3",
                                        depth=raws[0].depth)
    axes = {"2": "YX", "3": "ZYX", "t": "TYX"}[ndim] + ("S" if modality == "he" else "")
    return Sample(image=image, labels=labels, objects=objects, levels=list(LEVELS), pixel_size_um=px,
                  seed=int(seed), modality=modality, ndim=ndim, config=cfg, spacing_um=tuple(spacing), axes=axes,
                  channels=channels, channel_names=CHANNEL_NAMES if channels is not None else ())
