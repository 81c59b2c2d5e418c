"""Evaluation datasets: images with ground-truth objects, possibly at several hierarchy levels.

Formats (:func:`load_dataset` detects them):

(a) **Image + label-image pairs.** A folder with ``images/`` and ``labels/`` (or ``masks/``)
    holding files of the same stem, or a flat folder of ``NAME.tif`` + ``NAME_labels.tif``
    (also ``_label``, ``_masks``, ``_mask``). TIFF or PNG. A label image is an integer instance map
    (0 = background); a TIFF stack ``[L, H, W]`` holds L levels (named ``L0``, ``L1``...), ids
    unique per level. One level, no hierarchy unless the stack gives several.
(b) **COCO JSON + image folder.** ``images[].file_name`` relative to ``image_dir`` (default: the
    JSON's folder, then its ``images/`` subfolder). Masks from RLE or polygons. Optional fields per
    annotation: ``level`` / ``level_name`` (str), ``level_index`` (int), ``parent`` / ``parent_id``,
    ``granularity``. Crowd annotations are skipped.
(c) **Synthetic samples** (``unsamv2_engine.synth``): a folder of sample folders (or one sample
    folder), each with ``image_rgb.png`` and/or ``image.tif``, ``labels_<level>.tif`` (ids unique
    across levels) and ``hierarchy.csv`` (columns ``label, level, level_name, parent, area,
    granularity``; parent 0 or empty = none). Every object of every level is a GT object, with its
    level name, level number and parent. Stacks give one item per plane (:func:`load_synthetic_dataset`).

Every :class:`EvalItem` keeps *all* GT objects of its image (the ``level`` mode needs the whole
hierarchy) and a list of *target* object ids, the ones evaluated, after the ``levels``,
``min_area`` and ``max_objects_per_image`` filters (a seeded random subsample, per image).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.errors import InputError

__all__ = [
    "EvalDataset",
    "EvalItem",
    "GTObject",
    "dataset_to_coco",
    "load_coco_dataset",
    "load_dataset",
    "load_pairs_dataset",
    "load_synthetic_dataset",
    "objects_from_label_image",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask")
LABEL_DIRS = ("labels", "masks")
SYNTH_IMAGE_NAMES = ("image_rgb.png", "image.tif", "image.tiff", "image.png")


@dataclass
class GTObject:
    """One ground-truth object.

    Attributes
    ----------
    id : int
        Unique within its image.
    mask : np.ndarray
        bool ``[H, W]``.
    level : str or None
        Level name (``cell``, ``nucleus``...).
    parent : int or None
        Id of the enclosing object.
    level_index : int or None
        Level number, when the dataset has one.
    granularity : float or None
        A granularity stored with the dataset (for reference only).
    """

    id: int
    mask: np.ndarray
    level: str | None = None
    parent: int | None = None
    level_index: int | None = None
    granularity: float | None = None

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass
class EvalItem:
    """One image with its GT objects.

    Attributes
    ----------
    name : str
        Image name (file stem or sample folder name).
    image : np.ndarray
        The image as stored (``[H, W]``, ``[H, W, 3]``...).
    objects : list of GTObject
        All GT objects of the image (every level).
    targets : list of int
        Ids of the objects to evaluate.
    ignore : np.ndarray or None
        bool ``[H, W]`` pixels to ignore (crowd regions), if any.
    source : str or None
        Where it was read from.
    """

    name: str
    image: np.ndarray
    objects: list[GTObject]
    targets: list[int] = field(default_factory=list)
    ignore: np.ndarray | None = None
    source: str | None = None

    def object(self, object_id: int) -> GTObject:
        for obj in self.objects:
            if obj.id == object_id:
                return obj
        raise KeyError(object_id)

    @property
    def target_objects(self) -> list[GTObject]:
        return [self.object(i) for i in self.targets]


class EvalDataset:
    """A lazily loaded sequence of :class:`EvalItem`.

    Parameters
    ----------
    names : sequence of str
        Item names, in order.
    loader : callable
        ``loader(index) -> EvalItem`` with every object of the image; targets are set here.
    levels : sequence of str, optional
        Evaluate only objects of these level names.
    min_area : int
        Evaluate only objects of at least this many pixels.
    max_objects_per_image : int, optional
        Evaluate at most this many objects per image: a random subset, seeded by ``seed`` and the
        item index, kept in id order.
    seed : int
        Subsampling seed.
    kind : str
        Format name (recorded in results).
    """

    def __init__(self, names: Sequence[str], loader: Callable[[int], EvalItem], *, levels: Sequence[str] | None = None,
                 min_area: int = 1, max_objects_per_image: int | None = None, seed: int = 0,
                 kind: str = "custom", root: str | None = None) -> None:
        self.names = list(names)
        self._loader = loader
        self.levels = list(levels) if levels else None
        self.min_area = int(min_area)
        self.max_objects_per_image = max_objects_per_image
        self.seed = int(seed)
        self.kind = kind
        self.root = root

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> EvalItem:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        item = self._loader(index)
        item.targets = self._select(item, index)
        return item

    def __iter__(self) -> Iterator[EvalItem]:
        for i in range(len(self)):
            yield self[i]

    def head(self, n: int) -> EvalDataset:
        """The first ``n`` items, with the same options."""
        names = self.names[:n]
        return EvalDataset(names, self._loader, levels=self.levels, min_area=self.min_area,
                           max_objects_per_image=self.max_objects_per_image, seed=self.seed, kind=self.kind,
                           root=self.root)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root, "n_images": len(self), "levels": self.levels,
                "min_area": self.min_area, "max_objects_per_image": self.max_objects_per_image, "seed": self.seed}

    def _select(self, item: EvalItem, index: int) -> list[int]:
        chosen = [o for o in item.objects if o.area >= self.min_area
                  and (self.levels is None or o.level in self.levels)]
        ids = [o.id for o in chosen]
        n = self.max_objects_per_image
        if n is not None and len(ids) > n:
            rng = np.random.default_rng([self.seed, index])
            keep = set(rng.choice(len(ids), size=n, replace=False).tolist())
            ids = [i for k, i in enumerate(ids) if k in keep]
        return ids


# ============================================================================ helpers
def objects_from_label_image(labels: np.ndarray, *, level: str | None = None, level_index: int | None = None,
                             id_offset: int = 0) -> list[GTObject]:
    """One :class:`GTObject` per nonzero id of an integer ``[H, W]`` label image (ids + ``id_offset``)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"a label image must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise InputError("a label image must hold integer ids")
        labels = labels.astype(np.int64)
    return [GTObject(int(v) + id_offset, labels == v, level=level, level_index=level_index)
            for v in np.unique(labels) if v > 0]


