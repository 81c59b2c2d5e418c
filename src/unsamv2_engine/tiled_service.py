"""Large images behind the protocol: one :class:`TiledImage` per image key of the engine service.

A :class:`~unsamv2_engine.protocol.SetImage` whose image has a side above
:data:`~unsamv2_engine.tiling.grid.TILE_ABOVE` px (or ``tiled=True``) embeds nothing up front: it
becomes a :class:`~unsamv2_engine.tiling.interactive.TiledSession` over a lazy view of the image
(the sent pixels, or the file itself read window by window). Then

* :class:`~unsamv2_engine.protocol.Predict` is decoded on the tile holding the prompts (re-centred,
  then coarser views when the mask touches an inner tile edge); the reply's mask covers the view's
  ``box`` at full resolution, never the whole image;
* :class:`~unsamv2_engine.protocol.SegmentAll` / :class:`~unsamv2_engine.protocol.BuildHierarchy` run
  tile by tile (:func:`~unsamv2_engine.tiling.auto.segment_tiled`), with one ``Progress`` (stage
  ``"tiles"``) per finished tile; a cancel keeps the finished tiles (``tiles_done < tiles_total``).

The embedding cache: when the request names the file the image came from and ``IMAGE.embeddings.zarr``
(``unsamv2 embed``'s default output) lies beside it, its key (the pixels' BLAKE2b, contrast limits,
tiling, model) is compared read-only; a match is used for grid tiles (and filled with the tiles
embedded here), a mismatch is left untouched and not used, and the reply's ``note`` says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from unsamv2_engine import protocol as p


@dataclass
class TiledImage:
    """A tiled session, its grid's overlap, the embedding cache used (or None) and what was decided about it."""

    model: Any
    session: Any  # TiledSession
    overlap: int
    cache: Any  # EmbeddingCache | None
    note: str

    @classmethod
    def open(cls, model, image, request: p.SetImage) -> TiledImage:
        """The tiled session of ``image`` (any 2D array-like) with the request's tiling and intensity mapping."""
        from unsamv2_engine.tiling.grid import default_overlap
        from unsamv2_engine.tiling.interactive import TiledSession
        from unsamv2_engine.tiling.source import ImageSource

        source = ImageSource(image, contrast_limits=request.contrast_limits, rgb=request.rgb)
        size = int(request.tile_size or model.image_size)
        overlap = default_overlap(size) if request.overlap is None else int(request.overlap)
        cache, note = _open_cache(model, source, size, overlap, request)
        session = TiledSession(model, source, tile_size=size, overlap=overlap,
                               features=cache.lookup_to(model.device) if cache is not None else None,
                               store=cache.put if cache is not None else None)
        return cls(model, session, overlap, cache, note)

    def reply(self, request_id: int, image_key: str, seconds: float, cached: bool) -> p.ImageEmbedded:
        s = self.session
        h, w = s.image_hw
        note = (f"large image ({w}x{h}): decoded on {s.tile_size} px tiles at full resolution "
                f"({len(s.grid)} tiles), embedded as needed")
        return p.ImageEmbedded(request_id, image_key, s.image_hw, seconds, cached, tiled=True, tiles=len(s.grid),
                               tile_size=s.tile_size, note=note + (f"; {self.note}" if self.note else ""))

    def predict(self, request: p.Predict) -> p.Decoded:
        if request.mask_input is not None:
            raise ValueError("mask_input is not available on a large (tiled) image: a view's logits do not transfer "
                             "to another view; send the prompts only")
        start = time.perf_counter()
        before = self.session.embedded
        pred = self.session.predict(request.points_xy, request.labels, request.granularity, m2m=request.m2m,
                                    mask_threshold=request.mask_threshold)
        logits = pred.low_res_logits if request.want_logits else None
        return p.Decoded(request.request_id, request.image_key, pred.mask, logits, pred.score, pred.granularity,
                         time.perf_counter() - start, box=tuple(int(v) for v in pred.box), step=int(pred.step),
                         note=pred.note, views_embedded=self.session.embedded - before)

    def sweep(self, request: p.SweepRequest) -> p.SweepDecoded:
        """The prompts decoded at every granularity, each on its own view; masks (and, with ``nest``, the
        nested labels) cover the union of those views (``box``), never the whole large image.
        """
        from unsamv2_engine.tiling.interactive import union_box

        start = time.perf_counter()
        preds = self.session.sweep(request.points_xy, request.labels, request.granularities, m2m=request.m2m,
                                   mask_threshold=request.mask_threshold)
        box = union_box(pr.box for pr in preds)
        x0, y0, x1, y1 = box
        masks = np.zeros((len(preds), y1 - y0, x1 - x0), bool)
        for i, pr in enumerate(preds):
            bx0, by0, bx1, by1 = pr.box
            masks[i, by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = pr.mask
        scores = [float(pr.score) for pr in preds]
        labels = table = None
        if request.nest:
            from unsamv2_engine.hierarchy import sweep_hierarchy

            nested = sweep_hierarchy(masks, request.granularities, scores)
            labels, table = nested.labels, nested.table
        coarse = sorted({pr.step for pr in preds if pr.step > 1})
        note = (f"decoded on {x1 - x0}x{y1 - y0} px around the prompts"
                + (f"; levels whose object outgrew a tile were decoded on views reduced {', '.join(map(str, coarse))}x"
                   if coarse else " at full resolution"))
        return p.SweepDecoded(request.request_id, request.image_key, [float(g) for g in request.granularities],
                              masks, np.asarray(scores, np.float32), masks.reshape(len(masks), -1).sum(axis=1),
                              time.perf_counter() - start, labels=labels, table=table, box=box,
                              steps=[int(pr.step) for pr in preds], note=note)

    def whole_image(self, request, segmenter, emit, cancel) -> p.Segmented | p.HierarchyBuilt:
        """Segment all / build a hierarchy tile by tile; progress per tile; a cancel keeps the finished tiles."""
        from unsamv2_engine.tiling.auto import segment_tiled

        single = isinstance(request, p.SegmentAll)
        if single and request.want_masks:
            raise ValueError("want_masks is not available on a large (tiled) image: every mask of the image would "
                             "not fit in memory; the labels, scores and areas are returned")
        s = self.session
        start = time.perf_counter()
        result = segment_tiled(
            self.model, s.source,
            [request.granularity] if single else request.granularities, tile_size=s.tile_size, overlap=self.overlap,
            hierarchy=not single, containment=getattr(request, "containment", 0.5), segmenter=segmenter,
            progress=lambda done, total, tile: emit(p.Progress(request.request_id, "tiles", done, total)),
            cancel=cancel, features=self.cache.lookup_to(self.model.device) if self.cache is not None else None,
            store=self.cache.put if self.cache is not None else None)
        seconds = time.perf_counter() - start
        if single:
            level = result.levels[0]
            return p.Segmented(request.request_id, request.image_key, level.granularity, result.label_image(0),
                               np.array([o.score for o in level.objects], np.float32),
                               np.array([o.area for o in level.objects], np.int64), seconds,
                               tiles_done=result.tiles_done, tiles_total=result.tiles_total)
        labels, table = hierarchy_of(result)
        return p.HierarchyBuilt(request.request_id, request.image_key, [lev.granularity for lev in result.levels],
                                labels, table, seconds, masks_per_level=[len(lev) for lev in result.levels],
                                tiles_done=result.tiles_done, tiles_total=result.tiles_total)


def hierarchy_of(result) -> tuple[np.ndarray, list[dict]]:
    """A nested :class:`~unsamv2_engine.tiling.auto.TiledResult` as the protocol's hierarchy: labels uint32
    ``[L, H, W]`` with ids unique across levels (level ``l``'s objects follow those of levels ``< l``) and
    table rows label/level/granularity/parent/area/score (parent: the id of the parent, 0 = none; area: the
    object's pixels in the label image, where a smaller object of the same level painted over it does not count).
    """
    offsets = np.cumsum([0] + [len(lev) for lev in result.levels]).tolist()
    order = sorted(range(len(result.levels)), key=lambda i: -1.0 if result.levels[i].granularity is None
                   else result.levels[i].granularity, reverse=True)  # coarse -> fine, as nest_levels
    coarser = {fine: coarse for coarse, fine in zip(order[:-1], order[1:])}
    h, w = result.image_hw
    labels = np.zeros((len(result.levels), h, w), np.uint32)
    table = []
    for li, lev in enumerate(result.levels):
        block = result.paint_block((0, 0, w, h), li)
        labels[li] = np.where(block > 0, block + offsets[li], 0)
        painted = np.bincount(block.ravel(), minlength=len(lev) + 1)  # an object partly under a smaller one
        for i, obj in enumerate(lev.objects):
            parent = lev.parents[i] if lev.parents else 0
            table.append({"label": offsets[li] + i + 1, "level": li, "granularity": lev.granularity,
                          "parent": offsets[coarser[li]] + parent if parent and li in coarser else 0,
                          "area": int(painted[i + 1]), "score": float(obj.score)})
    return labels, table


def _open_cache(model, source, size: int, overlap: int, request: p.SetImage):
    """(EmbeddingCache or None, note): the ``IMAGE.embeddings.zarr`` beside ``request.image_path`` if its key
    matches; a mismatching cache is neither used nor changed.
    """
    from unsamv2_engine.tiling.cache import EmbeddingCache, cache_key, default_cache_path

    if not request.image_path:
        return None, ""
    path = default_cache_path(request.image_path)
    if not path.exists():
        return None, f"no {path.name} beside the image (make one with 'unsamv2 embed' to skip re-embedding)"
    key = cache_key(source, model, size, overlap)  # reads the image once, block by block (its data signature)
    plane = request.frame or 0
    reason = EmbeddingCache.mismatch(path, key, plane=plane)
    if reason is not None:
        return None, f"embedding cache not used: {reason}; run 'unsamv2 embed' again to remake it"
    cache = EmbeddingCache.open(path, key, source.shape_hw, plane=plane)
    stored = int(cache.done().sum())
    return cache, f"using the embeddings in {path} ({stored} of {len(cache.tiles)} tiles stored)"
