"""Image input and result output: images in, label TIFFs / CSV tables / JSON out.

Reading
    :func:`read_image` reads TIFF files with ``tifffile`` and PNG / JPEG / BMP files
    with Pillow, keeping the stored dtype (a 16-bit PNG stays ``uint16``). The returned
    array is what napari would hold; :func:`unsamv2_engine.intensity.to_uint8_rgb` then
    turns it into what the model sees.

Writing
    :func:`write_labels` writes a label image (one 2D ``[H, W]`` image, or a stack
    ``[N, H, W]`` as N pages) as a zlib-compressed TIFF in the smallest unsigned dtype
    that holds its largest label, with a JSON metadata dict in the ImageDescription of
    the first page; :func:`read_labels` reads it back. :func:`write_table_csv` and
    :func:`write_json` write small tables and JSON documents.

This module imports numpy, tifffile and Pillow only.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from unsamv2_engine.errors import ImageError

__all__ = [
    "ImageReadError",
    "read_image",
    "read_labels",
    "to_jsonable",
    "write_json",
    "write_labels",
    "write_table_csv",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# PIL modes converted on reading: alpha is dropped (as the intensity rule does),
# palettes are expanded, exotic colour spaces become RGB.
_PIL_CONVERT = {
    "P": "RGB",
    "PA": "RGB",
    "LA": "L",
    "La": "L",
    "RGBA": "RGB",
    "RGBa": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}

PathLike = str | os.PathLike


class ImageReadError(ImageError):
    """A file exists but cannot be read as an image (corrupt, truncated, unknown format)."""


# --------------------------------------------------------------------------- reading


def read_image(path: PathLike) -> np.ndarray:
    """Read a 2D image (or a TIFF stack) from disk, keeping its dtype.

    Parameters
    ----------
    path : str or os.PathLike
        ``.tif`` / ``.tiff`` (read with tifffile, first series), ``.png``, ``.jpg``,
        ``.jpeg``, ``.bmp`` (read with Pillow, first frame). Any other suffix is tried
        with Pillow, then tifffile.

    Returns
    -------
    np.ndarray
        TIFF: the stored array with singleton axes removed (at least 2D), e.g.
        ``[H, W]``, ``[H, W, 3]`` or ``[N, H, W]``, stored dtype. Pillow formats:
        ``[H, W]`` for greyscale (``uint8``, ``uint16`` for 16-bit PNG, ``int32`` or
        ``float32`` for 32-bit modes, ``bool`` for 1-bit) or ``[H, W, 3]`` ``uint8``
        for colour. Palette images are expanded to RGB; alpha is dropped (RGBA -> RGB,
        LA -> L). EXIF orientation is not applied, as in napari.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageReadError
        If the file cannot be decoded; the message names the file and the reason.
    """
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        readers = [("tifffile", _read_tiff)]
    elif suffix in PIL_SUFFIXES:
        readers = [("Pillow", _read_pil)]
    else:
        readers = [("Pillow", _read_pil), ("tifffile", _read_tiff)]

    reasons = []
    for name, reader in readers:
        try:
            return reader(path)
        except Exception as exc:  # noqa: BLE001 - every decoder failure is reported
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
    raise ImageReadError(
        f"Cannot read {str(path)!r} as an image ({'; '.join(reasons)}). Check that the "
        f"file is a complete TIFF, PNG, JPEG or BMP image."
    )


def _existing_file(path: PathLike) -> Path:
    """Return ``path`` as a Path, raising FileNotFoundError / ImageReadError early."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "No such image file", str(path))
    if path.is_dir():
        raise ImageReadError(f"{str(path)!r} is a directory, not an image file.")
    return path


def _read_tiff(path: Path) -> np.ndarray:
    """Read the first series of a TIFF file, without singleton axes."""
    return _squeeze_keep_2d(np.asarray(tifffile.imread(path)))


def _squeeze_keep_2d(data: np.ndarray) -> np.ndarray:
    """Remove singleton axes, keeping the last ones needed for at least 2 dimensions."""
    singleton = [axis for axis, size in enumerate(data.shape) if size == 1]
    keep = max(0, 2 - (data.ndim - len(singleton)))
    drop = singleton[: len(singleton) - keep]
    return np.squeeze(data, axis=tuple(drop)) if drop else data


def _read_pil(path: Path) -> np.ndarray:
    """Read the first frame of an image with Pillow (see :func:`read_image`)."""
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        is_png = img.format == "PNG"
        if mode in _PIL_CONVERT:
            img = img.convert(_PIL_CONVERT[mode])
        data = np.asarray(img)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if mode == "I" and is_png and data.size and data.min() >= 0 and data.max() <= 0xFFFF:
        data = data.astype(np.uint16)  # PNG holds at most 16 bits per sample
    return np.ascontiguousarray(data)


# --------------------------------------------------------------------------- labels