def _read_image(path: Path) -> np.ndarray:
    from unsamv2_engine.io import read_image

    return read_image(path)


def _read_label_levels(path: Path) -> list[np.ndarray]:
    """A label file as a list of 2-D levels (a ``[L, H, W]`` TIFF stack gives L levels)."""
    data = np.asarray(_read_image(path))
    if data.ndim == 2:
        return [data]
    if data.ndim == 3 and path.suffix.lower() in (".tif", ".tiff"):
        return list(data)
    raise InputError(f"{path}: a label image must be 2-D [H, W] (or a TIFF stack [L, H, W]), got shape {data.shape}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_shapes(image: np.ndarray, objects: Sequence[GTObject], where: str) -> None:
    hw = image.shape[:2] if image.ndim == 2 or image.shape[-1] in (3, 4) else image.shape[-2:]
    for obj in objects:
        if obj.mask.shape != tuple(hw):
            raise InputError(f"{where}: object {obj.id} has shape {obj.mask.shape}, the image {tuple(hw)}")


# ============================================================================ (a) pairs
def _pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, labels) triples of a pairs folder."""
    for images_dir_name in ("images", "imgs"):
        images_dir = root / images_dir_name
        for labels_dir_name in LABEL_DIRS:
            labels_dir = root / labels_dir_name
            if images_dir.is_dir() and labels_dir.is_dir():
                labels = {p.stem: p for p in _image_files(labels_dir)}
                for p in list(labels):
                    for suffix in LABEL_SUFFIXES:
                        if p.endswith(suffix):
                            labels.setdefault(p[: -len(suffix)], labels[p])
                out = [(p.stem, p, labels[p.stem]) for p in _image_files(images_dir) if p.stem in labels]
                if not out:
                    raise InputError(f"{images_dir} and {labels_dir} share no file stems")
                return out
    files = _image_files(root)
    stems = {p.stem: p for p in files}
    out = []
    for p in files:
        if any(p.stem.endswith(s) for s in LABEL_SUFFIXES):
            continue
        for suffix in LABEL_SUFFIXES:
            match = stems.get(p.stem + suffix)
            if match is not None:
                out.append((p.stem, p, match))
                break
    if not out:
        raise InputError(f"no image/label pairs in {root}: expected images/ + labels/ with the same file stems, "
                         f"or NAME.tif + NAME_labels.tif")
    return out


def load_pairs_dataset(root: str | os.PathLike, **options: Any) -> EvalDataset:
    """Format (a): image + instance label image pairs (see the module docstring)."""
    root = Path(root)
    pairs = _pairs(root)

    def load(index: int) -> EvalItem:
        name, image_path, labels_path = pairs[index]
        image = _read_image(image_path)
        levels = _read_label_levels(labels_path)
        objects: list[GTObject] = []
        offset = 0
        for k, lab in enumerate(levels):
            level = f"L{k}" if len(levels) > 1 else None
            objs = objects_from_label_image(lab, level=level, level_index=k if len(levels) > 1 else None,
                                            id_offset=offset)
            objects += objs
            offset = max([offset] + [o.id for o in objs])
        _check_shapes(image, objects, str(labels_path))
        return EvalItem(name, image, objects, source=str(image_path))

    return EvalDataset([p[0] for p in pairs], load, kind="pairs", root=str(root), **options)


# ============================================================================ (b) COCO
def _ann_mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        counts = seg["counts"]
        rle = {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def _optional_int(value: Any) -> int | None:
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)


def load_coco_dataset(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                      **options: Any) -> EvalDataset:
    """Format (b): a COCO JSON with its images (see the module docstring)."""
    from unsamv2_engine.io.coco import read_coco

    json_path = Path(json_path)
    doc = read_coco(json_path)
    images = sorted(doc["images"], key=lambda im: im["id"])
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    categories = {c["id"]: c.get("name") for c in doc.get("categories", [])}
    dirs = [Path(image_dir)] if image_dir is not None else [json_path.parent, json_path.parent / "images"]

    def find(file_name: str) -> Path:
        for d in dirs:
            if (d / file_name).is_file():
                return d / file_name
        raise FileNotFoundError(f"image {file_name!r} of {json_path} not found in {', '.join(map(str, dirs))}")

    def load(index: int) -> EvalItem:
        info = images[index]
        path = find(info["file_name"])
        image = _read_image(path)
        h, w = int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1]))
        objects, ignore = [], None
        for ann in by_image.get(info["id"], []):
            mask = _ann_mask(ann, h, w)
            if ann.get("iscrowd", 0):
                ignore = mask if ignore is None else ignore | mask
                continue
            level = ann.get("level_name", ann.get("level"))
            if level is None and len(categories) > 1:
                level = categories.get(ann.get("category_id"))
            level_index = _optional_int(ann.get("level_index", ann.get("level") if isinstance(ann.get("level"), int)
                                                else None))
            parent = _optional_int(ann.get("parent", ann.get("parent_id")))
            g = ann.get("granularity")
            objects.append(GTObject(int(ann["id"]), mask, level=None if level is None else str(level), parent=parent,
                                    level_index=level_index, granularity=None if g is None else float(g)))
        _check_shapes(image, objects, str(json_path))
        return EvalItem(Path(info["file_name"]).stem, image, objects, ignore=ignore, source=str(path))

    return EvalDataset([Path(im["file_name"]).stem for im in images], load, kind="coco", root=str(json_path),
                       **options)


# ============================================================================ (c) synthetic
def _is_sample(folder: Path) -> bool:
    return (folder / "hierarchy.csv").is_file() and any(folder.glob("labels_*.tif*"))


def _read_hierarchy(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _level_sort_key(path: Path) -> tuple[int, Any]:
    key = path.name.split(".")[0][len("labels_"):]
    return (0, int(key)) if re.fullmatch(r"\d+", key) else (1, key)


def _label_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("labels_*.tif*"), key=_level_sort_key)


def _stack_depth(path: Path) -> int | None:
    """Planes of a stacked (3D / time-lapse) label TIFF, None for a 2D one (header only)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = [s for s in tif.series[0].shape if s != 1] if tif.series else []
    return int(shape[0]) if len(shape) == 3 else None


