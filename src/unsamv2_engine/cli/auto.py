"""The ``unsamv2 auto`` and ``unsamv2 hierarchy`` commands: whole-image segmentation.

::

    unsamv2 auto IMAGE --granularity G -o LABELS.tif [--json MASKS.json]
    unsamv2 hierarchy IMAGE --granularities 0.3,0.6,1.0|START:STOP:N -o HIERARCHY.tif [--table TREE.csv]
        [--json MASKS.json]

both with the model options of ``segment`` (``--checkpoint/--model/--adapter/--device/--download/
--allow-base-mismatch``), ``--preset authors|cpu`` and the settings overrides (``--points-per-side``,
``--pred-iou-thresh`` ...), or ``--server URL`` (computed by an ``unsamv2 serve`` engine,
:mod:`unsamv2_engine.cli.remote`). See ``docs/whole-image.md`` and ``docs/cli.md``.

Wiring: :func:`register` adds both commands, with the shared option groups of
:mod:`unsamv2_engine.cli.options`. This module imports the standard library only (``unsamv2 auto
--help`` never loads torch); the engine is imported inside the command functions.
Errors a user can fix are raised as ``CliError`` or another ``UnSAMv2Error`` (one line on stderr,
exit 2); Ctrl-C ends the command with exit code 130 (handled by :func:`unsamv2_engine.cli.main`)
without writing an output file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unsamv2_engine.cli.loading import (
    TIFF_SUFFIXES,
    check_command_outputs,
    check_output_suffix,
    load_model,
    read_image,
    resolve_device,
    resolve_model_file,
    timed,
)
from unsamv2_engine.cli.options import (
    add_common_options,
    add_image_options,
    add_model_options,
    add_server_option,
    finite_float,
    fraction,
    non_negative_int,
    open_fraction,
    parse_granularities,
    positive_float,
    positive_int,
    subparser,
)
from unsamv2_engine.cli.output import EXIT_OK, CliError, engine_version, say, summarise_hierarchy, summary, warn

__all__ = ["MAX_LEVELS", "PRESETS", "register", "run_auto", "run_hierarchy"]

PRESETS = ("authors", "cpu")
#: More levels than this is refused: every level decodes the whole grid again.
MAX_LEVELS = 20
HIERARCHY_SUFFIXES = (".tif", ".tiff", ".zarr")

# argparse dest -> AutoSettings field, for the settings overrides.
_SETTING_FIELDS = {
    "points_per_side": "points_per_side",
    "points_per_batch": "points_per_batch",
    "pred_iou_thresh": "pred_iou_thresh",
    "stability_thresh": "stability_score_thresh",
    "stability_offset": "stability_score_offset",
    "mask_threshold": "mask_threshold",
    "box_nms_thresh": "box_nms_thresh",
    "crop_layers": "crop_n_layers",
    "min_region_area": "min_mask_region_area",
    "m2m": "use_m2m",
}

_AUTO_EPILOG = """\
presets (default: authors on CUDA, cpu elsewhere):
  authors  the UnSAMv2 evaluation settings: 64x64 points, mask threshold -1, stability offset 0.7,
           M2M refinement, per-g filters (g < 0.5: predicted IoU > 0.65, else > 0.5; stability >= 0.7)
  cpu      the same filters with 16x16 points and no M2M pass (32x less decoder work)

examples:
  unsamv2 auto cells.png --granularity 0.5 -o labels.tif --json masks.json
  unsamv2 auto cells.tif -g 1.0 --preset authors --device cuda -o cells_labels.tif
"""

_HIERARCHY_EPILOG = """\
One image embedding and one point grid serve every level. Each object's parent is the object of
the next coarser level (larger g) covering the largest share of it, if that share is >= --containment;
children are then clipped to their parents, so child pixels always lie inside the parent.

examples:
  unsamv2 hierarchy cells.png --granularities 0.3,0.6,1.0 -o hierarchy.tif --table tree.csv
  unsamv2 hierarchy cells.png --granularities 0.1:1.0:10 -o hierarchy.tif --json masks.json
