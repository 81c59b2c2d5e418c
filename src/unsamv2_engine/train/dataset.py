"""Training samples from a folder of images and a folder of pseudo-label JSONs (docs/model-reference.md §4.2, §5.3).

Pairs: ``<images_dir>/<stem>.{tif,tiff,png,jpg,jpeg}`` with ``<labels_dir>/<stem>.json``. Each JSON is
the pseudo-label layout (a COCO-like dict whose ``annotations`` carry a compressed-RLE
``segmentation`` and a ``granularity``); other fields are ignored, as the authors' loader does.

Rules, as the authors' loader (§4.2):

* a missing, NaN, infinite or non-numeric ``granularity`` becomes 1.0;
* empty masks are skipped; an image left without any mask is skipped with a warning, and so is an
  image whose masks do not have its size or which cannot be read;
* up to ``max_masks`` (30) masks per sample, drawn uniformly without replacement.

A sample is a pure function of ``(seed, epoch, index)`` (mask subset, augmentation), so DDP ranks
and a resumed run see exactly the samples an uninterrupted single-process run sees.

Images go through the same path as at inference: :func:`unsamv2_engine.io.read_image`, the
intensity rule :func:`unsamv2_engine.intensity.to_uint8_rgb` (min..max of each image), then
:func:`unsamv2_engine.preprocess.preprocess_image` (square resize to 1024, ImageNet normalisation).
Masks are resized to the same square with nearest-neighbour sampling.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unsamv2_engine.errors import InputError
from unsamv2_engine.train.augment import AugmentConfig, augment_sample

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "LabelledImage", "PseudoLabelDataset", "TrainSample", "sample_seed"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Independent random streams of one sample (see sample_seed).
STREAM_MASKS, STREAM_AUGMENT, STREAM_CLICKS, STREAM_DROPOUT = 0, 1, 2, 3


def sample_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one sample, independent of process and order."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index), int(stream)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass
class LabelledImage:
    """One usable image: its file, its label file, and its non-empty annotations.

    ``rles``: COCO compressed RLEs ``{"size": [H, W], "counts": str}``; ``granularities``: float32 ``[N]``.
    """

    name: str
    image_path: Path
    label_path: Path
    hw: tuple[int, int]
    rles: list[dict[str, Any]]
    granularities: np.ndarray


@dataclass
class TrainSample:
    """One training sample in the model frame.

    image: float32 ``[3, S, S]`` preprocessed exactly as at inference (None when not asked for);
    masks: bool ``[O, S, S]``, every one non-empty; granularities: float32 ``[O]``;
    index: dataset index; epoch: the epoch it was drawn for; name: image stem.
    """

    image: torch.Tensor | None
    masks: torch.Tensor
    granularities: torch.Tensor
    index: int
    epoch: int
    name: str

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[0])


def parse_granularity(value: Any) -> float:
    """The stored granularity, or 1.0 when it is missing, NaN, infinite or not a number (§4.2)."""
    if isinstance(value, bool):
        return 1.0
    try:
        g = float(value)
    except (TypeError, ValueError):
        return 1.0
    return g if math.isfinite(g) else 1.0


def _image_hw(path: Path) -> tuple[int, int] | None:
    """(H, W) of a 2-D image file without reading its pixels; None for a stack or an unreadable file."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = [s for s in tif.series[0].shape if s != 1] or [1, 1]
            if len(shape) == 3 and shape[-1] in (3, 4):
                shape = shape[:2]
            return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None
        from PIL import Image

        with Image.open(path) as img:
            return int(img.size[1]), int(img.size[0])
    except Exception:  # noqa: BLE001 - any unreadable file is reported by the caller
        return None


