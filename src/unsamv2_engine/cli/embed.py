"""Large images on the command line: ``unsamv2 embed`` and the tiled paths of ``auto`` / ``hierarchy`` /
``segment`` / ``sweep``.

::

    unsamv2 embed IMAGE -o IMAGE.embeddings.zarr [--tile-size PX] [--overlap PX] [--contrast-limits LO,HI]
        [--frame I] [model options]
    unsamv2 auto IMAGE -g G -o LABELS.ome.zarr|LABELS.tif --tile-size 1024 [--overlap PX] [--embeddings PATH]
    unsamv2 hierarchy IMAGE --granularities ... -o TREE.ome.zarr|TREE.tif --tile-size 1024 [--embeddings PATH]
    unsamv2 segment|sweep IMAGE --point X,Y ... -o OUT.tif [--tile-size 1024] [--embeddings PATH]

``auto`` / ``hierarchy`` take the tiled path when ``--tile-size`` or ``--embeddings`` is given, when the
output is an ``.ome.zarr`` folder, or when the image is larger than :data:`AUTO_TILE_ABOVE` px on a side;
the image is then read lazily (zarr / OME-Zarr, memory-mapped or tile-wise TIFF) and never whole.
This module imports the standard library only (and the engine's tiling rule, :mod:`unsamv2_engine.tiling.grid`,
which is standard library only); the engine is imported inside the functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unsamv2_engine.cli.loading import TIFF_SUFFIXES, check_output_suffix, load_model_from_args, prompt_arrays, timed
from unsamv2_engine.cli.options import add_common_options, add_model_options, parse_contrast_limits, subparser
from unsamv2_engine.cli.output import EXIT_OK, CliError, emit_json, engine_version, say, summary, warn
from unsamv2_engine.tiling.grid import TILE_ABOVE  # standard library only
from unsamv2_engine.tiling.grid import wants_tiles as _wants_tiles

__all__ = ["AUTO_TILE_ABOVE", "add_tiling_options", "register", "run", "run_tiled", "run_tiled_segment",
           "run_tiled_sweep",
           "wants_tiles"]

#: Images with a side above this are segmented tile by tile even without --tile-size: the engine's rule
#: (:data:`unsamv2_engine.tiling.grid.TILE_ABOVE`, shared with the napari widget).
AUTO_TILE_ABOVE = TILE_ABOVE

_EMBED_EPILOG = """\
The cache is keyed by the image's pixels (a data signature), the contrast limits, the tiling and the
model's weights: if any differs the cache is recomputed, never used. An interrupted run resumes.
A z-stack or time-lapse is cached per slice: run once per --frame (same -o).

examples:
  unsamv2 embed slide.ome.zarr -o slide.embeddings.zarr --device cuda
  unsamv2 auto slide.ome.zarr -g 0.3 -o nuclei.ome.zarr --embeddings slide.embeddings.zarr
