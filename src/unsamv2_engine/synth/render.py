"""Image formation: stain maps from the label images, then optics, illumination and detector.

Per modality (docs/synthetic.md, "Modalities"):

* ``fluorescence`` — emitter density = nuclear stain (bright nuclei with band-pass chromatin texture,
  nucleoli darker by ``nucleolus_contrast``) + cytoplasm stain (dim, falling off towards the cell edge)
  + membrane stain (a ribbon along every cell boundary) + weak tissue autofluorescence. Gaussian PSF
  (σ_z = ``psf_z_ratio`` σ_xy in 3D), out-of-focus haze, depth attenuation (3D), photobleaching
  (time-lapse), flat field (vignetting + gradient) and background; Poisson photon noise with the mean
  nucleus at ``peak_snr**2`` photons, Gaussian read noise, gain, camera offset, quantisation to
  ``bit_depth`` bits with saturation, stored as ``uint16``.
* ``brightfield`` — optical thickness h (cells domed, nuclei and nucleoli thicker), transmission
  ``I0 exp(-µ h)`` plus a phase-halo term ``α ∇²(G_σ * h)``, flat field, Poisson noise at high counts,
  ``uint8`` grey.
* ``he`` — hematoxylin (nuclei ≫ cytoplasm, nucleoli denser) and eosin (cytoplasm, stroma with
  oriented fibres) concentrations mapped to RGB with ``skimage.color.hed2rgb`` (Ruifrok-Johnston),
  blurred, flat field, shot noise, ``uint8`` RGB ``[..., 3]``.

All randomness comes from the generators passed in; nothing touches global RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import SynthConfig
from .shapes import interior_distance

__all__ = ["CHANNEL_NAMES", "Illumination", "Intensities", "bandpass_noise", "render_volume", "stroma_fibres"]

CHANNEL_NAMES: tuple[str, ...] = ("nucleus", "cytoplasm", "membrane", "nucleolus")
TISSUE, CLUSTER, CELL, NUCLEUS, NUCLEOLUS = range(5)


@dataclass
class Intensities:
    """Per-object log-normal intensity factors, indexed by global object id (``[max_id + 1]`` each)."""

    nucleus: np.ndarray
    cytoplasm: np.ndarray
    membrane: np.ndarray
    nucleolus: np.ndarray
    thickness: np.ndarray
    hematoxylin: np.ndarray
    eosin: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, max_id: int, sigma: float) -> Intensities:
        n = max_id + 1
        arrays = [rng.lognormal(0.0, sigma, size=n).astype(np.float32) for _ in range(7)]
        return cls(*arrays)


@dataclass
class Illumination:
    """Flat field over the image plane: vignetting around a shifted centre times a linear gradient."""

    centre: np.ndarray
    angle: float
    background_gradient: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Illumination:
        return cls(centre=rng.uniform(-0.3, 0.3, size=2), angle=float(rng.uniform(0, 2 * np.pi)),
                   background_gradient=float(rng.uniform(-1.0, 1.0)))

    def field(self, hw: tuple[int, int], cfg: SynthConfig) -> np.ndarray:
        """Flat field ``[H, W]`` float32, 1 at the optical centre, ``1 - vignetting`` at the far corners."""
        y = np.linspace(-1.0, 1.0, hw[0])[:, None]
        x = np.linspace(-1.0, 1.0, hw[1])[None, :]
        r2 = ((y - self.centre[0]) ** 2 + (x - self.centre[1]) ** 2) / (1.3**2 * 2.0)
        ramp = np.cos(self.angle) * y + np.sin(self.angle) * x
        f = (1.0 - cfg.vignetting * np.clip(r2, 0.0, 1.0)) * (1.0 + cfg.gradient * ramp)
        return np.clip(f, 0.05, None).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def _sigma_px(sigma_um: float, spacing: tuple[float, ...], z_ratio: float = 1.0) -> tuple[float, ...]:
    """Gaussian sigma in pixels per axis (the first axis of a 3D grid is z, scaled by ``z_ratio``)."""
    out = [sigma_um / s for s in spacing]
    if len(spacing) == 3:
        out[0] = sigma_um * z_ratio / spacing[0]
    return tuple(out)


def _blur(x: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    if max(sigma) <= 0.05:
        return x
    return ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=3.0)


def _large_blur(x: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """A wide Gaussian blur computed on a subsampled grid and interpolated back (cheap haze)."""
    f = max(1, int(min(sigma[-2:]) // 3))
    if f == 1:
        return _blur(x, sigma)
    step = tuple(slice(None, None, f) if a >= x.ndim - 2 else slice(None) for a in range(x.ndim))
    small = x[step]
    small_sigma = tuple(s / f if a >= x.ndim - 2 else s for a, s in enumerate(sigma))
    small = ndimage.gaussian_filter(small, small_sigma, mode="nearest", truncate=3.0)
    zoom = [n / m for n, m in zip(x.shape, small.shape)]
    up = ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)
    return up[tuple(slice(0, n) for n in x.shape)]


def bandpass_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                   low_um: float = 0.5, high_um: float = 1.5) -> np.ndarray:
    """Unit-variance band-pass noise (difference of Gaussians σ ``low_um`` - ``high_um``), float32."""
    white = rng.standard_normal(shape).astype(np.float32)
    fine = ndimage.gaussian_filter(white, _sigma_px(low_um, spacing), mode="wrap", truncate=3.0)
    coarse = ndimage.gaussian_filter(white, _sigma_px(high_um, spacing), mode="wrap", truncate=3.0)
    tex = fine - coarse
    return tex / (tex.std() + 1e-6)


def stroma_fibres(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Wavy stroma fibres in [0, ~1]: anisotropically filtered noise at a random orientation, warped
    by a smooth random displacement field (collagen bundles), float32 ``[H, W]``.
    """
    white = rng.standard_normal(shape).astype(np.float32)
    f = ndimage.gaussian_filter(white, (0.5 / spacing[0], 6.0 / spacing[1]), mode="wrap", truncate=3.0)
    angle = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    warp = [ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 25.0 / spacing[0], mode="wrap")
            for _ in range(2)]
    warp = [w * (6.0 / spacing[0]) / (w.std() + 1e-6) for w in warp]
    c, s = np.cos(angle), np.sin(angle)
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    ry = c * (yy - cy) - s * (xx - cx) + cy + warp[0]
    rx = s * (yy - cy) + c * (xx - cx) + cx + warp[1]
    f = ndimage.map_coordinates(f, [ry, rx], order=1, mode="wrap")
    f /= f.std() + 1e-6
    return (np.clip(f, 0.0, None) ** 1.5 / 3.0).astype(np.float32)