def load_synthetic_dataset(root: str | os.PathLike, *, stack_planes: str = "middle", **options: Any) -> EvalDataset:
    """Format (c): synthetic sample folders (see the module docstring).

    The model image is ``image_rgb.png`` (the generator's SAM input composite) when present, else
    ``image.tif``. Stacked samples (3D, time-lapse: label TIFFs ``[P, H, W]``) give one item per
    plane, named ``SAMPLE/pP``: the middle plane (``stack_planes="middle"``) or all of them
    (``"all"``); the image is plane P of ``image.tif`` and, when ``hierarchy.csv`` has a ``frame``
    column, its rows of frame P.
    """
    if stack_planes not in ("middle", "all"):
        raise InputError(f"stack_planes must be 'middle' or 'all', got {stack_planes!r}")
    root = Path(root)
    samples = [root] if _is_sample(root) else sorted(p for p in root.iterdir() if p.is_dir() and _is_sample(p))
    if not samples:
        raise InputError(f"no synthetic samples (folders with hierarchy.csv and labels_*.tif) in {root}")
    entries: list[tuple[str, Path, int | None]] = []
    for folder in samples:
        depth = _stack_depth(_label_files(folder)[0])
        if depth is None:
            entries.append((folder.name, folder, None))
        else:
            planes = range(depth) if stack_planes == "all" else [depth // 2]
            entries += [(f"{folder.name}/p{p}", folder, p) for p in planes]

    def load(index: int) -> EvalItem:
        _, folder, plane = entries[index]
        names = SYNTH_IMAGE_NAMES if plane is None else ("image.tif", "image.tiff")
        image_path = next((folder / n for n in names if (folder / n).is_file()), None)
        if image_path is None:
            raise FileNotFoundError(f"{folder}: no image ({', '.join(names)})")
        image = _read_image(image_path)
        if plane is not None:
            image = image[plane]
        rows = _read_hierarchy(folder / "hierarchy.csv")
        if plane is not None and rows and "frame" in rows[0]:
            rows = [r for r in rows if _optional_int(r.get("frame")) == plane]
        table = {int(float(r["label"])): r for r in rows}
        objects: list[GTObject] = []
        seen: set[int] = set()
        for label_path in _label_files(folder):
            file_level = label_path.name.split(".")[0][len("labels_"):]
            lab = np.asarray(_read_image(label_path))
            for obj in objects_from_label_image(lab if plane is None else lab[plane]):
                if obj.id in seen:
                    raise InputError(f"{label_path}: label {obj.id} appears on two levels; synthetic ids must be "
                                     "unique across levels")
                seen.add(obj.id)
                row = table.get(obj.id, {})
                obj.level = row.get("level_name") or file_level
                level_index = _optional_int(row.get("level"))
                if level_index is None and re.fullmatch(r"\d+", file_level):
                    level_index = int(file_level)
                obj.level_index = level_index
                parent = _optional_int(row.get("parent"))
                obj.parent = parent if parent is not None and parent > 0 else None
                g = row.get("granularity")
                obj.granularity = float(g) if g not in (None, "") else None
                objects.append(obj)
        _check_shapes(image, objects, str(folder))
        return EvalItem(entries[index][0], image, objects, source=str(image_path))

    return EvalDataset([e[0] for e in entries], load, kind="synthetic", root=str(root), **options)


# ============================================================================ detection
def load_dataset(path: str | os.PathLike, *, image_dir: str | os.PathLike | None = None,
                 **options: Any) -> EvalDataset:
    """Open a dataset in any of the three formats.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.json`` file (COCO), a synthetic sample folder or folder of samples, or a pairs folder.
    image_dir : str or os.PathLike, optional
        COCO only: where the images are.
    **options
        ``levels``, ``min_area``, ``max_objects_per_image``, ``seed`` (:class:`EvalDataset`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_coco_dataset(path, image_dir, **options)
        raise InputError(f"{path}: give a folder of images and label images, a folder of synthetic samples, or a "
                         "COCO .json file")
    if _is_sample(path) or any(p.is_dir() and _is_sample(p) for p in path.iterdir()):
        return load_synthetic_dataset(path, **options)
    return load_pairs_dataset(path, **options)


# ============================================================================ to COCO
def dataset_to_coco(dataset: EvalDataset, *, targets_only: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """The dataset's GT as a class-agnostic COCO dict, for the whole-image AR.

    Image ids are 1-based positions in the dataset; the second return value maps image names
    (and ``file_name``) to them. Each annotation keeps ``level`` and the GT ``object_id``.
    Crowd/ignore regions become ``iscrowd=1`` annotations.
    """
    from unsamv2_engine.io.coco import coco_document, mask_to_annotation

    images, anns, ids = [], [], {}
    ann_id = 1
    for index, item in enumerate(dataset):
        image_id = index + 1
        hw = item.objects[0].mask.shape if item.objects else item.image.shape[:2]
        file_name = Path(item.source).name if item.source and Path(item.source).is_file() else item.name
        images.append({"id": image_id, "file_name": file_name, "height": int(hw[0]), "width": int(hw[1])})
        ids[item.name] = ids[file_name] = image_id
        objs = item.target_objects if targets_only else item.objects
        for obj in objs:
            anns.append(mask_to_annotation(obj.mask, ann_id=ann_id, image_id=image_id, object_id=obj.id,
                                           level=obj.level))
            ann_id += 1
        if item.ignore is not None and item.ignore.any():
            ann = mask_to_annotation(item.ignore, ann_id=ann_id, image_id=image_id)
            ann["iscrowd"] = 1
            anns.append(ann)
            ann_id += 1
    return coco_document(images, anns), ids
