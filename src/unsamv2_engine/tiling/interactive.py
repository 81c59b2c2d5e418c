"""Clicks on a large image, decoded on demand on a full-resolution tile (SAMJ's design).

Nothing is embedded up front. A prompt is decoded on the tile of the grid (:mod:`.grid`) whose
centre is nearest to the prompts' centre among the tiles holding all of them (those embeddings can
come from an on-disk cache, :mod:`.cache`). If the mask touches an edge of that tile that lies inside
the image, the object may continue past it, so the prompt is decoded again on a tile centred on the
prompts, and if the mask still touches an inner edge, on coarser views: windows of ``2, 4, 8 ...``
tile sizes centred on the prompts, area-reduced to the model input (the model then sees the object
at 1/2, 1/4 ... resolution), until the mask stays clear of the inner edges or the view is the whole
image. The mask always comes back at full resolution in image coordinates, with the view it was
decoded on (``step``: 1 = full resolution) and a note when a coarser view was needed.

At large g (wholes) an object can be larger than one tile: it is then decoded on a coarser view,
so its outline is as precise as that view (``step`` pixels); small objects (nuclei) are decoded at
full resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unsamv2_engine.model.decoding import ImageFeatures
from unsamv2_engine.prompts import check_points
from unsamv2_engine.session import ImageSession, Prediction
from unsamv2_engine.tiling.grid import Tile, tile_grid
from unsamv2_engine.tiling.source import ImageSource

FeatureLookup = Callable[[Tile], ImageFeatures | None]


@dataclass
class TiledPrediction:
    """A mask decoded on one view of a large image.

    mask: bool ``[y1 - y0, x1 - x0]`` at full resolution over ``box`` = (x0, y0, x1, y1) image pixels
    (the view's window; outside it the mask is empty); step: the view's reduction (1 = full
    resolution); touches_edge: the mask still touches an inner edge of the last view tried (only
    possible when it was already the whole image or ``max_step`` was reached); note: what happened, for the user.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    score: float
    object_score: float
    granularity: float | None
    step: int
    touches_edge: bool
    note: str
    low_res_logits: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, image_hw: tuple[int, int]) -> np.ndarray:
        """The mask as a bool ``[H, W]`` image (allocates H x W bytes)."""
        out = np.zeros(image_hw, bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out

    def bbox(self) -> tuple[int, int, int, int] | None:
        """Tight (x0, y0, x1, y1) of the mask in image pixels (end exclusive), None if empty."""
        rows, cols = np.any(self.mask, 1), np.any(self.mask, 0)
        if not rows.any():
            return None
        y, x = np.flatnonzero(rows), np.flatnonzero(cols)
        return self.box[0] + x[0], self.box[1] + y[0], self.box[0] + x[-1] + 1, self.box[1] + y[-1] + 1


def touches_inner_edge(mask: np.ndarray, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> bool:
    """Whether ``mask`` (over ``box``) has a pixel on an edge of ``box`` that is not the image border."""
    x0, y0, x1, y1 = box
    h, w = image_hw
    return bool((x0 > 0 and mask[:, 0].any()) or (y0 > 0 and mask[0].any())
                or (x1 < w and mask[:, -1].any()) or (y1 < h and mask[-1].any()))


def union_box(boxes) -> tuple[int, int, int, int]:
    """The smallest (x0, y0, x1, y1) box holding every box given."""
    boxes = np.asarray(list(boxes), np.int64)
    return (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))


def centred_window(centre_xy: tuple[float, float], side: int, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """A ``side`` x ``side`` window centred on (x, y), shifted to lie inside the image (clipped if larger)."""
    h, w = image_hw
    out = []
    for c, length in ((centre_xy[0], w), (centre_xy[1], h)):
        lo = int(round(c - side / 2))
        lo = max(0, min(lo, length - side))
        out.append((lo, min(lo + side, length)))
    (x0, x1), (y0, y1) = out
    return x0, y0, x1, y1


class TiledSession:
    """Interactive decoding on an image of any size, one model-input-sized view at a time.

    image: any 2D array-like (numpy, memmap, zarr, dask); contrast_limits: the global intensity map
    (see :class:`ImageSource`); tile_size: side of a view in pixels (default: the model input, 1024);
    overlap: of the grid tiles (default: a quarter of the tile size); max_step: the coarsest reduction
    tried (None: until the view is the whole image); features: an optional lookup of cached grid-tile embeddings
    (:meth:`unsamv2_engine.tiling.cache.EmbeddingCache.lookup`); store(tile, features): called with each grid
    tile embedded fresh (e.g. :meth:`~unsamv2_engine.tiling.cache.EmbeddingCache.put`, to fill a cache);
    keep: embeddings kept in memory.
    """

    def __init__(self, model, image, *, contrast_limits: tuple[float, float] | None = None, rgb: bool | None = None,
                 tile_size: int | None = None, overlap: int | None = None, max_step: int | None = None,
                 features: FeatureLookup | None = None, store: Callable[[Tile, ImageFeatures], None] | None = None,
                 keep: int = 6, mask_threshold: float = 0.0) -> None:
        self.source = image if isinstance(image, ImageSource) else ImageSource(image, contrast_limits=contrast_limits,
                                                                               rgb=rgb)
        self.session = ImageSession(model, mask_threshold=mask_threshold)
        self.tile_size = int(tile_size or model.image_size)
        self.grid = tile_grid(self.source.shape_hw, self.tile_size, overlap)
        self.max_step = max_step
        self.lookup = features
        self.store = store
        self._memory: OrderedDict[tuple, ImageFeatures] = OrderedDict()
        self._keep = max(1, int(keep))
        self.embedded = 0  # views embedded by this session (cache and memory hits excluded)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.source.shape_hw

    # ------------------------------------------------------------------ views
    def grid_tile_for(self, points_xy: np.ndarray) -> Tile:
        """The grid tile holding all points whose centre is nearest to theirs (else the nearest one)."""
        centre = points_xy.mean(axis=0)
        lo, hi = points_xy.min(axis=0), points_xy.max(axis=0)

        def cost(t: Tile) -> tuple[bool, float]:
            x0, y0, x1, y1 = t.box
            inside = x0 <= lo[0] and y0 <= lo[1] and hi[0] < x1 and hi[1] < y1
            return not inside, float(np.hypot((x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]))

        return min(self.grid, key=cost)

    def views(self, points_xy: np.ndarray) -> list[tuple[tuple[int, int, int, int], int, Tile | None]]:
        """The views tried in order: (box, step, grid tile or None)."""
        h, w = self.image_hw
        tile = self.grid_tile_for(points_xy)
        out: list[tuple[tuple[int, int, int, int], int, Tile | None]] = [(tile.box, 1, tile)]
        centre = tuple(float(v) for v in (points_xy.min(axis=0) + points_xy.max(axis=0)) / 2)
        step = 1
        while True:
            box = centred_window(centre, self.tile_size * step, (h, w))
            if box != out[-1][0]:
                out.append((box, step, None))
            whole = box == (0, 0, w, h)
            if whole or (self.max_step is not None and step >= self.max_step):
                break
            step *= 2
        return out

    def features_for(self, box: tuple[int, int, int, int], step: int, tile: Tile | None) -> ImageFeatures:
        key = (box, step)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        feats = self.lookup(tile) if (tile is not None and self.lookup is not None) else None
        if feats is None:
            self.session.set_image(self.source.window(box, step))
            feats = self.session.features
            self.embedded += 1
            if tile is not None and self.store is not None:
                self.store(tile, feats)
        self._memory[key] = feats
        while len(self._memory) > self._keep:
            self._memory.popitem(last=False)
        return feats

    # ------------------------------------------------------------------ decoding
    def predict(self, points, labels, granularity: float | None, **decode_options) -> TiledPrediction:
        """Decode one object from points ``[N, 2]`` (x, y) image pixels and labels ``[N]`` (1/0).

        ``decode_options`` go to :meth:`ImageSession.predict` (``m2m``, ``mask_threshold``, ...;
        not ``mask_input``: a view's low-res logits do not transfer to another view).
        """
        pts, lab = check_points(points, labels, self.image_hw)
        positives = pts[lab == 1] if (lab == 1).any() else pts
        views = self.views(positives)
        tried = []
        for i, (box, step, tile) in enumerate(views):
            pred = self._decode_on(box, step, tile, pts, lab, granularity, decode_options)
            edge = touches_inner_edge(pred.mask, box, self.image_hw)
            tried.append(step)
            if not edge or i == len(views) - 1:
                return TiledPrediction(pred.mask, box, pred.score, pred.object_score, pred.granularity, step, edge,
                                       _note(box, step, edge, len(tried), self.image_hw), pred.low_res_logits)
        raise AssertionError("unreachable: views() is never empty")

    def sweep(self, points, labels, granularities, **decode_options) -> list[TiledPrediction]:
        """One :class:`TiledPrediction` per granularity for the same prompts, in the order given.

        Each level is decoded on its own view (a fine level at full resolution, a level whose object
        outgrows the tile on a coarser view); views embedded for one level serve the next from memory.
        """
        return [self.predict(points, labels, g, **decode_options) for g in granularities]

    def _decode_on(self, box, step, tile, pts, lab, granularity, options) -> Prediction:
        x0, y0, x1, y1 = box
        feats = self.features_for(box, step, tile)
        # the embedding of the (reduced) window, with the full-resolution window's size: prompts are
        # scaled and masks upsampled straight to full resolution
        self.session.set_features(feats, (y1 - y0, x1 - x0))
        local = pts - np.array([x0, y0], np.float32)
        inside = (local[:, 0] >= 0) & (local[:, 1] >= 0) & (local[:, 0] < x1 - x0) & (local[:, 1] < y1 - y0)
        # prompts outside the view (far negative clicks) cannot be given to it
        return self.session.predict(local[inside], lab[inside], granularity, **options)


def _note(box, step, edge, n_views, image_hw) -> str:
    x0, y0, x1, y1 = box
    where = f"{x1 - x0}x{y1 - y0} px window at ({x0}, {y0})"
    if step == 1 and n_views == 1:
        return f"decoded at full resolution on the grid tile {where}"
    if step == 1:
        return ("the mask touched the tile edge: decoded again at full resolution on a tile centred on the prompts "
                f"({where})")
    text = (f"the object is larger than one tile: decoded on a view reduced {step}x ({where}); "
            f"its outline is precise to about {step} px")
    if edge:
        text += ("; the mask still reaches the edge of the coarsest view tried"
                 if (x1 - x0, y1 - y0) != (image_hw[1], image_hw[0]) else "")
    return text
