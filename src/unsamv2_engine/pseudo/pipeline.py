"""Divide-and-conquer pseudo-labels for one image or a folder (docs/model-reference.md §5; ``docs/pseudo-labels.md``).

``pseudo_label_image``: image -> divide (MaskCut on backbone patch features, plus the model's
whole-image masks at g = 1 when a model is given; §5.2 instance/part rules) -> conquer per instance
(iterative merging 0.9 -> 0.5, coverage, NMS; §5.3) -> granularity by the sqrt-area rule per
instance hierarchy (§5.5) -> COCO annotations (§5.4).

``pseudo_label_folder``: every image of a folder -> ``<out_dir>/<image stem>.json`` (+ an overlay
PNG in ``<out_dir>/overlays/``), resumable, written atomically, per-image failures recorded.

Bounded memory: an image whose long side exceeds ``settings.max_side`` is downscaled (area
filter) to that size for both stages, so every intermediate mask is at most ``max_side^2`` bytes;
only the final masks are scaled back (nearest neighbour) to full resolution, one at a time, when
they are RLE-encoded. The JSON always describes the full-resolution image.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unsamv2_engine.errors import InputError
from unsamv2_engine.granularity_scores import sqrt_area_granularity
from unsamv2_engine.io.coco import CATEGORIES, mask_to_annotation
from unsamv2_engine.pseudo.backbones import Backbone, make_backbone
from unsamv2_engine.pseudo.conquer import conquer_instance, resize_rgb
from unsamv2_engine.pseudo.divide import maskcut, model_masks, split_instances
from unsamv2_engine.pseudo.merging import upsample_mask
from unsamv2_engine.pseudo.pixel import NothingToLabel

if TYPE_CHECKING:
    from unsamv2_engine.model.build import UnSAMv2Model

__all__ = ["IMAGE_SUFFIXES", "NothingToLabelWarning", "PseudoLabelSettings", "PseudoLabelSummary",
           "SettingsMismatchError", "existing_state", "folder_info", "image_id_for", "label_file",
           "pseudo_label_document", "pseudo_label_folder", "pseudo_label_image"]

#: Files a folder run reads (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
REFINEMENT_NOTE = "no CascadePSP refinement (its weights are not available to this engine)"
PIXEL_REFINEMENT_NOTE = ("no CascadePSP (no weights); MaskCut and model masks snapped to SLIC superpixels, "
                         "classical proposals and superpixel parts are pixel-accurate")


@dataclass(frozen=True)
class PseudoLabelSettings:
    """Every threshold of the pipeline; defaults are the authors' values (§5.1-5.3) where they exist.

    Bounded memory: ``max_side`` (px) -- a larger image is downscaled to this long side for divide and
    conquer; masks are scaled back to full resolution when written.
    ``proposals``: ``"pixel"`` (default) the pixel-accurate pipeline of :mod:`.pixel` (classical
    instance proposals + MaskCut and model masks snapped to superpixels, superpixel conquer);
    ``"maskcut"`` the patch-grid pipeline (MaskCut instances, patch merging), kept for comparison.
    Pixel pipeline only: ``superpixel_size`` (px per SLIC superpixel), ``min_instance_area`` (px,
    replaces the 5 % ``min_instance_fraction`` of natural images: a cell is 0.5 % of a microscopy
    image), ``maskcut_instances`` normalized cuts added to the classical proposals (None: none with the
    weight-free ``classical`` backbone, whose cuts matched few objects and lowered the precision on
    real nuclei, 3 with the ``sam2`` and ``dino`` backbones; :meth:`maskcut_cuts`), ``contrast_k``
    (noise standard errors a mask must stand out from its surroundings by) and ``inner_contrast``
    (how clearly an inner part stands out in its container, see :func:`.classical.classical_proposals`;
    ``inner_ring`` px: also against the band of the container that wide around the part, 0: off),
    ``conquer_contrast`` (how clearly a merged superpixel part stands out in its instance),
    ``solid_instance`` (an instance at least this solid, area / convex-hull area, is one object: its
    divide parts are kept only when they stand out in it by ``conquer_contrast``, like its merged parts;
    above 1: off), ``speck_area`` and ``speck_fraction`` (a part of fewer than ``speck_area`` px and less
    than ``speck_fraction`` of the smallest mask of its tree holding it is a texture speck, e.g. a
    chromatin spot, and is dropped; ``speck_area=0``: off), ``nucleoli`` (opt-in: search nested spots,
    nucleoli, in the solid masks of every tree, :mod:`.spots`; ``"auto"`` takes the spot polarity from
    the image polarity, ``"bright"``/``"dark"`` force it, ``"off"`` the default), ``nucleolus_radius``
    (px) and ``nucleolus_contrast`` (|Δmean| / std of the band around the spot).
    Divide: ``divide_size`` (px) long side of the image given to the backbone for the normalized
    cuts (MaskCut's 480); ``max_instances`` cuts per image; ``affinity_tau`` cosine threshold of the
    affinity graph; ``min_instance_patches`` smallest cut kept; ``contain_thresh`` (0.8) and
    ``min_instance_fraction`` (0.05) the §5.2 rules; ``duplicate_iou`` proposals this similar to an
    earlier one are dropped; ``model_granularity`` (1.0), ``model_preset`` (None: ``authors`` on CUDA,
    ``cpu`` elsewhere) and ``model_points_per_side`` (None: the preset's) for the model's own masks.
    Conquer: ``local_size`` (768) long side of an instance crop; ``thetas`` merging thresholds;
    ``min_size`` (4) smallest cluster in patches; ``coverage_thresh`` (0.9); ``min_part_area`` (16, ours)
    smallest merged part in pixels of the (possibly downscaled) image; ``nms_iou`` (0.8) and
    ``nms_step`` (5) of the windowed NMS.
    """

    max_side: int = 1024
    proposals: str = "pixel"
    divide_size: int = 480
    max_instances: int = 8
    affinity_tau: float = 0.15
    min_instance_patches: int = 4
    contain_thresh: float = 0.8
    min_instance_fraction: float = 0.05
    duplicate_iou: float = 0.9
    model_granularity: float = 1.0
    model_preset: str | None = None
    model_points_per_side: int | None = None
    local_size: int = 768
    thetas: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    min_size: int = 4
    coverage_thresh: float = 0.9
    min_part_area: int = 16
    nms_iou: float = 0.8
    nms_step: int = 5
    superpixel_size: float = 30.0
    min_instance_area: int = 64
    maskcut_instances: int | None = None
    contrast_k: float = 4.0
    inner_contrast: float = 3.0
    inner_ring: int = 4
    conquer_contrast: float = 3.0
    solid_instance: float = 0.9
    speck_area: int = 150
    speck_fraction: float = 0.08
    nucleoli: str = "off"
    nucleolus_radius: float = 2.5
    nucleolus_contrast: float = 1.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "thetas", tuple(float(t) for t in self.thetas))
        self.validate()

    def with_(self, **changes: Any) -> PseudoLabelSettings:
        """A copy with the non-None ``changes`` applied (validated)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def maskcut_cuts(self, backbone_name: str) -> int:
        """Normalized cuts the pixel pipeline adds for a backbone: ``maskcut_instances``, or when it is None,
        0 for ``"classical"`` and 3 for the others.
        """
        if self.maskcut_instances is not None:
            return int(self.maskcut_instances)
        return 0 if backbone_name == "classical" else 3

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.proposals not in ("pixel", "maskcut"):
            raise ValueError(f"proposals must be 'pixel' or 'maskcut', got {self.proposals!r}")
        if self.superpixel_size < 4:
            raise ValueError(f"superpixel_size must be at least 4 pixels, got {self.superpixel_size}")
        for name in ("min_instance_area", "maskcut_instances", "inner_ring"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.nucleoli not in ("off", "auto", "bright", "dark"):
            raise ValueError(f"nucleoli must be off, auto, bright or dark, got {self.nucleoli!r}")
        if self.nucleolus_radius <= 0:
            raise ValueError(f"nucleolus_radius must be > 0 pixels, got {self.nucleolus_radius}")
        if not 0.0 <= self.speck_fraction <= 1.0:
            raise ValueError(f"speck_fraction must be in [0, 1], got {self.speck_fraction}")
        for name in ("contrast_k", "inner_contrast", "conquer_contrast", "solid_instance", "speck_area",
                     "nucleolus_contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_side", "divide_size", "local_size"):
            if getattr(self, name) < 32:
                raise InputError(f"{name} must be at least 32 pixels, got {getattr(self, name)}")
        if self.min_part_area < 0:
            raise InputError(f"min_part_area must be >= 0 pixels, got {self.min_part_area}")
        for name in ("max_instances", "min_instance_patches", "min_size", "nms_step"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("contain_thresh", "min_instance_fraction", "duplicate_iou", "coverage_thresh", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1.0 <= self.affinity_tau < 1.0:
            raise InputError(f"affinity_tau must be in [-1, 1), got {self.affinity_tau}")
        if not self.thetas or any(not -1.0 <= t <= 1.0 for t in self.thetas):
            raise InputError(f"thetas must be cosine thresholds in [-1, 1], e.g. 0.9,0.8,0.7,0.6,0.5; "
                             f"got {self.thetas}")
        if self.model_points_per_side is not None and self.model_points_per_side < 1:
            raise InputError(f"model_points_per_side must be at least 1, got {self.model_points_per_side}")
        if self.model_preset not in (None, "authors", "cpu"):
            raise InputError(f"model_preset must be authors, cpu or None, got {self.model_preset!r}")
        if not 0.1 <= self.model_granularity <= 1.0:
            raise InputError(f"model_granularity must be in [0.1, 1], got {self.model_granularity}")


@dataclass
class PseudoLabelSummary:
    """What a folder run did: image names done now, skipped (JSON already there), failed (name -> reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_masks: int = 0
    empty: dict[str, str] = field(default_factory=dict)  # name -> why it got no masks (blank, constant, noise)
    cancelled: bool = False
    out_dir: str = ""

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)


# ============================================================================ one image
def _work_image(rgb: np.ndarray, max_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    return resize_rgb(rgb, (max(1, round(h * scale)), max(1, round(w * scale))))


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    from unsamv2_engine.intensity import to_uint8_rgb

    arr = np.asarray(image)
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(f"pseudo-labels need one 2D image; got a stack of shape {tuple(arr.shape)} "
                         "(save its planes as separate files)")
    rgb = to_uint8_rgb(arr)
    if min(rgb.shape[:2]) < 16:
        raise InputError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small for pseudo-labels "
                         "(at least 16 x 16)")
    return rgb


def divide_proposals(rgb: np.ndarray, backbone: Backbone, *, model: UnSAMv2Model | None = None,
                     settings: PseudoLabelSettings | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Proposals of the divide stage at the resolution of ``rgb`` (uint8 ``[H, W, 3]``): masks and their sources."""
    s = settings or PseudoLabelSettings()
    h, w = rgb.shape[:2]
    scale = s.divide_size / max(h, w)
    small = resize_rgb(rgb, (max(2, round(h * scale)), max(2, round(w * scale))))
    feats = backbone.features(small)
    cuts = maskcut(feats, n_instances=s.max_instances, tau=s.affinity_tau, min_patches=s.min_instance_patches)
    masks = [upsample_mask(c, (h, w)) for c in cuts]
    sources = ["maskcut"] * len(masks)
    if model is not None:
        found = model_masks(model, rgb, granularity=s.model_granularity, preset=s.model_preset,
                            points_per_side=s.model_points_per_side)
        masks += found
        sources += ["model"] * len(found)
    return masks, sources


def pseudo_label_image(image: np.ndarray, backbone: Backbone, *, model: UnSAMv2Model | None = None,
                       settings: PseudoLabelSettings | None = None, image_id: int = 0,
                       first_id: int = 1) -> list[dict[str, Any]]:
    """Pseudo-label annotations of one 2D image (§5.4 layout), parts of each instance then the instance.

    Parameters
    ----------
    image
        ``[H, W]``, ``[H, W, 3|4]`` any dtype (mapped to uint8 RGB by
        :func:`~unsamv2_engine.intensity.to_uint8_rgb`).
    backbone
        patch features for both stages (see :func:`~unsamv2_engine.pseudo.backbones.make_backbone`).
    model
        a loaded model: its whole-image masks at ``settings.model_granularity`` join the proposals.
    image_id, first_id
        ``image_id`` of every annotation; ids count up from ``first_id``.

    Returns
    -------
        COCO annotations with ``segmentation`` (compressed RLE at full resolution), ``area``, ``bbox``,
        ``width``, ``height``, ``is_divide``, ``granularity``, ``instance_id``, ``is_part``, ``is_conquer``.
    """
    s = settings or PseudoLabelSettings()
    s.validate()
    rgb = _as_rgb8(image)
    full_h, full_w = rgb.shape[:2]
    work = _work_image(rgb, s.max_side)
    try:
        trees = _hierarchies(work, backbone, model, s)
    except NothingToLabel as exc:
        warnings.warn(f"no pseudo-labels: {exc}", NothingToLabelWarning, stacklevel=2)
        return []
    annotations: list[dict[str, Any]] = []
    next_id = int(first_id)
    for instance_id, (instance_mask, parts) in enumerate(trees):
        hierarchy = [m for m, _ in parts] + [instance_mask]
        flags = [c for _, c in parts] + [False]
        if work.shape[:2] != (full_h, full_w):
            hierarchy = [upsample_mask(m, (full_h, full_w)) for m in hierarchy]
        areas = [int(np.count_nonzero(m)) for m in hierarchy]
        granularity = sqrt_area_granularity(areas)
        last = len(hierarchy) - 1
        for k, (mask, conquer) in enumerate(zip(hierarchy, flags)):
            if areas[k] == 0:
                continue
            annotations.append(mask_to_annotation(
                mask, ann_id=next_id, image_id=image_id, width=full_w, height=full_h, is_divide=k == last,
                granularity=float(granularity[k]), instance_id=instance_id, is_part=k != last,
                is_conquer=bool(conquer)))
            next_id += 1
    return annotations


class NothingToLabelWarning(UserWarning):
    """Warned when an image is blank, constant or pure noise and gets no pseudo-labels."""


def _hierarchies(work: np.ndarray, backbone: Backbone, model: UnSAMv2Model | None, s: PseudoLabelSettings
                 ) -> list[tuple[np.ndarray, list[tuple[np.ndarray, bool]]]]:
    """``[(instance mask, [(part mask, is_conquer), ...]), ...]`` of the working image, by ``s.proposals``.

    Raises NothingToLabel for a blank, constant or pure-noise image (both pipelines).
    """
    from unsamv2_engine.pseudo.classical import object_channel, signal_check
    from unsamv2_engine.pseudo.pixel import pixel_hierarchies

    if s.proposals == "pixel":
        return [(t.instance, t.parts) for t in pixel_hierarchies(work, backbone, s, model=model)]
    report = signal_check(object_channel(work)[0])
    if not report.ok:
        raise NothingToLabel(report.reason)
    masks, sources = divide_proposals(work, backbone, model=model, settings=s)
    instances = split_instances(masks, sources=sources, contain_thresh=s.contain_thresh,
                                min_instance_fraction=s.min_instance_fraction, duplicate_iou=s.duplicate_iou)
    out = []
    for inst in instances:
        parts = conquer_instance(work, inst.mask, backbone, divide_parts=inst.parts, local_size=s.local_size,
                                 thetas=s.thetas, min_size=s.min_size, coverage_thresh=s.coverage_thresh,
                                 nms_iou=s.nms_iou, nms_step=s.nms_step, min_part_area=s.min_part_area)
        out.append((inst.mask, [(p.mask, p.is_conquer) for p in parts]))
    return out


def image_id_for(name: str) -> int:
    """Stable image id from a file name: the number of ``sa_<id>`` / ``<digits>`` stems, else a CRC32 of the name."""
    stem = Path(name).stem
    match = re.fullmatch(r"(?:sa_)?(\d{1,15})", stem)
    if match:
        return int(match.group(1))
    return zlib.crc32(Path(name).name.encode("utf-8")) & 0x7FFFFFFF


def pseudo_label_document(annotations: Sequence[dict[str, Any]], *, file_name: str, width: int, height: int,
                          image_id: int, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The §5.4 JSON document of one image: info, licenses, categories, a single ``image`` dict, annotations."""
    return {"info": dict(info or {}), "licenses": [], "categories": [dict(c) for c in CATEGORIES],
            "image": {"id": int(image_id), "file_name": file_name, "width": int(width), "height": int(height)},
            "annotations": [dict(a) for a in annotations]}


# ============================================================================ folder
def _list_images(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        raise NotADirectoryError(20, "Not a folder of images", str(images_dir))
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise InputError(f"{stems[p.stem].name} and {p.name} would both write {p.stem}.json; rename one of them")
        stems[p.stem] = p
    return files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _engine_version() -> str:
    from unsamv2_engine import __version__

    return __version__


def recipe_of(info: dict[str, Any]) -> dict[str, Any]:
    """The part of a JSON ``info`` that decides the masks: backbone, model, proposals, settings."""
    return {k: info.get(k) for k in ("backbone", "model", "proposals", "settings")}


def existing_state(target: Path, info: dict[str, Any]) -> str:
    """``"missing"``, ``"unreadable"`` (truncated, not JSON, not a pseudo-label file), ``"other-settings"``
    (made with another backbone, model or settings) or ``"done"`` (made with these).
    """
    if not target.exists():
        return "missing"
    try:
        document = json.loads(target.read_text(encoding="utf-8"))
        old = document["info"]
        if not isinstance(document["annotations"], list) or not isinstance(old, dict):
            return "unreadable"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"
    return "done" if recipe_of(old) == recipe_of(json.loads(json.dumps(info))) else "other-settings"


class SettingsMismatchError(ValueError):
    """The output folder holds pseudo-labels made with other settings (re-run with ``overwrite=True``)."""


def pseudo_label_folder(images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        model: UnSAMv2Model | None = None, backbone: str | None = None,
                        dino_weights: str | os.PathLike | None = None,
                        settings: PseudoLabelSettings | None = None, overlays: bool = True,
                        progress: Callable[[int, int, str], None] | None = None,
                        cancel: threading.Event | None = None, overwrite: bool = False) -> PseudoLabelSummary:
    """Pseudo-label every image of ``images_dir`` (``.tif .tiff .png .jpg .jpeg .bmp``, sorted by name).

    Writes ``<out_dir>/<image stem>.json`` (§5.4) and, with ``overlays``, ``<out_dir>/overlays/<stem>.png``,
    each atomically (temporary file + rename), so an interrupted run never leaves a partial file. An
    image whose JSON exists and was made with the same backbone, model, proposals and settings
    (recorded in its ``info``) is skipped (the run resumes); a truncated or unreadable JSON is re-done.
    JSONs made with other settings are refused (:class:`SettingsMismatchError`, before any work)
    unless ``overwrite``, which re-does them. An image that cannot be read or used
    (corrupt file, a stack, too small) is recorded in ``failed`` with the reason and the run goes on.
    ``backbone=None`` is ``"sam2"`` with a model, else ``"classical"``. ``progress(done, total, name)``
    is called after each image; ``cancel`` is checked before each image (the summary then has
    ``cancelled=True``).

    Raises
    ------
        NotADirectoryError / FileNotFoundError: ``images_dir`` is not a folder.
        ValueError: no images in it, two images with the same stem, or a bad backbone/setting.
        SettingsMismatchError: some JSONs were made with other settings and ``overwrite`` is False.
    """
    src = Path(images_dir)
    files = _list_images(src)
    if not files:
        nested = sorted({f.parent for f in src.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES})
        hint = (f"; subfolders are not searched, and {len(nested)} hold images (e.g. {nested[0]}): give such a "
                "folder" if nested else "")
        raise InputError(f"no images in {src} (looked for {' '.join(IMAGE_SUFFIXES)} directly in it){hint}")
    s = settings or PseudoLabelSettings()
    s.validate()
    device = model.device if model is not None else "cpu"
    feature_backbone = make_backbone(backbone, model=model, dino_weights=dino_weights, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    info = folder_info(feature_backbone, model, s)
    states = {p.name: existing_state(out / f"{p.stem}.json", info) for p in files}
    stale = [name for name, state in states.items() if state == "other-settings"]
    if stale and not overwrite:
        raise SettingsMismatchError(
            f"{len(stale)} pseudo-label file(s) in {out} were made with other settings (e.g. "
            f"{Path(stale[0]).stem}.json); use another output folder, or overwrite them (--overwrite)")
    summary = PseudoLabelSummary(out_dir=str(out))
    total = len(files)
    for index, path in enumerate(files):
        if cancel is not None and cancel.is_set():
            summary.cancelled = True
            break
        target = out / f"{path.stem}.json"
        if states[path.name] == "done":
            summary.skipped.append(path.name)
        else:
            try:
                n, empty_reason = label_file(path, target, feature_backbone, model, s, info, overlays)
            except (OSError, ValueError, MemoryError) as exc:
                summary.failed[path.name] = _reason(exc)
            else:
                summary.done.append(path.name)
                summary.n_masks += n
                if empty_reason:
                    summary.empty[path.name] = empty_reason
        if progress is not None:
            progress(index + 1, total, path.name)
    return summary


def folder_info(backbone: Backbone, model: UnSAMv2Model | None, settings: PseudoLabelSettings) -> dict[str, Any]:
    """The ``info`` every JSON of a run records; :func:`recipe_of` it decides whether a JSON can be reused."""
    s = settings
    return {"description": "UnSAMv2 divide-and-conquer pseudo-labels (napari-unsamv2)",
            "engine_version": _engine_version(), "backbone": backbone.name,
            "backbone_patch_size": int(backbone.patch_size),
            "model": model.info.label if model is not None else None,
            "proposals": _proposals_name(s, model, backbone.name),
            "refinement": REFINEMENT_NOTE if s.proposals == "maskcut" else PIXEL_REFINEMENT_NOTE,
            "settings": {**asdict(s), "thetas": list(s.thetas)}}


def _proposals_name(s: PseudoLabelSettings, model: UnSAMv2Model | None, backbone_name: str) -> str:
    if s.proposals == "pixel":
        base = "classical+maskcut" if s.maskcut_cuts(backbone_name) > 0 else "classical"
    else:
        base = "maskcut"
    return base + (f"+model@g={s.model_granularity:g}" if model is not None else "")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


def label_file(path: Path, target: Path, backbone: Backbone, model: UnSAMv2Model | None,
               settings: PseudoLabelSettings, info: dict[str, Any], overlays: bool) -> tuple[int, str]:
    """Label one image file into ``target`` (``<out>/<stem>.json``; with ``overlays`` also
    ``<out>/overlays/<stem>.png``, whose folder must exist), both written atomically.

    Returns (number of masks, why there are none or ""). ``info``: :func:`folder_info`.
    """
    from unsamv2_engine.io import read_image

    image = read_image(path)
    rgb = _as_rgb8(image)
    image_id = image_id_for(path.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NothingToLabelWarning)
        annotations = pseudo_label_image(rgb, backbone, model=model, settings=settings, image_id=image_id)
    empty = next((str(w.message) for w in caught if issubclass(w.category, NothingToLabelWarning)), "")
    document = pseudo_label_document(annotations, file_name=path.name, width=rgb.shape[1], height=rgb.shape[0],
                                     image_id=image_id, info={**info, "source_dtype": str(image.dtype)})
    if overlays:
        from unsamv2_engine.pseudo.overlay import overlay_png_bytes

        _atomic_write_bytes(target.parent / "overlays" / f"{path.stem}.png", overlay_png_bytes(rgb, annotations))
    _atomic_write_bytes(target, json.dumps(document, separators=(",", ":")).encode("utf-8"))
    return len(annotations), empty
