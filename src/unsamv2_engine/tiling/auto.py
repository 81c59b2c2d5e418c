"""Whole-image segmentation and hierarchies of large images, tile by tile, into OME-Zarr.

Each grid tile (:mod:`.grid`, full resolution, the model's input size) is segmented by the
:class:`~unsamv2_engine.automatic.AutomaticSegmenter` at every granularity (one embedding per tile
for all of them); its objects become pieces (:mod:`.stitch`) kept as masks cropped to their boxes,
and the tile's full-size masks are freed. After the last tile the pieces of each granularity are
stitched into one object per label; for a hierarchy each object of a finer level gets the parent of
the next coarser level covering most of it (>= ``containment``) and is clipped to it (``child ⊂
parent`` pixel for pixel, as :func:`~unsamv2_engine.hierarchy.enforce_nesting`). Labels are then
painted block by block into an OME-Zarr pyramid (:func:`~unsamv2_engine.io.omezarr.write_label_pyramid`)
and/or a TIFF.

Peak memory: one tile's image, embedding and candidate masks, plus the objects' cropped masks
(proportional to the segmented area, not to the image). Cancelling between tiles keeps the finished
tiles: :func:`segment_tiled` returns what was found so far with ``complete=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsamv2_engine.automatic.segmenter import AutomaticSegmenter, Cancelled
from unsamv2_engine.automatic.settings import AutoSettings
from unsamv2_engine.prompts import check_granularity
from unsamv2_engine.tiling.grid import Tile, default_overlap, tile_grid
from unsamv2_engine.tiling.source import ImageSource
from unsamv2_engine.tiling.stitch import Piece, SpatialIndex, intersect, overlap_pixels, paint, pieces_of_tile, stitch

TileProgress = Callable[[int, int, Tile], None]


@dataclass
class TiledLevel:
    """Objects of one granularity: labels ``1..N`` in the order of ``objects``; parents: label in the next
    coarser level (0 = none), for hierarchies.
    """

    granularity: float | None
    objects: list[Piece]
    parents: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.objects)


@dataclass
class TiledResult:
    """Levels in the order of the granularities asked; complete is False when cancelled (finished tiles kept)."""

    image_hw: tuple[int, int]
    levels: list[TiledLevel]
    tiles_done: int
    tiles_total: int
    tile_size: int
    overlap: int

    @property
    def complete(self) -> bool:
        return self.tiles_done == self.tiles_total

    def paint_block(self, box: tuple[int, int, int, int], level: int | None = None) -> np.ndarray:
        """Label block ``[h, w]`` of one level (or ``[L, h, w]`` of all when level is None)."""
        if level is None:
            return np.stack([self.paint_block(box, i) for i in range(len(self.levels))])
        index = self._index(level)
        lev = self.levels[level]
        ids = index.query(box)
        # larger objects first, so a smaller one lying on a larger one stays visible
        ids.sort(key=lambda i: -lev.objects[i].area)
        return paint([lev.objects[i] for i in ids], [i + 1 for i in ids], box)

    def _index(self, level: int) -> SpatialIndex:
        cache = self.__dict__.setdefault("_indices", {})
        if level not in cache:
            cache[level] = SpatialIndex(self.levels[level].objects, 1024)
        return cache[level]

    def label_image(self, level: int = 0) -> np.ndarray:
        """The whole label image of a level (allocates H x W x 4 bytes; for small images and tests)."""
        h, w = self.image_hw
        return self.paint_block((0, 0, w, h), level)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for li, lev in enumerate(self.levels):
            for i, o in enumerate(lev.objects):
                rows.append({"level": li, "granularity": lev.granularity, "label": i + 1,
                             "parent": lev.parents[i] if lev.parents else 0, "area": o.area, "score": o.score,
                             "x0": o.box[0], "y0": o.box[1], "x1": o.box[2], "y1": o.box[3]})
        return rows


def segment_tiled(model, image, granularities: Sequence[float | None], *, settings: AutoSettings | None = None,
                  tile_size: int | None = None, overlap: int | None = None,
                  contrast_limits: tuple[float, float] | None = None, hierarchy: bool = False,
                  containment: float = 0.5, progress: TileProgress | None = None,
                  cancel: Callable[[], bool] | None = None, segmenter: AutomaticSegmenter | None = None,
                  features=None, store=None) -> TiledResult:
    """Segment ``image`` (any 2D array-like: numpy, memmap, zarr, dask) tile by tile at each granularity.

    hierarchy: nest the levels (finer inside coarser, by g); progress(done, total, tile) after each tile;
    cancel() checked between tiles and decoder batches: the finished tiles are kept (``complete`` False);
    features: optional lookup ``tile -> ImageFeatures | None`` of cached embeddings (:mod:`.cache`);
    store(tile, features): called with each tile's fresh embedding (to fill a cache).
    """
    levels = [check_granularity(g) for g in granularities]
    if not levels:
        raise ValueError("give at least one granularity")
    source = image if isinstance(image, ImageSource) else ImageSource(image, contrast_limits=contrast_limits)
    seg = segmenter or AutomaticSegmenter(model, settings or AutoSettings.cpu())
    size = int(tile_size or model.image_size)
    overlap = default_overlap(size) if overlap is None else int(overlap)
    grid = tile_grid(source.shape_hw, size, overlap)
    pieces: list[list[Piece]] = [[] for _ in levels]
    done = 0
    for tile in grid:
        if cancel is not None and cancel():
            break
        rgb = source.window(tile.box)
        cached = features(tile) if features is not None else None
        try:
            results = seg.generate_levels(rgb, levels, cancel=cancel,
                                          features=None if cached is None else (cached, rgb.shape[:2]))
        except Cancelled:
            break
        if store is not None and cached is None:
            store(tile, seg.session.features)
        for li, res in enumerate(results):
            pieces[li].extend(pieces_of_tile(res.masks, res.scores, tile, source.shape_hw))
        del results
        done += 1
        if progress is not None:
            progress(done, len(grid), tile)
    out = [TiledLevel(g, _ordered(stitch(p, cell=size))) for g, p in zip(levels, pieces)]
    if hierarchy:
        nest_levels(out, containment=containment, cell=size)
    return TiledResult(source.shape_hw, out, done, len(grid), size, overlap)


def _ordered(objects: list[Piece]) -> list[Piece]:
    """Row-major by box (top-left first): stable labels whatever the stitching order."""
    return sorted(objects, key=lambda o: (o.box[1], o.box[0], -o.area))


def nest_levels(levels: list[TiledLevel], *, containment: float = 0.5, cell: int = 1024) -> None:
    """Parents from the next coarser level (larger g) by containment, then clip each child to its parent.

    A child without a parent covering ``containment`` of it keeps parent 0 and is not clipped.
    Order of clipping: coarsest first, so a grandchild is clipped to an already clipped parent.
    """
    order = sorted(range(len(levels)), key=lambda i: -1.0 if levels[i].granularity is None
                   else levels[i].granularity, reverse=True)  # coarse -> fine
    for lev in levels:
        lev.parents = [0] * len(lev.objects)
    for coarse_i, fine_i in zip(order[:-1], order[1:]):
        coarse, fine = levels[coarse_i], levels[fine_i]
        index = SpatialIndex(coarse.objects, cell)
        for k, child in enumerate(fine.objects):
            best, best_share = 0, 0.0
            area = child.area
            for j in index.query(child.box):
                if intersect(child.box, coarse.objects[j].box) is None:
                    continue
                inter, _, _ = overlap_pixels(child, coarse.objects[j])
                share = inter / area if area else 0.0
                if share > best_share or (share == best_share and share > 0 and j + 1 < best):
                    best, best_share = j + 1, share
            if best and best_share >= containment:
                fine.parents[k] = best
                parent = coarse.objects[best - 1]
                both = intersect(child.box, parent.box)
                clipped = np.zeros_like(child.mask)
                sub = (slice(both[1] - child.box[1], both[3] - child.box[1]),
                       slice(both[0] - child.box[0], both[2] - child.box[0]))
                clipped[sub] = child.mask[sub] & parent.mask[both[1] - parent.box[1]:both[3] - parent.box[1],
                                                             both[0] - parent.box[0]:both[2] - parent.box[0]]
                child.mask = clipped


def write_tiled_result(path: str, result: TiledResult, meta: dict[str, Any], *, hierarchy: bool) -> None:
    """Write a tiled result block by block: an OME-Zarr label pyramid (``.zarr``) or a tiled label TIFF.

    ``hierarchy``: one channel (zarr) or page (TIFF) per level; else the first level only. Labels are
    uint16, or uint32 when a level has 65536 objects or more.
    """
    out = str(path).rstrip("/")
    n_max = max((len(v) for v in result.levels), default=0)
    dtype = np.uint16 if n_max < 65536 else np.uint32
    if out.endswith(".zarr"):
        from unsamv2_engine.io.omezarr import write_label_pyramid

        write_label_pyramid(out, result.image_hw,
                            (lambda box: result.paint_block(box)) if hierarchy else
                            (lambda box: result.paint_block(box, 0)),
                            channels=len(result.levels) if hierarchy else None, dtype=dtype, metadata=meta,
                            name="hierarchy" if hierarchy else "labels")
        return
    write_tiled_tiff(out, result, dtype, meta, hierarchy)


def write_tiled_tiff(path: str, result: TiledResult, dtype: Any, meta: dict[str, Any], hierarchy: bool,
                     tile: int = 1024) -> None:
    """Write a tiled label TIFF (one page per level for a hierarchy), tile by tile from the objects."""
    levels = list(range(len(result.levels))) if hierarchy else [0]
    write_tiled_pages(path, result.image_hw, len(levels), lambda page, box: result.paint_block(box, levels[page]),
                      dtype, {**meta, "level": 0}, tile=tile)


def write_tiled_pages(path: str, image_hw: tuple[int, int], pages: int,
                      block: Callable[[int, tuple[int, int, int, int]], np.ndarray], dtype: Any,
                      metadata: dict[str, Any] | None, tile: int = 1024) -> None:
    """A multi-page ``image_hw`` TIFF written in ``tile`` px tiles (zlib), page by page: ``block(page, (x0, y0,
    x1, y1))`` gives each tile's pixels, so neither the image nor a page is ever whole in memory; ``metadata``
    goes as JSON into the first page's description.
    """
    import json

    import tifffile

    from unsamv2_engine.io import to_jsonable

    h, w = image_hw

    def tiles(page):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                pixels = block(page, (x, y, min(x + tile, w), min(y + tile, h))).astype(dtype, copy=False)
                out = np.zeros((tile, tile), dtype)
                out[:pixels.shape[0], :pixels.shape[1]] = pixels
                yield out

    description = None if metadata is None else json.dumps(to_jsonable(metadata))
    with tifffile.TiffWriter(str(path), bigtiff=h * w * np.dtype(dtype).itemsize * pages > 2**31) as tif:
        for i in range(pages):
            tif.write(tiles(i), shape=(h, w), dtype=dtype, tile=(tile, tile), compression="zlib",
                      photometric="minisblack", description=description if i == 0 else None, metadata=None)
