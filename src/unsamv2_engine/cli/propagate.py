"""The ``unsamv2 propagate`` command: objects prompted on a few slices, tracked through a stack.

::

    unsamv2 propagate STACK.tif --point Z,X,Y[,pos|neg][@ID] ... --granularity G|ID=G ...
        [--axis 0] [--channel-axis C] [--direction both|forward|backward] -o LABELS.tif
        [--scores SCORES.csv] [--json META.json]

with the model options of ``segment`` (``--checkpoint/--model/--adapter/--device/--download/
--allow-base-mismatch``), or ``--server URL`` (an ``unsamv2 serve`` engine). Z is the slice index
along ``--axis``, X the column and Y the row of the remaining 2D frame. Points belong to object 1
unless ``@ID`` names another object (ids >= 1 become label values). ``--granularity G`` sets every
object's g; ``--granularity ID=G`` (repeatable) sets one object's, and overrides a plain G for that
object. See ``docs/propagation.md``.

This module imports the standard library only (``unsamv2 propagate --help`` never loads torch); the
engine is imported inside :func:`run`. User errors are ``CliError`` / ``ValueError`` /
``OSError`` (one line on stderr, exit 2), checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unsamv2_engine.cli.loading import (
    TIFF_SUFFIXES,
    check_command_outputs,
    check_output_suffix,
    load_model_from_args,
    timed,
)
from unsamv2_engine.cli.options import (
    add_common_options,
    add_model_options,
    add_server_option,
    finite_float,
    parse_contrast_limits,
    parse_point,
    positive_int,
    subparser,
)
from unsamv2_engine.cli.output import EXIT_OK, CliError, emit_json, engine_version, say, summary, warn

__all__ = ["parse_granularity_option", "parse_stack_point", "register", "run"]

DIRECTION_CHOICES = ("both", "forward", "backward")  # mirrors unsamv2_engine.video.data.DIRECTIONS

_EPILOG = """\
Slices prompted for an object are conditioning slices (their mask is what 'unsamv2 segment' gives for
the same points and g); the other slices are tracked from them with the model's memory, the object's
granularity token passed on every slice. Directions, per object: forward = from its first prompted
slice to the end; backward = from its last prompted slice to slice 0; both = forward, then backward
from the first prompted slice.

examples:
  unsamv2 propagate stack.tif --point 12,140,96 --granularity 0.6 -o labels.tif
  unsamv2 propagate stack.tif --point 12,140,96@1 --point 12,60,40@2 --point 20,62,44@2 \\
      --granularity 1=0.4 --granularity 2=1.0 --scores scores.csv -o labels.tif
  unsamv2 propagate movie.tif --axis 0 --channel-axis -1 --point 0,200,150 -g 0.8 \\
      --direction forward -o tracks.tif --json tracks.json
