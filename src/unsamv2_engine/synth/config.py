"""Generator settings: one frozen dataclass of physical parameters and difficulty knobs.

All lengths are in micrometres (µm); the pixel size converts them to pixels. Three named
presets (``easy``, ``medium``, ``hard``) change only the difficulty knobs (docs/synthetic.md, "Difficulty presets"):
peak SNR, PSF blur, illumination inhomogeneity, cell density and intercellular gap, size
dispersion, inter-level contrast and chromatin texture amplitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unsamv2_engine.errors import InputError

__all__ = ["DIFFICULTIES", "LEVELS", "MODALITIES", "NDIMS", "SynthConfig"]

#: Hierarchy levels, coarse to fine; the level index of an object is its position here.
LEVELS: tuple[str, ...] = ("tissue", "cluster", "cell", "nucleus", "nucleolus")
MODALITIES: tuple[str, ...] = ("fluorescence", "brightfield", "he")
#: ``"2"`` one 2D image, ``"3"`` a Z-stack, ``"t"`` a 2D time-lapse.
NDIMS: tuple[str, ...] = ("2", "3", "t")
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

#: Default spatial shape per ``ndim`` (2D ``[H, W]``, 3D ``[Z, H, W]``, time-lapse ``[T, H, W]``).
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {"2": (512, 512), "3": (32, 256, 256), "t": (10, 256, 256)}

_PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(peak_snr=40.0, blur_um=0.25, vignetting=0.1, gradient=0.05, density=0.5, gap_um=1.0,
                 size_dispersion=0.12, nucleus_contrast=5.0, nucleolus_contrast=0.35, texture_amplitude=0.15,
                 haze=0.05, mean_cluster_size=4.0),
    "medium": dict(),  # the dataclass defaults
    "hard": dict(peak_snr=6.0, blur_um=0.7, vignetting=0.45, gradient=0.2, density=0.85, gap_um=0.0,
                 size_dispersion=0.3, nucleus_contrast=1.8, nucleolus_contrast=0.75, texture_amplitude=0.45,
                 haze=0.2, mean_cluster_size=10.0),
}


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic scene and of image formation (lengths in µm).

    Geometry
    --------
    pixel_size_um : lateral pixel size (µm/px); ``z_step_um`` the 3D slice spacing (µm).
    tissue_mode : ``"blobs"`` (1 to ``max_tissues`` smooth regions covering ~``tissue_fraction`` of the
        field) or ``"full"`` (the whole field is one tissue object, as for a culture well).
    cell_diameter_um : (min, max) of the median cell diameter range; each cell's radius is
        log-normal around a value drawn in this range with log-sd ``size_dispersion``.
    cell_irregularity : amplitude of the Fourier shape terms r(θ) = r0 (1 + Σ a_k cos(kθ + φ_k)), k = 2..5.
    density : target fraction of the tissue covered by cells (before clipping).
    mean_cluster_size : mean of the geometric number of cells seeded per cluster (1 = isolated cells).
    gap_um : intercellular gap removed between touching cells (0 = hard touching boundaries).
    nucleus_scale : (min, max) nucleus diameter as a fraction of the cell's equivalent diameter.
    nucleus_margin_um : nuclei are clipped to the cell interior eroded by this margin.
    nucleolus_diameter_um : (min, max) nucleolus diameter; 1 to ``max_nucleoli`` per nucleus.
    min_size_px / min_size_voxels : objects smaller than this (after clipping) are dropped (2D / 3D).

    Image formation
    ---------------
    peak_snr : signal-to-noise ratio at the brightest structures (photon-limited), 3-50.
    blur_um : Gaussian PSF sigma in the xy plane (µm); ``psf_z_ratio`` times larger along z (3D).
    haze : fraction of an out-of-focus (heavily blurred) copy added to the signal.
    vignetting, gradient : radial falloff (0-1) and linear illumination gradient of the flat field.
    background : background offset relative to the peak signal.
    nucleus_contrast : nuclear over cytoplasmic stain intensity (fluorescence) / optical density.
    nucleolus_contrast : nucleolus over nucleus intensity in the nuclear stain (< 1 = darker nucleoli).
    texture_amplitude : relative amplitude of the band-pass chromatin texture.
    intensity_sigma : log-sd of the per-object log-normal intensities.
    read_noise_e, camera_offset_adu, adu_per_electron, bit_depth : detector model (fluorescence).
    channels : also render the separate stain channels (nucleus, cytoplasm, membrane, nucleolus).

    Time-lapse
    ----------
    motion_um : Brownian step of each cell per frame (µm); ``drift_um`` common drift per frame.
    growth : relative radius growth per frame; ``deform`` random walk of the shape terms per frame.
    bleaching : photobleaching rate per frame (signal × exp(-bleaching · t)).
    """

    pixel_size_um: float = 0.325
    z_step_um: float = 1.0
    tissue_mode: str = "blobs"
    tissue_fraction: float = 0.7
    max_tissues: int = 3
    cell_diameter_um: tuple[float, float] = (11.0, 17.0)
    cell_irregularity: float = 0.06
    size_dispersion: float = 0.2
    density: float = 0.7
    mean_cluster_size: float = 6.0
    gap_um: float = 0.5
    nucleus_scale: tuple[float, float] = (0.45, 0.6)
    nucleus_margin_um: float = 0.6
    nucleolus_diameter_um: tuple[float, float] = (2.0, 3.2)
    max_nucleoli: int = 4
    min_size_px: int = 30
    min_size_voxels: int = 100

    peak_snr: float = 15.0
    blur_um: float = 0.4
    psf_z_ratio: float = 4.0
    haze: float = 0.1
    vignetting: float = 0.25
    gradient: float = 0.1
    background: float = 0.03
    nucleus_contrast: float = 3.0
    nucleolus_contrast: float = 0.55
    texture_amplitude: float = 0.3
    intensity_sigma: float = 0.25
    read_noise_e: float = 3.0
    camera_offset_adu: float = 100.0
    adu_per_electron: float = 2.0
    bit_depth: int = 16
    depth_attenuation_um: float = 60.0
    channels: bool = False

    motion_um: float = 0.4
    drift_um: float = 0.3
    growth: float = 0.01
    deform: float = 0.01
    bleaching: float = 0.02

    def __post_init__(self) -> None:
        if self.tissue_mode not in ("blobs", "full"):
            raise InputError(f"tissue_mode must be 'blobs' or 'full', got {self.tissue_mode!r}")
        for name in ("pixel_size_um", "z_step_um", "peak_snr", "tissue_fraction"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.density <= 1.5:
            raise InputError(f"density must be in (0, 1.5], got {self.density!r}")
        if self.min_size_px < 1 or self.min_size_voxels < 1:
            raise InputError("min_size_px and min_size_voxels must be >= 1")
        if self.bit_depth not in (8, 10, 12, 14, 16):
            raise InputError(f"bit_depth must be 8, 10, 12, 14 or 16, got {self.bit_depth!r}")
        # JSON round trips give lists: keep tuples so equal configs compare (and hash) equal.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def preset(cls, difficulty: str = "medium", **overrides: Any) -> SynthConfig:
        """The named difficulty preset (``easy`` / ``medium`` / ``hard``), with optional overrides."""
        if difficulty not in _PRESETS:
            raise InputError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
        return cls(**{**_PRESETS[difficulty], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown SynthConfig field(s): {', '.join(unknown)}")
        return cls(**dict(data))
