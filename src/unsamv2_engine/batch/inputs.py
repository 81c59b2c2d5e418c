"""Batch inputs: a folder or a glob -> image paths -> one :class:`BatchItem` (input + output paths) per image.

A *batch input* is a folder that is not itself a zarr image, or a glob pattern (``'cells/*.tif'``,
``'plates/**/*.png'``; quote it so that the shell does not expand it). A folder is not searched
recursively; hidden files (names starting with ``.``, e.g. partial outputs) are never inputs.
Outputs are ``<folder><sep><image stem><suffix>``: the stem drops the image suffix and an ``.ome``
before it (``a.ome.tif`` and ``a.ome.zarr`` -> ``a``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unsamv2_engine.errors import InputError, OutputError

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_NAME", "BatchItem", "image_stem", "is_batch_input", "is_zarr_image",
           "list_inputs", "plan_items"]

#: Image files a batch reads (case-insensitive), as ``unsamv2 pseudo-label`` always has.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: The manifest's file name in the output folder.
MANIFEST_NAME = "manifest.json"
_GLOB_CHARS = "*?["
_ZARR_MARKERS = (".zgroup", ".zarray", ".zattrs", "zarr.json")


def is_zarr_image(path: str | os.PathLike[str]) -> bool:
    """A folder that is one (OME-)zarr image: named ``*.zarr`` or holding zarr metadata files."""
    p = Path(path)
    return p.is_dir() and (p.name.lower().endswith(".zarr") or any((p / m).exists() for m in _ZARR_MARKERS))


def is_batch_input(text: str | os.PathLike[str]) -> bool:
    """True for a folder of images (not a zarr image) or a glob pattern that names no existing file."""
    p = Path(text)
    if p.is_dir():
        return not is_zarr_image(p)
    return not p.exists() and any(c in os.fspath(text) for c in _GLOB_CHARS)


def image_stem(path: str | os.PathLike[str]) -> str:
    """``cells/a.png`` -> ``a``; ``a.ome.tif`` / ``a.ome.zarr`` / ``a.zarr`` -> ``a``."""
    name = Path(path).name.rstrip("/")
    lower = name.lower()
    for suffix in (".zarr", *IMAGE_SUFFIXES):
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
            break
    if lower.endswith(".ome"):
        name = name[:-4]
    return name


def _usable(path: Path, zarr: bool) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path.suffix.lower() in IMAGE_SUFFIXES
    return zarr and is_zarr_image(path)


def list_inputs(text: str | os.PathLike[str], *, zarr: bool = True) -> list[Path]:
    """The images of a folder or a glob, sorted by path.

    Args:
        text: a folder (its direct children) or a glob pattern (``**`` recurses).
        zarr: also take zarr image folders (commands that read images lazily: auto, hierarchy, embed).

    Raises
    ------
        InputError: nothing usable matched (the message says what was looked for, and where images are
            when they sit in subfolders of the folder given).
    """
    src = Path(text)
    kinds = " ".join(IMAGE_SUFFIXES) + (" and *.zarr folders" if zarr else "")
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if _usable(p, zarr))
        if not found:
            nested = sorted({f.parent for f in src.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES})
            hint = (f"; subfolders are not searched and {len(nested)} hold images (e.g. {nested[0]}): give such a "
                    f"folder, or a glob such as '{src / '**' / '*.tif'}'" if nested else "")
            raise InputError(f"no images in {src} (looked for {kinds} directly in it){hint}")
        return found
    matches = sorted(Path(m) for m in glob.glob(os.fspath(text), recursive=True))
    found = [p for p in matches if _usable(p, zarr)]
    if not found:
        extra = f" ({len(matches)} matches, none an image: {kinds})" if matches else ""
        raise InputError(f"no images match {os.fspath(text)!r}{extra}; check the pattern (quote it so that the "
                         "shell does not expand it)")
    return found


def _inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real != top and real.startswith(top.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class BatchItem:
    """One work unit: an input image and the output paths of a single-image run on it.

    ``outputs``: the command's option name (argparse dest, e.g. ``"output"``, ``"json"``) -> path.
    """

    input: str
    stem: str
    outputs: Mapping[str, str] = field(default_factory=dict)


def plan_items(inputs: Sequence[Path], targets: Mapping[str, tuple[str | os.PathLike[str], str]]) -> list[BatchItem]:
    """One :class:`BatchItem` per input, with ``targets`` = dest -> (folder, suffix).

    Raises
    ------
        InputError: two inputs share a stem (they would write the same outputs).
        OutputError: an output would replace an input image or a manifest.
    """
    by_stem: dict[str, Path] = {}
    for p in inputs:
        stem = image_stem(p)
        if stem in by_stem:
            raise InputError(f"{by_stem[stem]} and {p} would both write {stem}.*; rename one of them or narrow the "
                             "glob")
        by_stem[stem] = p
    input_set = {os.path.realpath(p) for p in inputs}
    for folder, _ in targets.values():
        inside = next((p for p in inputs if _inside(p, folder)), None)
        if inside is not None:
            raise OutputError(f"the input {inside} lies in the output folder {folder}: a re-run would read the outputs "
                              "as inputs; write the outputs to another folder")
    reserved = {os.path.realpath(Path(folder) / MANIFEST_NAME) for folder, _ in targets.values()}
    items = []
    for stem, p in by_stem.items():
        outputs = {dest: os.fspath(Path(folder) / f"{stem}{suffix}") for dest, (folder, suffix) in targets.items()}
        for out in outputs.values():
            real = os.path.realpath(out)
            if real in input_set:
                raise OutputError(f"{out} would overwrite the input image {p}; write the outputs to another folder")
            if real in reserved:
                raise OutputError(f"{p} would write {out}, the batch's manifest; rename that image or write the "
                                  "outputs to another folder")
        items.append(BatchItem(input=os.fspath(p), stem=stem, outputs=outputs))
    return items