"""


# ============================================================================ value parsers
def parse_stack_point(text: str) -> tuple[int, float, float, int, int]:
    """``"Z,X,Y[,LABEL][@ID]"`` -> ``(z, x, y, label, object_id)``; LABEL as ``--point`` of segment."""
    body, _, ident = text.partition("@")
    object_id = 1
    if ident:
        try:
            object_id = int(ident)
        except ValueError:
            raise argparse.ArgumentTypeError(f"object id after @ must be a whole number >= 1, got {text!r}") from None
        if object_id < 1:
            raise argparse.ArgumentTypeError(f"object id after @ must be >= 1 (0 is background), got {text!r}")
    z_text, _, rest = body.partition(",")
    try:
        z = int(z_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Z,X,Y[,pos|neg][@ID] with Z a slice index (whole number), got {text!r}") from None
    try:
        x, y, label = parse_point(rest)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (in Z,X,Y[,pos|neg][@ID] {text!r})") from None
    return z, x, y, label, object_id


def parse_granularity_option(text: str) -> tuple[int | None, float]:
    """``"G"`` (every object) or ``"ID=G"`` (object ID) -> ``(id or None, g)``; the range is checked later."""
    ident, sep, value = text.partition("=")
    if not sep:
        ident, value = "", text
    object_id = None
    if ident:
        try:
            object_id = int(ident)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected G or ID=G (e.g. 0.6 or 2=0.6), got {text!r}") from None
    try:
        return object_id, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"granularity must be a number (G or ID=G), got {text!r}") from None


# ============================================================================ parser
def register(subparsers: Any) -> None:
    """Add ``propagate`` to the ``unsamv2`` subparsers."""
    parser = subparser(
        subparsers, "propagate", "track objects through a z-stack or time-lapse at a granularity",
        "Segment objects prompted with points on one or more slices of a stack and propagate them through "
        "the other slices with SAM 2's video memory, at each object's granularity. Writes an instance label "
        "TIFF with the stack's shape (without channels): 0 = background, object ids as labels; where objects "
        "overlap the one with the highest logit wins.", _EPILOG)
    parser.add_argument("stack", metavar="STACK", help="input stack: a TIFF holding [Z, H, W], [T, H, W] or 4D with "
                                                       "channels")
    group = parser.add_argument_group("prompts")
    group.add_argument("--point", metavar="Z,X,Y[,pos|neg][@ID]", action="append", type=parse_stack_point,
                       required=True,
                       help="a point on slice Z (along --axis) at column X, row Y; pos (default) or neg; @ID "
                            "assigns it to object ID (default 1). Repeat for more points, slices and objects")
    group.add_argument("--granularity", "-g", metavar="G|ID=G", action="append", type=parse_granularity_option,
                       required=True,
                       help="0.1 (smallest parts) .. 1.0 (whole objects): G for every object, ID=G for one "
                            "object (repeatable)")
    group.add_argument("--direction", choices=DIRECTION_CHOICES, default="both",
                       help="which slices to track from the prompted ones (default: both)")
    group.add_argument("--mask-threshold", type=finite_float, default=-1.0, metavar="T",
                       help="logits above T are foreground (default: -1.0, the authors' video value)")
    stack = parser.add_argument_group("stack")
    stack.add_argument("--axis", type=int, default=0, metavar="AXIS",
                       help="the z or t axis of the stack to propagate along (default: 0); the other two "
                            "spatial axes are the frame's rows and columns")
    stack.add_argument("--channel-axis", type=int, metavar="AXIS",
                       help="for a 4D stack: its channel axis (default: the last); 1 channel = grey, 2 = red and "
                            "green, 3 or more = the first three as RGB")
    stack.add_argument("--contrast-limits", type=parse_contrast_limits, metavar="LO,HI",
                       help="intensity range mapped to 0..255 for the model, the same for every slice (default: "
                            "the whole stack's min..max; 8-bit stacks are used as they are)")
    stack.add_argument("--max-cached-frames", type=positive_int, default=8, metavar="N",
                       help="frame embeddings kept in memory (default: 8; about 16 MiB each)")
    out = parser.add_argument_group("outputs")
    out.add_argument("-o", "--output", required=True, metavar="LABELS.tif", help="label TIFF to write")
    out.add_argument("--scores", metavar="SCORES.csv",
                     help="also write per-slice scores (slice, object, predicted IoU, object score) as CSV")
    out.add_argument("--json", metavar="META.json", help="also write the run's metadata as JSON ('-': stdout)")
    add_model_options(parser)
    add_server_option(parser)
    add_common_options(parser)
    parser.set_defaults(func=run)


# ============================================================================ command
def _object_granularities(args: argparse.Namespace, object_ids: list[int]) -> dict[int, float]:
    from unsamv2_engine.prompts import check_granularity

    default = None
    per_object: dict[int, float] = {}
    for object_id, g in args.granularity:
        if object_id is None:
            default = g
        else:
            if object_id not in object_ids:
                raise CliError(f"--granularity {object_id}={g:g} names object {object_id}, which has no "
                               f"--point (objects: {', '.join(map(str, object_ids))})")
            per_object[object_id] = g
    result = {}
    for object_id in object_ids:
        g = per_object.get(object_id, default)
        if g is None:
            raise CliError(f"object {object_id} has no granularity: add --granularity G (all objects) or "
                           f"--granularity {object_id}=G")
        result[object_id] = check_granularity(g)
    return result


def _prompts(args: argparse.Namespace) -> list[Any]:
    """One ObjectPrompt per (object, slice), in the order given."""
    import numpy as np

    from unsamv2_engine.video.data import ObjectPrompt

    grouped: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for z, x, y, label, object_id in args.point:
        grouped.setdefault((object_id, z), []).append((x, y, label))
    object_ids = sorted({object_id for object_id, _ in grouped})
    granularity = _object_granularities(args, object_ids)
    return [ObjectPrompt(object_id, z, np.array([(x, y) for x, y, _ in pts], np.float64),
                         np.array([label for _, _, label in pts], np.int64), granularity[object_id])
            for (object_id, z), pts in grouped.items()]


def _check_prompts_cheaply(prompts: list[Any], layout: Any) -> None:
    """Slice ranges and point positions, before the model is loaded (the session checks them again)."""
    from unsamv2_engine.prompts import PromptError, check_points

    for prompt in prompts:
        if not 0 <= prompt.frame < layout.n_frames:
            raise PromptError(f"--point slice {prompt.frame} (object {prompt.object_id}) is outside the stack: it has "
                              f"{layout.n_frames} slices along --axis {layout.axis} (0 .. {layout.n_frames - 1})")
        try:
            check_points(prompt.points_xy, prompt.labels, layout.frame_hw)
        except PromptError as exc:
            raise PromptError(f"object {prompt.object_id}, slice {prompt.frame}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """``unsamv2 propagate``: prompts on slices -> label volume TIFF (+ scores CSV, JSON)."""
    check_output_suffix(args.output, "output", TIFF_SUFFIXES)
    if args.scores:
        check_output_suffix(args.scores, "--scores", (".csv",))
    prompts = _prompts(args)
    check_command_outputs(args, {"-o": args.output, "--scores": args.scores, "--json": args.json},
                          inputs={"STACK": args.stack})
    from unsamv2_engine.io import read_image
    from unsamv2_engine.video.layout import stack_layout

    stack = read_image(args.stack)
    layout = stack_layout(stack.shape, args.axis, args.channel_axis)
    _check_prompts_cheaply(prompts, layout)
    if args.server:
        from unsamv2_engine.cli import remote

        return remote.propagate(args, stack, layout, prompts)
    loaded = load_model_from_args(args)
    model, path, source, device, load_s = loaded.model, loaded.checkpoint, loaded.source, loaded.device, loaded.load_s
    if not model.has_granularity:
        warn("this model has no granularity module (plain SAM 2.1): g picks one of SAM's three candidate "
             "masks on prompted slices; propagated slices are plain SAM 2 tracking")
    from unsamv2_engine.video.session import VideoSession

    session = VideoSession(model, stack, axis=args.axis, channel_axis=args.channel_axis,
                           contrast_limits=args.contrast_limits, mask_threshold=args.mask_threshold,
                           max_cached_frames=args.max_cached_frames)
    session.add_prompts(prompts)
    n_objects = len(session.object_ids)
    say(args, f"propagating {n_objects} object(s) {args.direction} through {layout.n_frames} slices of "
              f"{args.stack} (axis {layout.axis}, frames {layout.frame_hw[1]}x{layout.frame_hw[0]}) ...")
    from tqdm import tqdm

    with tqdm(total=None, disable=args.quiet, file=sys.stderr, unit="slice", desc="propagating",
              dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result, propagate_s = timed(lambda: session.propagate(args.direction, progress=progress), device)
    write_outputs(args, result, layout, source, path, model, device, {"load_s": load_s, "propagate_s": propagate_s})
    return EXIT_OK


def write_outputs(args: argparse.Namespace, result: Any, layout: Any, source: str, path: Any, model: Any,
                  device: Any, timings: dict[str, float], extra: dict[str, Any] | None = None) -> None:
    """Write the label volume, the scores CSV and the JSON of a propagation (local or ``--server``)."""
    import numpy as np

    from unsamv2_engine.io import write_labels, write_table_csv

    areas = {object_id: int(np.count_nonzero(result.labels == object_id)) for object_id in result.object_ids}
    meta = {
        "engine_version": engine_version(),
        "stack": str(args.stack),
        "stack_shape": list(layout.shape),
        "axis": layout.axis,
        "channel_axis": layout.channel_axis,
        "labels_axis": result.axis,
        "direction": result.direction,
        "mask_threshold": result.mask_threshold,
        "contrast_limits": list(args.contrast_limits) if args.contrast_limits else None,
        "objects": [{"id": object_id, "granularity": result.granularities[object_id],
                     "prompted_slices": result.prompted_frames[object_id], "voxels": areas[object_id]}
                    for object_id in result.object_ids],
        "model": model.info.label,
        "model_family": model.info.family,
        "checkpoint": None if path is None else str(path),
        "device": str(device),
        "frames_embedded": result.frames_embedded,
        "timings": {**timings, "seconds_per_slice": timings["propagate_s"] / max(1, layout.n_frames)},
        **(extra or {}),
    }
    from unsamv2_engine.outputs import staged_outputs

    meta["output"] = str(args.output)
    with staged_outputs() as out:
        write_labels(out.path(args.output), result.labels, metadata={k: meta[k] for k in (
            "axis", "channel_axis", "direction", "mask_threshold", "objects", "model")})
        if args.scores:
            rows = [{"slice": z, "object": object_id, "score": result.scores[z, k],
                     "object_score": result.object_scores[z, k]}
                    for z in range(result.scores.shape[0]) for k, object_id in enumerate(result.object_ids)
                    if not np.isnan(result.object_scores[z, k])]
            write_table_csv(out.path(args.scores), rows, columns=["slice", "object", "score", "object_score"])
        emit_json(out.path(args.json), meta)
    empty = [object_id for object_id, voxels in areas.items() if voxels == 0]
    if empty:
        warn(f"object(s) {', '.join(map(str, empty))} are empty on every slice: try other points, another "
             f"granularity or a lower --mask-threshold")
    outputs = [p for p in (args.scores, args.json if args.json != "-" else None) if p]
    summary(args, f"wrote {args.output} ({len(result.object_ids)} object(s), {layout.n_frames} slices, "
                  f"{timings['propagate_s']:.1f} s)" + "".join(f" and {p}" for p in outputs))