"""


# ============================================================================ parser
def register(subparsers: Any) -> None:
    """Add ``auto`` and ``hierarchy`` to the ``unsamv2`` subparsers."""
    from unsamv2_engine.cli.batch import add_batch_options  # standard library only
    from unsamv2_engine.cli.embed import add_tiling_options  # standard library only

    auto = subparser(
        subparsers, "auto", "segment every object of an image at one granularity",
        "Segment the whole image at granularity G: prompt the model with a grid of points, keep the "
        "masks that pass the quality filters, remove duplicates, and write an instance label TIFF "
        "(0 = background, 1..N by decreasing score; larger masks are painted first so smaller ones "
        "on top stay visible).", _AUTO_EPILOG)
    auto.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG, JPEG, OME-Zarr; or a folder or "
                      "quoted glob of them (a batch: -o, --json name folders)")
    auto.add_argument("--granularity", "-g", type=float, required=True, metavar="G",
                      help="0.1 (smallest parts) .. 1.0 (whole objects)")
    auto.add_argument("-o", "--output", required=True, metavar="LABELS.tif", help="instance label TIFF to write")
    auto.add_argument("--json", metavar="MASKS.json",
                      help="also write every mask (overlaps kept) as COCO JSON with compressed RLE ('-': stdout)")
    add_image_options(auto.add_argument_group("image"))
    _add_settings_options(auto)
    add_tiling_options(auto)
    add_batch_options(auto)
    add_model_options(auto)
    add_server_option(auto)
    add_common_options(auto)
    auto.set_defaults(func=run_auto)

    tree = subparser(
        subparsers, "hierarchy", "nested label images at several granularities + parent table",
        "Segment the whole image at every granularity (one embedding and one point grid for all "
        "levels) and nest the results: a multi-page label TIFF with one page per granularity in the "
        "order given, label ids unique across pages, every object inside its parent on the next "
        "coarser page, and a table of label, level, granularity, parent, area, score.",
        _HIERARCHY_EPILOG)
    tree.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG, JPEG, OME-Zarr; or a folder or "
                      "quoted glob of them (a batch: -o, --table, --json name folders)")
    tree.add_argument("--granularities", type=parse_granularities, required=True,
                      metavar="G1,G2,...|START:STOP:N",
                      help=f"a list (0.3,0.6,1.0) or N values from START to STOP inclusive (0.1:1.0:10); "
                           f"at most {MAX_LEVELS}")
    tree.add_argument("-o", "--output", required=True, metavar="HIERARCHY.tif",
                      help="hierarchy to write: a multi-page label TIFF (.tif) or a zarr group (.zarr)")
    tree.add_argument("--table", metavar="TREE.csv",
                      help="also write the table (label, level, granularity, parent, area, score) as CSV")
    tree.add_argument("--json", metavar="MASKS.json",
                      help="also write every object of every level as COCO JSON (compressed RLE, with "
                           "granularity, level, label, parent) ('-': stdout)")
    tree.add_argument("--containment", type=open_fraction, default=0.5, metavar="F",
                      help="share of an object that its parent must cover (default: 0.5)")
    add_image_options(tree.add_argument_group("image"))
    _add_settings_options(tree)
    add_tiling_options(tree)
    add_batch_options(tree)
    add_model_options(tree)
    add_server_option(tree)
    add_common_options(tree)
    tree.set_defaults(func=run_hierarchy)


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "whole-image settings", "Each option overrides the --preset's value (as in sam2's automatic mask generator).")
    group.add_argument("--preset", choices=PRESETS,
                       help="starting settings: authors (64x64 points, M2M) or cpu (16x16, no M2M); "
                            "default: authors on CUDA, cpu elsewhere")
    group.add_argument("--points-per-side", type=positive_int, metavar="N",
                       help="an N x N grid of point prompts (authors 64, cpu 16)")
    group.add_argument("--points-per-batch", type=positive_int, metavar="N",
                       help="points decoded per decoder call (default: 8 on CPU, the preset's 128 or 32 on a GPU)")
    group.add_argument("--pred-iou-thresh", type=fraction, metavar="T",
                       help="keep masks whose predicted IoU is > T; 0 keeps all (default: 0.65 for g < 0.5, "
                            "else 0.5)")
    group.add_argument("--stability-thresh", type=fraction, metavar="T",
                       help="keep masks whose stability score is >= T; 0 keeps all (default: 0.7)")
    group.add_argument("--stability-offset", type=positive_float, metavar="O",
                       help="stability = IoU of the masks at mask threshold + O and - O (default: 0.7)")
    group.add_argument("--mask-threshold", type=finite_float, metavar="T",
                       help="logits above T are foreground (default: -1.0, the authors' value)")
    group.add_argument("--box-nms-thresh", type=open_fraction, metavar="T",
                       help="drop a mask whose box overlaps a better one's with IoU > T; 1 keeps all "
                            "(default: 0.7)")
    group.add_argument("--crop-layers", type=non_negative_int, metavar="N",
                       help="also segment 2x2, 4x4 ... overlapping crops, N layers (default: 0; each crop "
                            "costs one more image embedding)")
    group.add_argument("--min-region-area", type=non_negative_int, metavar="PX",
                       help="fill holes and remove islands smaller than PX pixels in every mask (default: 0)")
    group.add_argument("--m2m", action=argparse.BooleanOptionalAction, default=None,
                       help="refine every mask with a second decoder pass fed the first mask (authors: on, "
                            "cpu: off)")


# ============================================================================ commands
def run_auto(args: argparse.Namespace) -> int:
    """``unsamv2 auto``: every object at one granularity -> instance label TIFF (+ COCO JSON)."""
    from unsamv2_engine.prompts import check_granularity

    granularity = check_granularity(args.granularity)
    if args.server:
        from unsamv2_engine.cli import remote

        remote.check_whole_image_options(args)
        check_output_suffix(args.output, "output", TIFF_SUFFIXES)
        check_command_outputs(args, {"-o": args.output, "--json": args.json})
        return remote.auto(args, granularity)
    from unsamv2_engine.cli.batch import run_batch  # a folder or glob of images

    if (code := run_batch(args, "auto")) is not None:
        return code
    check_command_outputs(args, {"-o": args.output, "--json": args.json})
    from unsamv2_engine.cli.embed import run_tiled, wants_tiles  # large images: tile by tile

    if wants_tiles(args):
        return run_tiled(args, [granularity], hierarchy=False)
    check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    job = _Job.prepare(args, [granularity])
    if job.uniform:
        levels = [_empty_result(granularity, job.hw, job.settings)]
    else:
        levels = job.segment()
    result = levels[0]
    import numpy as np

    from unsamv2_engine.io import write_labels

    labels = result.label_image() if len(result) else np.zeros(job.hw, np.uint8)
    n_visible = int(len(np.unique(labels[labels > 0])))
    counts = {"masks": len(result), "visible": n_visible, "empty": int(np.count_nonzero(result.areas == 0))}
    meta = {**job.metadata(), "granularity": granularity,
            "thresholds": _thresholds(job.settings, granularity), "counts": counts,
            "scores": result.scores, "stability": result.stability, "areas": result.areas}
    from unsamv2_engine.outputs import staged_outputs

    with staged_outputs() as out:
        write_labels(out.path(args.output), labels, metadata=meta)
        if args.json:
            from unsamv2_engine.automatic.hierarchy import masks_to_coco

            document = masks_to_coco(result, file_name=str(args.image), info={
                **job.metadata(), "granularity": granularity, "output": str(args.output)})
            _emit_coco(out.path(args.json), document)
    if len(result) == 0 and not job.uniform:
        warn("no mask passed the filters: try lower --pred-iou-thresh / --stability-thresh, another "
             "granularity or --preset authors")
    summary(args, f"wrote {args.output} ({counts['masks']} objects, {n_visible} visible, granularity "
                  f"{granularity:g})" + (f" and {args.json}" if args.json and args.json != "-" else ""))
    return EXIT_OK


def run_hierarchy(args: argparse.Namespace) -> int:
    """``unsamv2 hierarchy``: every object at several granularities -> nested hierarchy (+ CSV, COCO JSON)."""
    from unsamv2_engine.prompts import check_granularities

    if len(args.granularities) > MAX_LEVELS:
        raise CliError(
            f"{len(args.granularities)} granularities asked; give at most {MAX_LEVELS} (every level decodes the "
            f"whole point grid again and the pages get hard to read), e.g. 0.1:1.0:10 or 0.3,0.6,1.0")
    granularities = check_granularities(args.granularities)
    from unsamv2_engine.cli.batch import run_batch  # a folder or glob of images

    if not args.server and (code := run_batch(args, "hierarchy")) is not None:
        return code
    check_output_suffix(args.output, "output", HIERARCHY_SUFFIXES)
    if args.table:
        check_output_suffix(args.table, "--table", (".csv",))
    check_command_outputs(args, {"-o": args.output, "--table": args.table, "--json": args.json})
    if len(set(granularities)) < len(granularities):
        warn("some granularities are repeated: their pages will hold the same objects")
    if args.server:
        from unsamv2_engine.cli import remote

        return remote.hierarchy(args, granularities)
    from unsamv2_engine.cli.embed import run_tiled, wants_tiles  # large images: tile by tile

    if wants_tiles(args):
        return run_tiled(args, granularities, hierarchy=True)
    job = _Job.prepare(args, granularities)
    if job.uniform:
        levels = [_empty_result(g, job.hw, job.settings) for g in granularities]
    else:
        levels = job.segment()
    from unsamv2_engine.automatic.hierarchy import levels_to_hierarchy

    say(args, "nesting the levels ...")
    hierarchy = levels_to_hierarchy(levels, containment=args.containment, metadata={
        **job.metadata(), "containment": args.containment,
        "thresholds": [_thresholds(job.settings, g) for g in granularities],
        "masks_per_level": [len(level) for level in levels]})
    from unsamv2_engine.io.hierarchy import write_hierarchy
    from unsamv2_engine.outputs import staged_outputs

    with staged_outputs() as out:
        write_hierarchy(out.path(args.output), hierarchy, table_csv=out.path(args.table) if args.table else None)
        if args.json:
            from unsamv2_engine.automatic.hierarchy import hierarchy_to_coco

            _emit_coco(out.path(args.json), hierarchy_to_coco(hierarchy, file_name=str(args.image),
                                                              info=hierarchy.metadata))
    summarise_hierarchy(args, hierarchy.table, list(granularities), [len(level) for level in levels])
    return EXIT_OK


# ============================================================================ shared work
class _Job:
    """Validated inputs, chosen settings and the loaded model of one ``auto`` / ``hierarchy`` run."""

    image: Any  # np.ndarray as stored (after --frame)
    rgb8: Any  # np.ndarray [H, W, 3] uint8, what the model sees
    hw: tuple[int, int]
    checkpoint: Any  # Path
    source: str
    device: Any  # torch.device
    preset: str
    settings: Any  # AutoSettings
    uniform: bool  # nothing to segment: the model is not loaded

    def __init__(self, args: argparse.Namespace, granularities: list[float]) -> None:
        self.args = args
        self.granularities = granularities
        self.model: Any = None
        self.timings: dict[str, float] = {}

    @classmethod
    def prepare(cls, args: argparse.Namespace, granularities: list[float]) -> _Job:
        """Every cheap check (image, model file, device, settings) before the model is loaded."""
        job = cls(args, granularities)
        job.image, job.rgb8 = read_image(args)
        job.hw = tuple(int(s) for s in job.rgb8.shape[:2])
        if min(job.hw) < 2:
            raise CliError(f"{args.image} is {job.hw[1]}x{job.hw[0]} pixels: too small to segment")
        job.checkpoint, job.source = resolve_model_file(args)
        job.device = resolve_device(args.device)
        job.preset, job.settings = settings_from_args(args, job.device)
        lo, hi = int(job.rgb8.min()), int(job.rgb8.max())
        job.uniform = lo == hi
        if job.uniform:
            warn(f"{args.image} is uniform (every pixel is {lo} after intensity mapping): there is "
                 "nothing to segment; writing an empty result")
            return job
        default = f" (default on {job.device.type})" if args.preset is None else ""
        side = job.settings.points_per_side
        say(args, f"settings: preset {job.preset}{default}, {side}x{side} points, "
                  f"m2m {'on' if job.settings.use_m2m else 'off'}" + _overrides_text(args))
        say(args, f"loading {job.source} on {job.device} ...")
        job.model, job.timings["load_s"] = timed(
            lambda: load_model(job.checkpoint, source=job.source, device=job.device, adapter=args.adapter,
                               allow_base_mismatch=args.allow_base_mismatch), job.device)
        if not job.model.has_granularity:
            warn("this model has no granularity module (plain SAM 2.1): every granularity gives SAM's "
                 "own three candidate masks per point; only the per-g filters differ")
        return job

    def segment(self) -> list[Any]:
        """Run the segmenter over every granularity, with a progress bar on stderr."""
        from unsamv2_engine.automatic.segmenter import AutomaticSegmenter

        args, s = self.args, self.settings
        segmenter = AutomaticSegmenter(self.model, s, decode_batch=args.points_per_batch)
        gs = ", ".join(f"{g:g}" for g in self.granularities)
        say(args, f"segmenting {args.image} ({self.hw[1]}x{self.hw[0]}) at g = {gs} ...")
        from tqdm import tqdm

        bars: list[Any] = []  # made at the first report, when the total is known

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, disable=args.quiet, file=sys.stderr, unit="pt", desc="decoding",
                                 dynamic_ncols=True))
            bars[0].update(done - bars[0].n)

        try:
            levels, self.timings["segment_s"] = timed(
                lambda: segmenter.generate_levels(self.rgb8, self.granularities, progress=progress), self.device)
        finally:
            for bar in bars:
                bar.close()
        return levels

    def metadata(self) -> dict[str, Any]:
        """What every output records: image, model, settings, timings."""
        from dataclasses import asdict


        model = self.model
        return {
            "engine_version": engine_version(),
            "image": str(self.args.image),
            "image_shape": list(self.image.shape),
            "frame": self.args.frame,
            "contrast_limits": list(self.args.contrast_limits) if self.args.contrast_limits else None,
            "model": model.info.label if model is not None else str(self.source),
            "model_family": model.info.family if model is not None else None,
            "checkpoint": str(self.checkpoint),
            "adapter": str(self.args.adapter) if self.args.adapter else None,
            "device": str(self.device),
            "preset": self.preset,
            "settings": asdict(self.settings),
            "timings": dict(self.timings),
        }


def settings_from_args(args: argparse.Namespace, device: Any) -> tuple[str, Any]:
    """(preset name, AutoSettings): the preset (default by device) with the given overrides, validated."""
    from unsamv2_engine.automatic.settings import AutoSettings

    preset = args.preset or ("authors" if device.type == "cuda" else "cpu")
    overrides = {field: getattr(args, dest) for dest, field in _SETTING_FIELDS.items()}
    settings = AutoSettings.preset(preset).with_(**overrides)
    settings.validate()
    return preset, settings


def _overrides_text(args: argparse.Namespace) -> str:
    given = [f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest in _SETTING_FIELDS
             if getattr(args, dest) is not None and dest not in ("points_per_side", "m2m")]
    return f"; overrides: {', '.join(given)}" if given else ""


def _thresholds(settings: Any, granularity: float | None) -> dict[str, float]:
    iou, stability = settings.thresholds_for(granularity)
    return {"pred_iou": iou, "stability": stability}


def _empty_result(granularity: float | None, hw: tuple[int, int], settings: Any) -> Any:
    """An :class:`AutoMasks` with no mask (for a uniform image)."""
    import numpy as np

    from unsamv2_engine.automatic.segmenter import AutoMasks

    return AutoMasks(granularity, np.zeros((0, *hw), bool), np.zeros(0, np.float32), np.zeros(0, np.float32),
                     np.zeros((0, 4), np.int64), np.zeros((0, 2), np.float32), settings)


def _emit_coco(path: str, document: dict[str, Any]) -> None:
    """Write a COCO document to ``path`` (``-``: stdout)."""
    from unsamv2_engine.io import to_jsonable

    if path == "-":
        print(json.dumps(to_jsonable(document), separators=(",", ":")))
        return
    from unsamv2_engine.io.coco import write_coco

    write_coco(path, to_jsonable(document))