"""


def add_tiling_options(parser: argparse.ArgumentParser) -> None:
    """``--tile-size``, ``--overlap``, ``--embeddings`` (for auto and hierarchy)."""
    group = parser.add_argument_group(
        "large images", "Segment tile by tile at full resolution (see docs/large-images.md).")
    group.add_argument("--tile-size", type=int, metavar="PX",
                       help="segment in PX x PX tiles at full resolution (default: tiled with the model's input "
                            f"size, 1024, when the image has a side above {AUTO_TILE_ABOVE} px or the output is "
                            ".ome.zarr)")
    group.add_argument("--overlap", type=int, metavar="PX",
                       help="overlap of neighbouring tiles (default: a quarter of the tile size, 256 for 1024-px "
                            "tiles; objects up to about this size that cross a border are whole in one tile, larger "
                            "ones are merged)")
    group.add_argument("--embeddings", metavar="PATH",
                       help="tile embeddings made by 'unsamv2 embed' (reused if they match the image, contrast "
                            "limits, tiling and model; else recomputed and written there)")


def register(subparsers: Any) -> None:
    """Add ``embed`` to the ``unsamv2`` subparsers."""
    p = subparser(
        subparsers, "embed", "precompute tile embeddings of a (large) image into a zarr cache",
        "Embed the image tile by tile at full resolution (tiles of the model's input size, overlapping) and "
        "store the embeddings in a zarr folder that auto, hierarchy and the napari plugin reuse.", _EMBED_EPILOG)
    p.add_argument("image", metavar="IMAGE", help="input image: OME-Zarr / zarr, TIFF (read lazily), PNG or JPEG; "
                   "or a folder or quoted glob of them (a batch: -o names a folder of <stem>.embeddings.zarr)")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE.embeddings.zarr", help="cache folder to write")
    p.add_argument("--tile-size", type=int, metavar="PX", help="tile side (default: the model's input size)")
    p.add_argument("--overlap", type=int, metavar="PX",
                   help="overlap of neighbouring tiles (default: a quarter of the tile size, 256 for 1024-px tiles)")
    p.add_argument("--contrast-limits", type=parse_contrast_limits, metavar="LO,HI",
                   help="intensity range mapped to 0..255 (default: the image's min..max; 8-bit as is)")
    p.add_argument("--frame", type=int, metavar="INDEX", help="for a stack: the slice to embed, from 0")
    from unsamv2_engine.cli.batch import add_batch_options  # standard library only

    add_batch_options(p)
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=run)


def wants_tiles(args: argparse.Namespace) -> bool:
    """Whether an ``auto`` / ``hierarchy`` run takes the tiled path (see the module docstring)."""
    from pathlib import Path

    if getattr(args, "tile_size", None) or getattr(args, "embeddings", None):
        return True
    if str(args.output).rstrip("/").endswith(".ome.zarr"):
        return True
    try:
        from unsamv2_engine.io.omezarr import open_lazy_image

        shape = open_lazy_image(args.image, frame=args.frame).shape if Path(args.image).exists() else (0, 0)
    except Exception:  # noqa: BLE001 - the regular path reports unreadable images
        return False
    return _wants_tiles(shape)


# ============================================================================ shared
def _open(args: argparse.Namespace):
    """(ImageSource, loaded model, tile size, device) after every cheap check."""
    from unsamv2_engine.io.omezarr import open_lazy_image
    from unsamv2_engine.tiling.grid import default_overlap, tile_grid
    from unsamv2_engine.tiling.source import ImageSource

    data = open_lazy_image(args.image, frame=args.frame)
    try:
        source = ImageSource(data, contrast_limits=args.contrast_limits)
    except ValueError as exc:
        raise CliError(f"{args.image}: {exc}") from None
    model = load_model_from_args(args).model
    size = int(args.tile_size or model.image_size)
    if args.overlap is None:
        args.overlap = default_overlap(size)
    try:
        tiles = tile_grid(source.shape_hw, size, args.overlap)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return source, model, size, tiles


def _open_cache(args, path, source, model, size):
    from unsamv2_engine.tiling.cache import EmbeddingCache, cache_key

    say(args, "computing the image's data signature (cache key) ...")
    key = cache_key(source, model, size, args.overlap)
    try:
        cache = EmbeddingCache.open(path, key, source.shape_hw, plane=args.frame or 0)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if cache.stale_reason:
        warn(cache.stale_reason)
    return cache


def _bar(args, total: int, unit: str, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=args.quiet, file=sys.stderr, unit=unit, desc=desc, dynamic_ncols=True)


# ============================================================================ embed
def run(args: argparse.Namespace) -> int:
    """``unsamv2 embed``: tile embeddings of an image (or a batch of them) into a zarr cache (resumable)."""
    from unsamv2_engine.cli.batch import run_batch  # a folder or glob of images
    from unsamv2_engine.tiling.cache import embed_tiles

    if (code := run_batch(args, "embed")) is not None:
        return code
    if not str(args.output).rstrip("/").endswith(".zarr"):
        raise CliError(f"-o {args.output}: the cache is a zarr folder, give a path ending in .zarr "
                       "(e.g. IMAGE.embeddings.zarr)")
    source, model, size, tiles = _open(args)
    cache = _open_cache(args, args.output, source, model, size)
    before = int(cache.done().sum())
    if before:
        say(args, f"resuming: {before} of {len(tiles)} tiles already in {args.output}")
    bar = _bar(args, len(tiles), "tile", "embedding")
    bar.update(before)
    try:
        n = embed_tiles(model, source, cache, progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    h, w = source.shape_hw
    summary(args, f"wrote {args.output} ({len(tiles)} tiles of {size} px for a {w}x{h} image; "
                  f"{n} embedded now, {before} reused)")
    return EXIT_OK


# ============================================================================ auto / hierarchy
def run_tiled(args: argparse.Namespace, granularities: list[float], hierarchy: bool) -> int:
    """The tiled ``auto`` (one level) or ``hierarchy`` run: OME-Zarr and/or TIFF written block by block."""
    from unsamv2_engine.automatic.segmenter import AutomaticSegmenter
    from unsamv2_engine.cli.auto import settings_from_args
    from unsamv2_engine.tiling.auto import segment_tiled

    out = str(args.output).rstrip("/")
    if not out.endswith(".zarr"):
        check_output_suffix(args.output, "output", TIFF_SUFFIXES + (".zarr",))
    if getattr(args, "json", None):
        raise CliError("--json is not available for tiled runs (masks of a large image as RLE JSON "
                       "would not fit in memory); use --table for the objects' boxes, areas and scores")
    source, model, size, tiles = _open(args)
    preset, settings = settings_from_args(args, model.device)
    cache = _open_cache(args, args.embeddings, source, model, size) if args.embeddings else None
    h, w = source.shape_hw
    gs = ", ".join(f"{g:g}" for g in granularities)
    say(args, f"segmenting {args.image} ({w}x{h}) in {len(tiles)} tiles of {size} px (overlap "
              f"{args.overlap}) at g = {gs}; preset {preset}, {settings.points_per_side}x"
              f"{settings.points_per_side} points per tile")
    bar = _bar(args, len(tiles), "tile", "tiles")
    segmenter = AutomaticSegmenter(model, settings, decode_batch=args.points_per_batch)
    try:
        result, seconds = timed(lambda: segment_tiled(
            model, source, granularities, tile_size=size, overlap=args.overlap, hierarchy=hierarchy,
            containment=getattr(args, "containment", 0.5), segmenter=segmenter,
            progress=lambda done, total, tile: bar.update(done - bar.n),
            features=cache.lookup_to(model.device) if cache else None, store=cache.put if cache else None),
            model.device)
    finally:
        bar.close()
    meta = {"engine_version": engine_version(), "image": str(args.image), "image_shape": [h, w],
            "frame": args.frame, "contrast_limits": source.contrast_limits, "model": model.info.label,
            "device": str(model.device), "preset": preset, "settings": _asdict(settings),
            "granularities": granularities, "tile_size": size, "overlap": args.overlap,
            "tiles": len(tiles), "segment_s": seconds, "objects_per_level": [len(v) for v in result.levels]}
    from unsamv2_engine.tiling.auto import write_tiled_result

    write_tiled_result(args.output, result, meta, hierarchy=hierarchy)
    if getattr(args, "table", None):
        from unsamv2_engine.io import write_table_csv

        write_table_csv(args.table, result.table())
    counts = ", ".join(f"g {lev.granularity:g}: {len(lev)}" for lev in result.levels)
    summary(args, f"wrote {args.output} ({counts} objects; {len(tiles)} tiles in {seconds:.1f} s)")
    return EXIT_OK


def _asdict(settings):
    from dataclasses import asdict

    return asdict(settings)


# ============================================================================ segment
def _prompted_session(args: argparse.Namespace):
    """(ImageSource, model, TiledSession reading ``--embeddings`` if given, points, labels) for segment / sweep."""
    from unsamv2_engine.tiling.interactive import TiledSession

    source, model, size, _ = _open(args)
    points, labels = prompt_arrays(args, source.shape_hw)
    cache = _open_cache(args, args.embeddings, source, model, size) if args.embeddings else None
    session = TiledSession(model, source, tile_size=size, overlap=args.overlap, mask_threshold=args.mask_threshold,
                           features=cache.lookup_to(model.device) if cache else None)
    return source, model, session, points, labels


def run_tiled_segment(args: argparse.Namespace, granularity: float) -> int:
    """``unsamv2 segment`` on a large image: the click is decoded on a full-resolution tile (then a tile centred on
    the prompts, then coarser views if the object is larger), never on the whole image squashed.
    """
    from unsamv2_engine.io import write_labels

    check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    source, model, session, points, labels = _prompted_session(args)
    say(args, f"decoding at granularity {granularity:g} on {session.tile_size} px tiles ...")
    pred, decode_s = timed(lambda: session.predict(points, labels, granularity, m2m=args.m2m), model.device)
    say(args, pred.note)
    meta = {"granularity": granularity, "score": pred.score, "object_score": pred.object_score, "area": pred.area,
            "model": model.info.label, "points": points.tolist(), "labels": labels.tolist(),
            "mask_threshold": args.mask_threshold, "m2m": args.m2m, "view_box": list(pred.box), "view_step": pred.step,
            "note": pred.note, "tiles_embedded": session.embedded, "decode_s": decode_s}
    write_labels(args.output, pred.full_mask(source.shape_hw), metadata=meta)
    if getattr(args, "json", None):
        emit_json(args.json, {**meta, "output": str(args.output)})
    if pred.area == 0:
        warn(f"the mask is empty (object score {pred.object_score:.2f}): try another point, granularity "
             "or a lower --mask-threshold")
    summary(args, f"wrote {args.output} (area {pred.area} px, score {pred.score:.2f}, granularity "
                  f"{granularity:g}; {session.embedded} tile(s) embedded, view reduced {pred.step}x)")
    return EXIT_OK


def run_tiled_sweep(args: argparse.Namespace, granularities: list[float]) -> int:
    """``unsamv2 sweep`` on a large image: each granularity decoded on its own view (a part at full resolution
    on its tile, a whole that outgrows the tile on a coarser view), written page by page in tiles, so neither
    the image nor a page is ever whole in memory.
    """
    from unsamv2_engine.cli.sweep import print_pages
    from unsamv2_engine.outputs import staged_outputs

    source, model, session, points, labels = _prompted_session(args)
    say(args, f"decoding {len(granularities)} granularities on {session.tile_size} px tiles ...")
    preds, decode_s = timed(lambda: session.sweep(points, labels, granularities, m2m=args.m2m), model.device)
    rows = [{"page": i, "granularity": g, "area": p.area, "score": float(p.score),
             "object_score": float(p.object_score), "view_box": list(p.box), "view_step": p.step}
            for i, (g, p) in enumerate(zip(granularities, preds))]
    tags = {"granularities": granularities, "areas": [r["area"] for r in rows], "scores": [r["score"] for r in rows],
            "object_scores": [r["object_score"] for r in rows], "model": model.info.label, "points": points.tolist(),
            "labels": labels.tolist(), "mask_threshold": args.mask_threshold, "m2m": args.m2m}
    meta = {**tags, "pages": rows, "output": str(args.output), "table": args.table,
            "tiles_embedded": session.embedded, "timings": {"decode_s": decode_s}}
    from unsamv2_engine.io import write_table_csv

    with staged_outputs() as out:
        write_box_pages(out.path(args.output), source.shape_hw, [(p.mask, p.box) for p in preds], tags)
        if args.table:
            write_table_csv(out.path(args.table), rows, columns=["page", "granularity", "area", "score",
                                                                 "object_score"])
        emit_json(out.path(args.json), meta)
    for p in preds:
        if p.step > 1:
            say(args, p.note)
    print_pages(args, rows, args.table)
    return EXIT_OK


def write_box_pages(path: Any, image_hw: tuple[int, int], pages: list[tuple[Any, tuple[int, int, int, int]]],
                    metadata: dict[str, Any], tile: int = 1024) -> None:
    """A multi-page uint8 mask TIFF of ``image_hw``, page i = ``pages[i]`` (bool mask over its box (x0, y0, x1,
    y1), 0 elsewhere), written in ``tile`` px tiles: memory is one tile and the masks, never a page.
    """
    import numpy as np

    from unsamv2_engine.tiling.auto import write_tiled_pages

    def block(page: int, box: tuple[int, int, int, int]) -> np.ndarray:
        mask, (bx0, by0, bx1, by1) = pages[page]
        x, y, x1, y1 = box
        out = np.zeros((y1 - y, x1 - x), np.uint8)
        ix0, iy0, ix1, iy1 = max(x, bx0), max(y, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = mask[iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0]
        return out

    write_tiled_pages(path, image_hw, len(pages), block, np.uint8, metadata, tile=tile)
