"""The ``unsamv2 evaluate`` command: interactive NoC / 1-IoU per granularity mode, sweeps, whole-image AR.

::

    unsamv2 evaluate DATASET -o OUT_DIR [--checkpoint PATH | --model NAME] [--adapter PATH] [--device D]
        [--modes oracle,fixed:0.5,level,sam-single,sam-oracle3] [--max-clicks 20] [--mask-threshold -1]
        [--max-objects-per-image N] [--levels cell,nucleus] [--predictions dets.json]

Wiring: :func:`register` adds the command (the shared model options, and its own ``-q/--quiet`` and
``--traceback`` beside ``--no-plots``) and sets ``func=run``; ``run(args)`` returns the exit code. This
module imports the standard library only; everything heavy is imported inside :func:`run`. Errors a
user can fix are raised as ``UnSAMv2Error`` / ``OSError`` (the main CLI prints them as one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unsamv2_engine.cli.loading import load_model, resolve_device
from unsamv2_engine.cli.options import add_model_options, parse_granularities, positive_int, subparser
from unsamv2_engine.cli.output import CliError, say
from unsamv2_engine.errors import InputError

__all__ = ["register", "run"]

DESCRIPTION = (
    "Evaluate a model on a dataset of images with ground-truth objects. Interactive protocol of "
    "RITM/GraCo/UnSAMv2: the RITM click simulator, up to --max-clicks clicks per object, the previous "
    "logits fed back, NoC@80/85/90, NoF and 1-IoU per mode and per hierarchy level. With --predictions, "
    "class-agnostic AR@100/AR@1000 of the given detections (COCOeval, useCats=0)."
)
EPILOG = """\
modes:
  oracle       per object, the g in the oracle grid with the fewest clicks (GraCo/UnSAMv2; optimistic)
  fixed:G      one granularity G for every object
  level        g* from the object's place in the GT hierarchy (sqrt-area rule on the masks containing
               its first click; not an oracle)
  sam-single   plain SAM 2.1, single-mask output (needs a SAM 2.1 model: --baseline-checkpoint/-model
               when the main model is UnSAMv2)
  sam-oracle3  plain SAM 2.1, best of its 3 multimask outputs against the GT at every click
default modes: oracle,level for an UnSAMv2 model, sam-single,sam-oracle3 for a SAM 2.1 model;
none with --predictions (AR only, no model is loaded). --modes none skips the interactive part.

datasets: a folder of images/ + labels/ (or NAME.tif + NAME_labels.tif), a COCO .json (images next to
it, or --image-dir), or a folder of synthetic samples (hierarchy.csv + labels_<level>.tif).