def _read_annotations(path: Path, hw: tuple[int, int]) -> tuple[list[dict[str, Any]], np.ndarray, str | None]:
    """Non-empty annotations of one JSON as (rles, granularities), or a reason to skip the image."""
    from pycocotools import mask as mask_utils

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [], np.zeros(0, np.float32), f"cannot read {path.name}: {exc}"
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        return [], np.zeros(0, np.float32), f"{path.name} has no 'annotations' list"
    rles, gs = [], []
    for index, ann in enumerate(anns):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            continue  # polygons and broken entries are not pseudo-label masks
        size = tuple(int(v) for v in seg["size"])
        if size != hw:
            return [], np.zeros(0, np.float32), (f"{path.name} has masks of {size[1]}x{size[0]} pixels but the image "
                                                 f"is {hw[1]}x{hw[0]}")
        counts = seg["counts"]
        try:  # a bad RLE skips the image, naming the file and the annotation (as every other skip reason does)
            if isinstance(counts, list):
                if int(np.sum(counts)) != size[0] * size[1] or min(counts, default=0) < 0:
                    raise ValueError(f"its run lengths add up to {int(np.sum(counts))}, not {size[0]} x {size[1]}")
                area = int(np.sum(counts[1::2]))
            else:
                coded = {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
                area = int(mask_utils.area(coded))
                if not 0 <= area <= size[0] * size[1]:
                    raise ValueError(f"it covers {area} pixels of {size[0]} x {size[1]}")
                mask_utils.decode(coded)  # raises on a cut or garbled string that area() accepts
        except (ValueError, TypeError, UnicodeError) as exc:
            return [], np.zeros(0, np.float32), (f"{path} annotation {index} (id {ann.get('id')}) has an invalid RLE "
                                                 f"mask ({exc}); fix or remove that annotation, or make the "
                                                 "pseudo-labels again")
        if area <= 0:
            continue
        rles.append({"size": list(size), "counts": counts})
        gs.append(parse_granularity(ann.get("granularity")))
    return rles, np.asarray(gs, np.float32), None


def find_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> tuple[list[LabelledImage], list[str]]:
    """Usable (image, JSON) pairs of two folders, sorted by name, and the reasons others were skipped.

    Raises
    ------
    FileNotFoundError / NotADirectoryError
        A folder that does not exist.
    ValueError
        No image in ``images_dir``, or no image with a JSON of the same stem in ``labels_dir``.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, folder in (("images", images_dir), ("pseudo-label", labels_dir)):
        if not folder.exists():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
        if not folder.is_dir():
            raise NotADirectoryError(f"{what} folder {folder} is a file, not a folder")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"no image in {images_dir}: put .tif, .tiff, .png or .jpg files there")
    pairs, skipped, without_json = [], [], []
    for image_path in images:
        label_path = labels_dir / f"{image_path.stem}.json"
        if not label_path.is_file():
            without_json.append(image_path.name)
            continue
        hw = _image_hw(image_path)
        if hw is None:
            skipped.append(f"{image_path.name}: not a readable 2-D image")
            continue
        rles, gs, reason = _read_annotations(label_path, hw)
        if reason is None and not rles:
            reason = f"{label_path.name} has no non-empty mask"
        if reason is not None:
            skipped.append(f"{image_path.name}: {reason}")
            continue
        pairs.append(LabelledImage(image_path.stem, image_path, label_path, hw, rles, gs))
    if without_json and len(without_json) == len(images):
        raise InputError(f"no pseudo-label JSON in {labels_dir} matches an image of {images_dir} (expected "
                         f"<image stem>.json, e.g. {images[0].stem}.json); make them with 'unsamv2 finetune' "
                         f"without --pseudo-labels, or point --pseudo-labels at the right folder")
    if without_json:
        skipped.append(f"{len(without_json)} images without a JSON (e.g. {without_json[0]})")
    if not pairs:
        raise InputError(f"no usable image in {images_dir} with {labels_dir}: " + "; ".join(skipped[:5]))
    return pairs, skipped


class PseudoLabelDataset:
    """Images with their pseudo-labels, as training samples (see the module docstring).

    Parameters
    ----------
    images_dir, labels_dir : path
        The image folder and the folder of ``<stem>.json`` pseudo-label files.
    max_masks : int
        Masks per sample, at most (drawn without replacement each epoch).
    augment : AugmentConfig or None
        Augmentations (None or a config with every probability 0: none).
    seed : int
        Base seed of every random draw.
    image_size : int
        The model's square input size (1024).
    """

    def __init__(self, images_dir: str | os.PathLike, labels_dir: str | os.PathLike, *, max_masks: int = 30,
                 augment: AugmentConfig | None = None, seed: int = 0, image_size: int = 1024) -> None:
        if max_masks < 1:
            raise ValueError(f"max_masks must be at least 1, got {max_masks}")
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        self.items, self.skipped = find_pairs(images_dir, labels_dir)
        for reason in self.skipped:
            log.warning("skipping %s", reason)
        self.max_masks = int(max_masks)
        self.augment = augment if augment is not None and augment.changes_image else None
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    @property
    def num_masks(self) -> int:
        return int(sum(len(item.rles) for item in self.items))

    def set_epoch(self, epoch: int) -> None:
        """The epoch ``dataset[i]`` draws for (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> TrainSample:
        return self.sample(index, self.epoch)

    # ------------------------------------------------------------------ raw data
    def read_image(self, index: int) -> np.ndarray:
        """The uint8 RGB image ``[H, W, 3]`` the model sees (intensity rule, min..max)."""
        from unsamv2_engine.intensity import to_uint8_rgb
        from unsamv2_engine.io import read_image

        item = self.items[index]
        rgb8 = to_uint8_rgb(read_image(item.image_path))
        if rgb8.shape[:2] != item.hw:
            raise ValueError(f"{item.image_path} changed size since the dataset was indexed")
        return rgb8

    def read_masks(self, index: int, which: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bool ``[O, H, W]`` masks (all, or those at positions ``which``) and their float32 ``[O]`` granularities."""
        from unsamv2_engine.io.coco import decode_rle

        item = self.items[index]
        which = range(len(item.rles)) if which is None else which
        h, w = item.hw
        masks = np.zeros((len(which), h, w), bool)
        for row, j in enumerate(which):
            masks[row] = decode_rle(item.rles[j])
        return masks, item.granularities[list(which)].astype(np.float32)

    def pixels(self, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The un-augmented model input ``[1, 3, S, S]`` float32 (what inference feeds the encoder)."""
        from unsamv2_engine.preprocess import preprocess_image

        return preprocess_image(self.read_image(index), self.image_size, device)

    # ------------------------------------------------------------------ samples
    def choose_masks(self, index: int, epoch: int) -> np.ndarray:
        """Positions of the masks drawn for ``(index, epoch)``: up to ``max_masks``, without replacement, sorted."""
        n = len(self.items[index].rles)
        if n <= self.max_masks:
            return np.arange(n)
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index, STREAM_MASKS))
        return np.sort(rng.choice(n, size=self.max_masks, replace=False))

    def sample(self, index: int, epoch: int, *, with_image: bool = True) -> TrainSample:
        """The sample of ``index`` for ``epoch`` (deterministic).

        ``with_image=False`` skips reading and preprocessing the image (its embedding is cached);
        that is only allowed without augmentation, whose draw would move the masks.
        """
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} images")
        if not with_image and self.augment is not None:
            raise ValueError("a sample without its image needs a dataset without augmentation")
        item = self.items[index]
        which = self.choose_masks(index, epoch)
        masks, gs = self.read_masks(index, which)
        rgb8 = self.read_image(index) if with_image else None
        if self.augment is not None:
            rng = np.random.default_rng(sample_seed(self.seed, epoch, index, STREAM_AUGMENT))
            aug_img, aug_masks = augment_sample(rgb8, masks, rng, self.augment)
            if aug_masks.reshape(len(aug_masks), -1).any(axis=1).any():
                rgb8, masks = aug_img, aug_masks
            # else: the draw pushed every object out of the frame; keep the original sample.
        square = self._resize_masks(masks)
        keep = square.flatten(1).any(dim=1)
        if not bool(keep.any()):  # every object smaller than one pixel of the model frame
            keep[int(np.argmax(masks.reshape(len(masks), -1).sum(1)))] = True
            square = self._resize_masks(masks, force_nonempty=True)
        image = None
        if rgb8 is not None:
            from unsamv2_engine.preprocess import preprocess_image

            image = preprocess_image(rgb8, self.image_size)[0]
        return TrainSample(image=image, masks=square[keep], granularities=torch.from_numpy(gs)[keep],
                           index=int(index), epoch=int(epoch), name=item.name)

    def _resize_masks(self, masks: np.ndarray, *, force_nonempty: bool = False) -> torch.Tensor:
        """Bool ``[O, H, W]`` -> bool ``[O, S, S]``, nearest neighbour (area-weighted when ``force_nonempty``)."""
        s = self.image_size
        t = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.float32).unsqueeze(0)
        if force_nonempty:  # a mask smaller than a model pixel: keep the pixels it covers most
            area = F.adaptive_avg_pool2d(t, (s, s))[0]
            peak = area.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
            return area >= peak
        return F.interpolate(t, size=(s, s), mode="nearest-exact")[0] > 0.5

    def describe(self) -> dict[str, Any]:
        """What the training records about its data."""
        return {"images_dir": str(self.images_dir), "labels_dir": str(self.labels_dir), "images": len(self),
                "masks": self.num_masks, "skipped": list(self.skipped), "max_masks": self.max_masks,
                "augment": self.augment.to_dict() if self.augment is not None else None}