def write_labels(
    path: PathLike, labels: np.ndarray, *, metadata: dict | None = None
) -> None:
    """Write a label image as a zlib-compressed TIFF with JSON metadata.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, suffix ``.tif`` or ``.tiff``. Parent directories are created. The
        file is written next to its destination and then moved into place, so a failed
        write never leaves a half-written file under ``path``.
    labels : np.ndarray
        ``[H, W]`` (one page) or ``[N, H, W]`` (N pages) of non-negative integers or
        bool. Stored as the smallest of ``uint8`` / ``uint16`` / ``uint32`` holding the
        largest label (bool as ``uint8`` 0/1).
    metadata : dict, optional
        JSON-serialisable dict (numpy scalars and arrays allowed) stored in the
        ImageDescription of the first page, e.g. ``{"granularities": [0.1, 0.5]}``.

    Raises
    ------
    ValueError
        For a suffix other than ``.tif`` / ``.tiff``, a shape other than 2D / 3D,
        non-integer or negative labels, labels above ``2**32 - 1``, or metadata that
        is not a JSON-serialisable dict.
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(
            f"Labels are written as TIFF: use a .tif or .tiff file name, not "
            f"{str(path)!r}."
        )
    data = _labels_for_tiff(labels)
    description = _metadata_description(metadata)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        tifffile.imwrite(
            partial,
            data,
            photometric="minisblack",
            compression="zlib",
            description=description,
            metadata=None,
        )
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def _labels_for_tiff(labels: np.ndarray) -> np.ndarray:
    """Validate a label array and cast it to the smallest sufficient unsigned dtype."""
    data = np.asarray(labels)
    if data.ndim not in (2, 3):
        raise ValueError(
            f"Labels must be one 2D image [H, W] or a stack [N, H, W], got shape "
            f"{data.shape}."
        )
    if data.dtype == np.bool_:
        return np.ascontiguousarray(data, dtype=np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(
            f"Labels must be non-negative integers or bool, got dtype {data.dtype}; "
            f"convert them first (for example labels.astype(np.uint32))."
        )
    if data.size == 0:
        return np.ascontiguousarray(data, dtype=np.uint8)
    low, high = int(data.min()), int(data.max())
    if low < 0:
        raise ValueError(
            f"Labels must be non-negative (0 = background), got a minimum of {low}."
        )
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return np.ascontiguousarray(data, dtype=dtype)
    raise ValueError(
        f"The largest label {high} does not fit in uint32; relabel sequentially "
        f"(skimage.segmentation.relabel_sequential) before writing."
    )


def _metadata_description(metadata: dict | None) -> str | None:
    """Serialise ``metadata`` to an ASCII JSON string (``None`` for no metadata)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"metadata must be a dict, got {type(metadata).__name__}."
        )
    try:
        return json.dumps(to_jsonable(dict(metadata)), ensure_ascii=True)
    except TypeError as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from None


def read_labels(path: PathLike) -> tuple[np.ndarray, dict]:
    """Read a label TIFF written by :func:`write_labels`.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file.

    Returns
    -------
    labels : np.ndarray
        ``[H, W]`` for a one-page file, ``[N, H, W]`` for N pages; stored dtype.
    metadata : dict
        The JSON dict stored in the ImageDescription of the first page; ``{}`` when
        there is none or it is not a JSON object.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageReadError
        If the file is not a readable TIFF or its pages differ in shape or dtype.
    """
    path = _existing_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [page.asarray() for page in tif.pages]
            description = tif.pages[0].description if pages else ""
    except Exception as exc:  # noqa: BLE001 - every decoder failure is reported
        raise ImageReadError(
            f"Cannot read {str(path)!r} as a label TIFF ({type(exc).__name__}: {exc})."
        ) from exc
    if not pages:
        raise ImageReadError(f"{str(path)!r} contains no image.")
    if len({(p.shape, p.dtype) for p in pages}) > 1:
        raise ImageReadError(
            f"The pages of {str(path)!r} differ in shape or dtype; it is not a label "
            f"stack written by write_labels."
        )
    labels = pages[0] if len(pages) == 1 else np.stack(pages)
    return labels, _parse_description(description)


def _parse_description(description: str) -> dict:
    """Return the JSON object in an ImageDescription, or ``{}``."""
    try:
        value = json.loads(description)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- tables, JSON


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` recursively to plain JSON types.

    numpy scalars become Python scalars, arrays / tuples / sets become lists, paths
    become strings, mapping keys become strings, and NaN / +-inf become ``None`` so that
    the output is strict JSON.

    Raises
    ------
    TypeError
        For an object with no JSON equivalent; the message names its type.
    """
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot convert an object of type {type(obj).__name__} to JSON")


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, trailing newline), creating parent directories.

    numpy scalars and arrays are converted to Python types (see :func:`to_jsonable`).
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def write_table_csv(
    path: PathLike, rows: list[dict], columns: list[str] | None = None
) -> None:
    """Write a list of dicts as a CSV table with a header row.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; parent directories are created.
    rows : list of dict
        One dict per row. Missing keys are written as empty cells; ``None`` and NaN
        too. numpy scalars are written as Python values; lists, tuples and arrays as
        JSON text.
    columns : list of str, optional
        Column order, and the columns to write (keys outside it are left out). Default:
        every key, in order of first appearance.
    """
    path = Path(path)
    if columns is None:
        columns = _columns_in_order(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(columns), restval="", extrasaction="ignore"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({str(k): _csv_cell(v) for k, v in row.items()})


def _columns_in_order(rows: Iterable[Mapping]) -> list[str]:
    """All keys of ``rows``, as strings, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _csv_cell(value: Any) -> Any:
    """One CSV cell: plain scalars as they are, containers as JSON text."""
    value = to_jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value
