"""OME-Zarr (NGFF 0.4) label pyramids written block by block, and lazy reading of zarr / TIFF images.

Written with ``zarr`` directly (already a dependency), not with the ``ome-zarr`` package: the
multiscale metadata is a few lines of JSON, while ``ome-zarr``'s writers take a whole in-memory (or
dask) array, and the point here is that the full label image never exists in memory: every
``chunk`` x ``chunk`` block is painted and written, then each coarser level is computed block by
block from the previous one (nearest neighbour, every second pixel: labels stay labels).

Layout of ``OUT.zarr`` (zarr format 2, NGFF 0.4, readable by napari-ome-zarr, Fiji's n5/zarr
readers and ``ome-zarr``): arrays ``0, 1, 2 ...`` (level ``i`` is reduced ``2**i`` times), axes
``y, x`` or ``c, y, x`` (``c``: the levels of a hierarchy, in the order of the ``granularities``
attribute), ``multiscales`` and ``image-label`` metadata, plus ``unsamv2`` attributes (the run's
metadata).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.io.images import ImageReadError, to_jsonable

Box = tuple[int, int, int, int]
NGFF_VERSION = "0.4"


def _create(group, name: str, shape, chunks, dtype):
    create = getattr(group, "create_array", None)
    if create is not None:
        return create(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)  # zarr 2


def _open_group(path: Path, mode: str):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    except TypeError:  # zarr 2 has no zarr_format
        return zarr.open_group(str(path), mode=mode)


def n_pyramid_levels(image_hw: tuple[int, int], chunk: int) -> int:
    """Levels until the image fits in one chunk (at least 1)."""
    n, side = 1, max(image_hw)
    while side > chunk:
        side = -(-side // 2)
        n += 1
    return n


def write_label_pyramid(path: str | Path, image_hw: tuple[int, int], paint_block: Callable[[Box], np.ndarray], *,
                        channels: int | None = None, chunk: int = 1024, dtype=np.uint32, levels: int | None = None,
                        metadata: dict[str, Any] | None = None, name: str = "labels",
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """Write labels block by block; ``paint_block(box)`` returns ``[h, w]`` (or ``[C, h, w]`` with channels)."""
    path = Path(path)
    h, w = int(image_hw[0]), int(image_hw[1])
    n_levels = levels or n_pyramid_levels((h, w), chunk)
    group = _open_group(path, "w")
    lead = () if channels is None else (int(channels),)
    lead_chunks = () if channels is None else (1,)
    arrays = []
    lh, lw = h, w
    for i in range(n_levels):
        arrays.append(_create(group, str(i), lead + (lh, lw), lead_chunks + (chunk, chunk), dtype))
        lh, lw = -(-lh // 2), -(-lw // 2)
    blocks = [(x, y, min(x + chunk, w), min(y + chunk, h)) for y in range(0, h, chunk) for x in range(0, w, chunk)]
    for k, box in enumerate(blocks):
        x0, y0, x1, y1 = box
        arrays[0][..., y0:y1, x0:x1] = paint_block(box).astype(dtype, copy=False)
        if progress is not None:
            progress(k + 1, len(blocks))
    for i in range(1, n_levels):
        src, dst = arrays[i - 1], arrays[i]
        sh, sw = src.shape[-2:]
        # a dst block of `chunk` px reads 2*chunk src px: memory stays a few chunks
        for y in range(0, dst.shape[-2], chunk):
            for x in range(0, dst.shape[-1], chunk):
                block = np.asarray(src[..., 2 * y:min(2 * (y + chunk), sh), 2 * x:min(2 * (x + chunk), sw)])
                dst[..., y:y + block.shape[-2] // 2 + block.shape[-2] % 2,
                    x:x + block.shape[-1] // 2 + block.shape[-1] % 2] = block[..., ::2, ::2]
    axes = ([] if channels is None else [{"name": "c", "type": "channel"}]) + \
        [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": ([1.0] if channels is not None else []) + [float(2 ** i)] * 2}]}
        for i in range(n_levels)]
    group.attrs.update({
        "multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
                         "type": "nearest"}],
        "image-label": {"version": NGFF_VERSION, "source": {"image": "../"}},
        "unsamv2": to_jsonable(metadata or {}),
    })
    return path


def is_zarr_path(path: str | Path) -> bool:
    """Whether ``path`` names a zarr array or group (by suffix, or by its metadata files)."""
    p = Path(path)
    return p.suffix == ".zarr" or p.name.endswith(".ome.zarr") or (p.is_dir() and (
        (p / ".zgroup").exists() or (p / ".zarray").exists() or (p / "zarr.json").exists()))


def open_zarr_image(path: str | Path, level: int = 0):
    """The lazy ``zarr.Array`` of a zarr array or an OME-Zarr multiscale group (level 0 = full resolution)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p} does not exist")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a non-zarr folder
        raise ImageReadError(f"{p} is not a zarr array or group ({exc})") from exc
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][level]["path"]]
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise ImageReadError(f"{p} holds no array: give the path of an array inside it")
    return node[arrays[0]]


def open_lazy_image(path: str | Path, frame: int | None = None):
    """A 2D image array-like read on demand: zarr / OME-Zarr, or a TIFF memory-mapped (or read tile-wise
    through ``tifffile.aszarr`` when it is compressed or tiled). Other formats are read whole.

    frame: for a stack ``[N, H, W]`` / ``[N, H, W, C]``, the slice (a lazy view; required for stacks).
    """
    from unsamv2_engine.io.images import read_image

    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p} does not exist")
    if is_zarr_path(p):
        arr = open_zarr_image(p)
    elif p.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        try:
            arr = tifffile.memmap(str(p), mode="r")
        except (ValueError, OSError):
            arr = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
    else:
        arr = read_image(p)
    return _plane(arr, frame, p)


def _plane(arr, frame: int | None, path: Path):
    shape = tuple(int(s) for s in arr.shape)
    colour = len(shape) >= 3 and shape[-1] in (3, 4)
    spatial = 3 if colour else 2
    lead = shape[:len(shape) - spatial]
    if frame is not None:
        if not lead:
            raise ImageReadError(f"--frame was given but {path} is a single 2D image (shape {shape})")
        if not -lead[0] <= frame < lead[0]:
            raise ImageReadError(f"--frame {frame} is out of range: {path} holds {lead[0]} images "
                                 f"(0 .. {lead[0] - 1})")
        index = (frame % lead[0],) + (0,) * (len(lead) - 1)
        if any(s != 1 for s in lead[1:]):
            raise ImageReadError(f"{path} has shape {shape}: only one stack axis is supported")
        return LeadingPlane(arr, index)
    if not lead:
        return arr
    if all(s == 1 for s in lead):
        return LeadingPlane(arr, (0,) * len(lead))
    raise ImageReadError(f"{path} is a stack of shape {shape}: choose one image with --frame INDEX")


class LeadingPlane:
    """A lazy 2D view ``arr[lead]`` of an nD array-like (zarr slicing would read the plane at once)."""

    def __init__(self, arr, lead: tuple[int, ...]) -> None:
        self.arr, self.lead = arr, tuple(lead)
        self.shape = tuple(arr.shape[len(lead):])
        self.dtype = arr.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.arr[self.lead + key]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.arr[self.lead])
        return out if dtype is None else out.astype(dtype)