outputs in OUT_DIR: results.json, objects.csv, summary.csv, summary.md, iou_vs_clicks.png,
area_vs_g.png, ar_vs_iou.png. Reference: docs/evaluation.md.
"""


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _grid(text: str) -> list[float]:
    """``0.1,0.5,1.0`` or ``START:STOP:N`` (see :func:`parse_granularities`), each in [0.1, 1.0]."""
    values = parse_granularities(text)
    if ":" not in text and any(not 0.1 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"granularities must lie in [0.1, 1.0], got {text!r}")
    return values


_MODEL_HELP = {  # the evaluate wording of the shared model options
    "--model": "a registry model ('unsamv2 models'); default: unsamv2-plus",
    "--adapter": "an UnSAMv2 adapter file applied on top of the model",
    "--device": "where to run (default: auto)",
    "--download": "download registry models that are not cached",
}


def _baseline_options(model: Any) -> None:
    """Add ``--baseline-checkpoint | --baseline-model`` to the model group."""
    base = model.add_mutually_exclusive_group()
    base.add_argument("--baseline-checkpoint", metavar="PATH",
                      help="SAM 2.1 checkpoint for the sam-single / sam-oracle3 modes")
    base.add_argument("--baseline-model", metavar="NAME", help="registry SAM 2.1 model for the sam-* modes")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the ``unsamv2`` subparsers; returns its parser (``func=run``)."""
    parser = subparser(subparsers, "evaluate", "evaluate interactive segmentation (NoC, 1-IoU) and AR",
                       DESCRIPTION, EPILOG)  # negative numbers accepted: --mask-threshold -1
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder or COCO .json (see below)")
    parser.add_argument("-o", "--output", dest="out_dir", metavar="OUT_DIR", required=True,
                        help="folder for the result files (created)")

    add_model_options(parser, help_texts=_MODEL_HELP, extra=_baseline_options)

    proto = parser.add_argument_group("interactive protocol")
    proto.add_argument("--modes", metavar="LIST", default=None,
                       help="comma-separated: oracle, fixed:G, level, sam-single, sam-oracle3, or none")
    proto.add_argument("--max-clicks", type=positive_int, default=20, metavar="N", help="click budget (default: 20)")
    proto.add_argument("--target-iou", type=float, default=None, metavar="T",
                       help="stop an object at this IoU (default: the largest --thresholds value)")
    proto.add_argument("--thresholds", type=_float_list, default=[0.80, 0.85, 0.90], metavar="LIST",
                       help="NoC/NoF IoU levels (default: 0.8,0.85,0.9)")
    proto.add_argument("--full-curves", action="store_true",
                       help="always simulate --max-clicks clicks (exact IoU-vs-click curves; slower)")
    proto.add_argument("--mask-threshold", type=float, default=-1.0, metavar="T",
                       help="logits above T are foreground (default: -1, as the UnSAMv2 evaluation)")
    proto.add_argument("--granularities", type=_grid, default=None, metavar="LIST",
                       help="the oracle's g grid, 0.1,0.5,1.0 or START:STOP:N (default: 0.1:1.0:10)")
    proto.add_argument("--no-oracle-cutoff", action="store_true",
                       help="run every g of the oracle to the end (same result, slower; full per-g counts)")
    proto.add_argument("--sweep-granularities", type=_grid, default=None, metavar="LIST",
                       help="g grid of the first-click area/nestedness sweep (default: the oracle grid)")
    proto.add_argument("--no-sweep", action="store_true", help="skip the first-click granularity sweep")

    data = parser.add_argument_group("data")
    data.add_argument("--levels", metavar="LIST", default=None, help="evaluate only these levels (e.g. cell,nucleus)")
    data.add_argument("--max-objects-per-image", type=positive_int, default=None, metavar="N",
                      help="evaluate a seeded random subset of at most N objects per image")
    data.add_argument("--min-area", type=positive_int, default=1, metavar="PX",
                      help="evaluate only objects of at least PX pixels (default: 1)")
    data.add_argument("--seed", type=int, default=0, help="subsampling seed (default: 0)")
    data.add_argument("--limit-images", type=positive_int, default=None, metavar="N",
                      help="use only the first N images")
    data.add_argument("--image-dir", metavar="DIR", default=None, help="COCO datasets: folder of the images")

    whole = parser.add_argument_group("whole-image AR")
    whole.add_argument("--predictions", metavar="DETS.json", default=None,
                       help="COCO detection results (list, or a COCO document) for AR against every GT object; "
                            "image_id may be the image's number (1..N in dataset order) or its name")
    whole.add_argument("--max-dets", type=_int_list, default=[1, 100, 1000], metavar="LIST",
                       help="COCOeval maxDets (default: 1,100,1000)")

    msg = parser.add_argument_group("messages")
    msg.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    msg.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    msg.add_argument("--traceback", action="store_true", help="show the Python traceback of an error")
    parser.set_defaults(func=run)
    return parser


def _load(source: str, *, is_path: bool, args: argparse.Namespace, adapter: str | None, device: Any) -> Any:
    """Resolve and load one model (the main one, or the ``--baseline-*`` one without adapter)."""
    from unsamv2_engine import weights

    if not is_path:
        weights.get_entry(source)
    path = weights.resolve_checkpoint(source, download_missing=args.download, progress=not args.quiet)
    if adapter and not Path(adapter).is_file():
        raise CliError(f"adapter file not found: {adapter}")
    say(args, f"loading {source}" + (f" + adapter {adapter}" if adapter else "") + f" on {device} ...")
    return load_model(path, source=source, device=device, adapter=adapter,
                      allow_base_mismatch=args.allow_base_mismatch)