def _plane_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return int(shape[-2]), int(shape[-1])


# --------------------------------------------------------------------------- stain maps


def _fluorescence_maps(lab: list[np.ndarray], depth: np.ndarray, tex: np.ndarray, inten: Intensities,
                       cfg: SynthConfig) -> dict[str, np.ndarray]:
    cell, nuc, nol, tissue = lab[CELL], lab[NUCLEUS], lab[NUCLEOLUS], lab[TISSUE]
    in_nuc = nuc > 0
    in_nol = nol > 0
    in_cyto = (cell > 0) & ~in_nuc
    nuclear = np.where(in_nuc, inten.nucleus[nuc] * cfg.nucleus_contrast, 0.0).astype(np.float32)
    nuclear *= 1.0 + cfg.texture_amplitude * np.clip(tex, -2.5, 2.5)
    nuclear[in_nol] *= cfg.nucleolus_contrast
    falloff = 0.55 + 0.45 * np.clip(depth / 2.5, 0.0, 1.0)
    cyto = np.where(in_cyto, inten.cytoplasm[cell] * falloff * (1.0 + 0.1 * tex), 0.0).astype(np.float32)
    membrane = np.where((cell > 0) & (depth < 0.7), 0.9 * inten.membrane[cell], 0.0).astype(np.float32)
    nucleolar = np.where(in_nol, inten.nucleolus[nol] * cfg.nucleus_contrast, 0.0).astype(np.float32)
    auto = (0.15 * (tissue > 0)).astype(np.float32)
    return {"nucleus": nuclear, "cytoplasm": cyto + auto, "membrane": membrane, "nucleolus": nucleolar}


