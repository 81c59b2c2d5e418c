"""``unsamv2 segment``: one object at one granularity -> label TIFF (+ JSON).

Also home of what ``segment`` and ``sweep`` share: :func:`prepare` (validated inputs, loaded model,
embedded image) and :func:`base_metadata`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsamv2_engine.cli import loading
from unsamv2_engine.cli.loading import TIFF_SUFFIXES, check_command_outputs, check_output_suffix, timed
from unsamv2_engine.cli.options import (
    add_common_options,
    add_model_options,
    add_prompt_options,
    add_server_option,
    finish,
    subparser,
)
from unsamv2_engine.cli.output import EXIT_OK, emit_json, engine_version, say, summary, warn

if TYPE_CHECKING:  # only for annotations; never imported at run time here
    import numpy as np

    from unsamv2_engine.model.build import UnSAMv2Model
    from unsamv2_engine.session import ImageSession

#: The option groups ``segment`` and ``sweep`` add after their own options.
INFERENCE_OPTIONS = [add_prompt_options, add_model_options, add_server_option, add_common_options]


def register(sub: Any) -> None:
    """Add ``segment`` to the ``unsamv2`` subparsers."""
    from unsamv2_engine.cli.embed import add_tiling_options

    parser = subparser(
        sub, "segment", "segment one object at one granularity",
        "Segment the object under the point prompts at granularity G and write a label TIFF "
        "(foreground = 1, uint8).",
        "example:\n  unsamv2 segment cells.png --point 40,40 --granularity 0.4 -o mask.tif --json mask.json")
    parser.add_argument("image", metavar="IMAGE", help="input image: TIFF, PNG or JPEG")
    parser.add_argument("--granularity", "-g", type=float, required=True, metavar="G",
                        help="0.1 (smallest parts) .. 1.0 (whole objects)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="label TIFF to write")
    parser.add_argument("--json", metavar="META.json", help="also write the result's metadata as JSON ('-': stdout)")
    add_tiling_options(parser)
    finish(parser, INFERENCE_OPTIONS, run)


def run(args: argparse.Namespace) -> int:
    """``unsamv2 segment``: one object at one granularity -> label TIFF (+ JSON)."""
    from unsamv2_engine.outputs import staged_outputs
    from unsamv2_engine.prompts import check_granularity, check_mask_threshold

    check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    granularity = check_granularity(args.granularity)
    check_mask_threshold(args.mask_threshold)
    check_command_outputs(args, {"-o": args.output, "--json": args.json})
    if args.server:
        from unsamv2_engine.cli import remote

        return remote.segment(args, granularity)
    from unsamv2_engine.cli.embed import run_tiled_segment, wants_tiles  # large images: decoded on a tile

    if wants_tiles(args):
        return run_tiled_segment(args, granularity)
    job = prepare(args)
    say(args, f"decoding at granularity {granularity:g} ...")
    pred, decode_s = timed(lambda: job.session.predict(job.points, job.labels, granularity, m2m=args.m2m),
                           job.device)
    meta = {**base_metadata(args, job), "granularity": granularity, "score": pred.score,
            "object_score": pred.object_score, "area": pred.area}
    from unsamv2_engine.io import write_labels

    meta["output"] = str(args.output)
    meta["timings"] = {"load_s": job.load_s, "embed_s": job.embed_s, "decode_s": decode_s}
    with staged_outputs() as out:
        write_labels(out.path(args.output), pred.mask, metadata={k: meta[k] for k in (
            "granularity", "score", "object_score", "area", "model", "points", "labels", "mask_threshold", "m2m")})
        emit_json(out.path(args.json), meta)
    if pred.area == 0:
        warn(f"the mask is empty (object score {pred.object_score:.2f}): try another point, granularity "
             "or a lower --mask-threshold")
    summary(args, f"wrote {args.output} (area {pred.area} px, score {pred.score:.2f}, granularity "
                  f"{granularity:g})")
    return EXIT_OK


# ============================================================================ shared with sweep
@dataclass
class PromptRun:
    """What ``segment`` and ``sweep`` share once the model is loaded and the image embedded."""

    image: np.ndarray  # as stored in the file (after --frame)
    points: np.ndarray  # [N, 2] float32 (x, y)
    labels: np.ndarray  # [N] int32
    checkpoint: Path
    device: Any  # torch.device
    model: UnSAMv2Model
    session: ImageSession
    load_s: float
    embed_s: float


def prepare(args: argparse.Namespace) -> PromptRun:
    """Everything ``segment`` and ``sweep`` share: validated inputs, loaded model, embedded image.

    Every cheap check (image, points, output names, model file) runs before the model is loaded.
    """
    image, rgb8 = loading.read_image(args)
    points, labels = loading.prompt_arrays(args, rgb8.shape[:2])
    refuse_uniform(args, image, rgb8)
    loaded = loading.load_model_from_args(args)
    model = loaded.model
    if not model.has_granularity:
        warn("this model has no granularity module (plain SAM 2.1): the granularity picks one of SAM's "
             "three candidate masks (g < 0.4 smallest, g < 0.7 middle, else largest)")
    from unsamv2_engine.session import ImageSession

    session = ImageSession(model, mask_threshold=args.mask_threshold)
    say(args, f"embedding {args.image} ({rgb8.shape[1]}x{rgb8.shape[0]}) ...")
    _, embed_s = timed(lambda: session.set_image(rgb8), loaded.device)
    return PromptRun(image=image, points=points, labels=labels, checkpoint=loaded.checkpoint, device=loaded.device,
                     model=model, session=session, load_s=loaded.load_s, embed_s=embed_s)


def refuse_uniform(args: argparse.Namespace, image: np.ndarray, rgb8: np.ndarray) -> None:
    """Refuse a uniform image (constant, all NaN, or flattened by --contrast-limits): it has nothing to segment.

    Saying so keeps the prompt, granularity or threshold from taking the blame for an empty mask.
    """
    import numpy as np

    lo, hi = int(rgb8.min()), int(rgb8.max())
    if lo != hi:
        return
    from unsamv2_engine.errors import ImageError

    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        what = "has no finite value (all NaN or infinite)"
    elif args.contrast_limits and image.min() != image.max():
        what = f"is uniform after --contrast-limits {args.contrast_limits[0]:g},{args.contrast_limits[1]:g}"
    else:
        what = f"is uniform (every pixel is {image.reshape(-1)[0].item()!r})"
    raise ImageError(f"{args.image}{'' if args.frame is None else f' frame {args.frame}'} {what}: there is nothing "
                     "to segment; check the file" + (", --frame" if args.frame is not None else "")
                     + " or --contrast-limits")


def base_metadata(args: argparse.Namespace, run: PromptRun) -> dict[str, Any]:
    """JSON fields shared by ``segment`` and ``sweep``."""
    model = run.model
    return {
        "engine_version": engine_version(),
        "image": str(args.image),
        "image_shape": list(run.image.shape),
        "image_dtype": str(run.image.dtype),
        "frame": args.frame,
        "contrast_limits": list(args.contrast_limits) if args.contrast_limits else None,
        "points": run.points.tolist(),
        "labels": run.labels.tolist(),
        "mask_threshold": args.mask_threshold,
        "m2m": bool(args.m2m),
        "model": model.info.label,
        "model_family": model.info.family,
        "model_size": model.info.size,
        "checkpoint": str(run.checkpoint),
        "adapter": str(args.adapter) if args.adapter else None,
        "device": str(run.device),
    }