def _dataset(args: argparse.Namespace) -> Any:
    from unsamv2_engine.evaluate.datasets import load_dataset

    levels = [v.strip() for v in args.levels.split(",") if v.strip()] if args.levels else None
    ds = load_dataset(args.dataset, image_dir=args.image_dir, levels=levels, min_area=args.min_area,
                      max_objects_per_image=args.max_objects_per_image, seed=args.seed)
    if args.limit_images is not None and args.limit_images < len(ds):
        ds = ds.head(args.limit_images)
    return ds


def run(args: argparse.Namespace) -> int:
    """Run ``unsamv2 evaluate``; returns 0. Raises ValueError / OSError for user errors."""
    from unsamv2_engine.evaluate.interactive import DEFAULT_GRID, parse_modes
    from unsamv2_engine.evaluate.report import markdown_summary, write_report
    from unsamv2_engine.evaluate.runner import evaluate_interactive, evaluate_whole_image

    if args.predictions and not Path(args.predictions).is_file():
        raise FileNotFoundError(f"predictions file not found: {args.predictions}")
    if len(args.max_dets) != 3:
        raise InputError("--max-dets needs three values, e.g. 1,100,1000")
    from unsamv2_engine.outputs import check_output_dir

    check_output_dir("-o", args.out_dir, inputs={"--predictions": args.predictions,
                                                 "--checkpoint": getattr(args, "checkpoint", None),
                                                 "--adapter": getattr(args, "adapter", None)},
                     input_dirs={"DATASET": args.dataset})
    modes_text = args.modes if args.modes is not None else ("none" if args.predictions else None)
    try:
        if modes_text is None:
            modes = None
        else:
            modes = [] if modes_text.strip().lower() == "none" else parse_modes(modes_text)
    except ValueError as exc:  # a --modes the user can fix, not a bug
        raise CliError(f"--modes: {exc}") from None
    dataset = _dataset(args)
    say(args, f"dataset {args.dataset}: {len(dataset)} images ({dataset.kind})")

    interactive = None
    if modes is None or modes:
        from unsamv2_engine.evaluate.predictors import SessionPredictor
        from unsamv2_engine.weights import DEFAULT_MODEL

        device = resolve_device(args.device)
        main_source = args.checkpoint or args.model or DEFAULT_MODEL
        model = _load(main_source, is_path=bool(args.checkpoint), args=args, adapter=args.adapter, device=device)
        predictor = SessionPredictor(model, mask_threshold=args.mask_threshold)
        if modes is None:
            modes = parse_modes("oracle,level" if model.has_granularity else "sam-single,sam-oracle3")
        baseline = None
        if args.baseline_checkpoint or args.baseline_model:
            base_model = _load(args.baseline_checkpoint or args.baseline_model, is_path=bool(args.baseline_checkpoint),
                               args=args, adapter=None, device=device)
            baseline = SessionPredictor(base_model, mask_threshold=args.mask_threshold)
        target = args.target_iou if args.target_iou is not None else max(args.thresholds)
        grid = args.granularities or list(DEFAULT_GRID)
        sweep_grid = None if args.no_sweep else (args.sweep_granularities or grid)
        say(args, f"modes {', '.join(m.name for m in modes)}; target IoU {target}, <= {args.max_clicks} clicks, "
                  f"mask threshold {args.mask_threshold}")
        interactive = evaluate_interactive(
            dataset, predictor, modes, baseline=baseline, max_clicks=args.max_clicks, target_iou=target,
            thresholds=args.thresholds, stop_early=not args.full_curves, grid=grid,
            oracle_cutoff=not args.no_oracle_cutoff, sweep_grid=sweep_grid,
            progress=None if args.quiet else (lambda line: say(args, line)))

    whole = None
    if args.predictions:
        say(args, f"whole-image AR of {args.predictions} ...")
        whole = evaluate_whole_image(dataset, json.loads(Path(args.predictions).read_text()), max_dets=args.max_dets)

    config = {"command": "evaluate", "dataset": str(args.dataset), "predictions": args.predictions,
              "checkpoint": args.checkpoint, "model": args.model, "adapter": args.adapter,
              "baseline": args.baseline_checkpoint or args.baseline_model, "mask_threshold": args.mask_threshold}
    files = write_report(args.out_dir, interactive=interactive, whole_image=whole, config=config,
                         plots=not args.no_plots)
    print(markdown_summary(interactive, whole))
    print(f"wrote {len(files)} files to {args.out_dir}")
    return 0