def _detector_uint16(rng: np.random.Generator, photons: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    electrons = rng.poisson(np.clip(photons, 0.0, None)).astype(np.float32)
    electrons += rng.normal(0.0, cfg.read_noise_e, size=photons.shape).astype(np.float32)
    adu = electrons * cfg.adu_per_electron + cfg.camera_offset_adu
    return np.clip(np.rint(adu), 0, 2**cfg.bit_depth - 1).astype(np.uint16)


def _detector_uint8(rng: np.random.Generator, intensity: np.ndarray, full_well: float) -> np.ndarray:
    """Transmitted intensity (1 = white) -> shot noise at ``full_well`` electrons for white -> uint8."""
    electrons = rng.poisson(np.clip(intensity, 0.0, None) * full_well).astype(np.float32)
    electrons += rng.normal(0.0, 0.003 * full_well, size=intensity.shape).astype(np.float32)
    return np.clip(np.rint(electrons * (255.0 / full_well)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- modalities


def render_volume(lab: list[np.ndarray], spacing: tuple[float, ...], modality: str, cfg: SynthConfig, *,
                  inten: Intensities, illum: Illumination, tex: np.ndarray, noise_rng: np.random.Generator,
                  fibres: np.ndarray | None = None, bleach: float = 1.0,
                  stack_axis_is_z: bool = False,
                  depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one 2D image ``[H, W]`` or one 3D stack ``[Z, H, W]`` from its level label images.

    Parameters
    ----------
    lab : label images per level (global ids), all of the same spatial shape.
    spacing : µm per pixel along each axis (``(dz, dy, dx)`` for a stack).
    tex : band-pass texture of the same shape (unit variance).
    fibres : stroma fibre field ``[H, W]`` (``he`` only).
    bleach : photobleaching factor applied to the fluorescence signal.
    stack_axis_is_z : whether axis 0 is z (depth attenuation and anisotropic PSF).
    depth : distance (µm) of each cell pixel to its cell boundary, as computed during rasterisation
        (recomputed when None).

    Returns
    -------
    image : ``uint16 [...]`` (fluorescence), ``uint8 [...]`` (brightfield), ``uint8 [..., 3]`` (he).
    channels : ``uint16 [4, ...]`` stain channels (fluorescence with ``cfg.channels``), else None.
    """
    shape = lab[CELL].shape
    psf = _sigma_px(cfg.blur_um, spacing, cfg.psf_z_ratio)
    haze_sigma = _sigma_px(4.0, spacing, 1.5)
    flat = illum.field(_plane_shape(shape), cfg)
    if depth is None:
        depth = interior_distance(lab[CELL], spacing).astype(np.float32)

    def optics(s: np.ndarray) -> np.ndarray:
        s = _blur(s, psf)
        if cfg.haze > 0:
            s = (1.0 - cfg.haze) * s + cfg.haze * _large_blur(s, haze_sigma)
        return s

    if modality == "fluorescence":
        maps = _fluorescence_maps(lab, depth, tex, inten, cfg)
        atten = 1.0
        if stack_axis_is_z and len(shape) == 3:
            z = np.arange(shape[0], dtype=np.float32) * spacing[0]
            atten = np.exp(-z / cfg.depth_attenuation_um)[:, None, None]
        norm = cfg.peak_snr**2 / cfg.nucleus_contrast
        bg = cfg.background * cfg.nucleus_contrast * (1.0 + 0.3 * illum.background_gradient * (flat - flat.mean()))

        def expose(signal: np.ndarray) -> np.ndarray:
            s = optics(signal) * atten * bleach
            return _detector_uint16(noise_rng, (s + bg) * flat * norm, cfg)

        image = expose(maps["nucleus"] + maps["cytoplasm"] + maps["membrane"])
        channels = None
        if cfg.channels:
            channels = np.stack([expose(maps[name]) for name in CHANNEL_NAMES])
        return image, channels

    if modality == "brightfield":
        cell, nuc, nol, tissue = lab[CELL], lab[NUCLEUS], lab[NUCLEOLUS], lab[TISSUE]
        dome = np.sqrt(np.clip(depth / 3.0, 0.0, 1.0))
        h = 0.3 * (tissue > 0).astype(np.float32)
        h += np.where(cell > 0, 0.9 * inten.thickness[cell] * dome, 0.0).astype(np.float32)
        h += np.where(nuc > 0, 0.35 * cfg.nucleus_contrast * inten.nucleus[nuc] * (1.0 + 0.15 * tex), 0.0
                      ).astype(np.float32)
        h += np.where(nol > 0, 0.6, 0.0).astype(np.float32)
        h = optics(h)
        transmission = 0.82 * np.exp(-0.15 * h)
        s = _sigma_px(1.0, spacing, 1.0)
        plane = tuple(range(len(shape) - 2, len(shape)))
        lap = np.zeros(shape, dtype=np.float32)
        for axis in plane:
            order = [0] * len(shape)
            order[axis] = 2
            lap += ndimage.gaussian_filter(h, s, order=order, mode="nearest", truncate=3.0) / spacing[axis] ** 2
        intensity = flat * (transmission + 0.2 * lap)
        return _detector_uint8(noise_rng, intensity, (4.0 * cfg.peak_snr) ** 2), None

    if modality == "he":
        from skimage.color import hed2rgb

        cell, nuc, nol, tissue = lab[CELL], lab[NUCLEUS], lab[NUCLEOLUS], lab[TISSUE]
        in_nuc = nuc > 0
        in_cyto = (cell > 0) & ~in_nuc
        stroma = (tissue > 0) & (cell == 0)
        h_nuc = 0.04 + 0.025 * cfg.nucleus_contrast
        hema = np.where(in_nuc, h_nuc * inten.hematoxylin[nuc] * (1.0 + cfg.texture_amplitude * np.clip(tex, -2, 2)),
                        0.0).astype(np.float32)
        hema[nol > 0] *= 1.0 + 0.8 * (1.0 - cfg.nucleolus_contrast)
        hema += np.where(in_cyto, 0.012, 0.0).astype(np.float32) + np.where(stroma, 0.006, 0.0).astype(np.float32)
        eos = np.where(in_cyto, 0.055 * inten.eosin[cell] * (1.0 + 0.08 * tex), 0.0).astype(np.float32)
        eos += np.where(in_nuc, 0.015, 0.0).astype(np.float32)
        fib = fibres if fibres is not None else np.zeros(_plane_shape(shape), dtype=np.float32)
        eos += np.where(stroma, 0.016 + 0.035 * fib, 0.0).astype(np.float32)
        hema, eos = optics(hema), optics(eos)
        rgb = hed2rgb(np.stack([hema, eos, np.zeros_like(hema)], axis=-1)).astype(np.float32)
        rgb *= 0.96 * flat[..., None]
        return _detector_uint8(noise_rng, rgb, (4.0 * cfg.peak_snr) ** 2), None

    raise ValueError(f"unknown modality {modality!r}; use fluorescence, brightfield or he")
