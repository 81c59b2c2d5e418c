"""The ``unsamv2 pseudo-label`` command: divide-and-conquer pseudo-labels for a folder of images.

::

    unsamv2 pseudo-label IMAGES_DIR -o OUT_DIR [--checkpoint CKPT | --model NAME] [--backbone classical|sam2|dino]
        [--dino-weights PATH] [--no-overlays] [--max-side PX] [--max-instances N] [--thetas 0.9,0.8,0.7,0.6,0.5]
        [--nucleoli off|auto|bright|dark]

Unlike ``segment``, no model is loaded unless ``--checkpoint`` or ``--model`` is given: the default
is the weight-free classical backbone. With a model, the default backbone is its image encoder and
its whole-image masks at g = 1 join the proposals. See ``docs/pseudo-labels.md``.

Exit codes: 0 when at least one image has its JSON (made now or found from an earlier run); 2 when
every image failed (each failure is listed on stderr), for a bad folder or option; 130 on Ctrl-C
(every JSON already written is complete; the next run resumes after it). This module imports the
standard library only; the engine is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unsamv2_engine.cli.loading import load_model_from_args
from unsamv2_engine.cli.options import add_common_options, add_model_options, positive_int, subparser
from unsamv2_engine.cli.output import EXIT_OK, CliError, say, warn

__all__ = ["BACKBONE_CHOICES", "register", "run"]

BACKBONE_CHOICES = ("classical", "sam2", "dino")

DESCRIPTION = (
    "Make UnSAMv2 training pseudo-labels for every image of IMAGES_DIR (.tif .tiff .png .jpg .jpeg .bmp) "
    "without any annotation: divide into instances (thresholds + watershed, seeded cells, blobs, normalized "
    "cuts on backbone features, plus the model's own whole-image masks when a model is given; all at pixel "
    "resolution), conquer each instance into parts by merging similar superpixels, and score every mask's "
    "granularity by the sqrt-area rule. Writes OUT_DIR/<image stem>.json (COCO RLE with granularity, "
    "instance_id, is_part; the settings in its info) and an overlay PNG per image in OUT_DIR/overlays/. "
    "Images whose JSON was made with the same settings are skipped, so an interrupted run resumes; JSONs "
    "made with other settings are refused unless --overwrite. Blank, constant or pure-noise images get no "
    "masks (with a warning)."
)
EPILOG = """\
backbones (default: sam2 with --checkpoint/--model, else classical):
  classical  no weights: colour + multi-scale texture statistics on superpixels
  sam2       the image encoder of the loaded model
  dino       a DINOv2/DINOv3 ViT from a local weights file (--dino-weights)
Without --checkpoint or --model no model is loaded (unlike 'segment', which defaults to a registry model).

examples:
  unsamv2 pseudo-label lab_images/ -o pseudo/
  unsamv2 pseudo-label lab_images/ -o pseudo/ --checkpoint unsamv2_small.pt --device cuda
  unsamv2 pseudo-label slides/ -o pseudo/ --max-side 2048 --no-overlays
"""


def _thetas(text: str) -> tuple[float, ...]:
    """``0.9,0.8,0.7`` -> (0.9, 0.8, 0.7), each in [-1, 1]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.9,0.8,0.7, got {text!r}"
                                         ) from None
    if not values or any(not -1.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thetas are cosine similarities in [-1, 1], e.g. 0.9,0.8,0.7; got {text!r}")
    return values


def _side(text: str) -> int:
    value = positive_int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32 pixels, got {text!r}")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pseudo-label`` to the ``unsamv2`` subparsers (model options: no model by default)."""
    from unsamv2_engine.cli.batch import add_batch_options  # standard library only

    parser = subparser(subparsers, "pseudo-label", "pseudo-labels (masks + granularity) for a folder of images",
                       DESCRIPTION, EPILOG)
    parser.add_argument("images_dir", metavar="IMAGES_DIR",
                        help="folder of images (not searched recursively), or a quoted glob such as 'plates/**/*.tif'")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                        help="folder for <image stem>.json files and overlays/ (created if missing)")
    group = parser.add_argument_group("pseudo-labels")
    group.add_argument("--backbone", choices=BACKBONE_CHOICES,
                       help="patch features for both stages (default: sam2 with a model, else classical)")
    group.add_argument("--dino-weights", metavar="PATH", help="DINOv2/DINOv3 ViT weights file for --backbone dino")
    group.add_argument("--no-overlays", action="store_true", help="do not write the overlay PNGs")
    group.add_argument("--overwrite", action="store_true",
                       help="re-do the JSONs in OUT_DIR that were made with other settings (default: refuse)")
    group.add_argument("--max-side", type=_side, metavar="PX",
                       help="images with a longer side are downscaled to it for the computation; masks are "
                            "written at full resolution (default: 1024)")
    group.add_argument("--max-instances", type=positive_int, metavar="N",
                       help="normalized cuts per image, i.e. at most N instances from the cuts (default: 8)")
    group.add_argument("--thetas", type=_thetas, metavar="T1,T2,...",
                       help="merging thresholds of the conquer stage, in order (default: 0.9,0.8,0.7,0.6,0.5)")
    group.add_argument("--nucleoli", choices=("off", "auto", "bright", "dark"),
                       help="also search nucleolus-sized spots nested in the finest mask of each object (auto: "
                            "their polarity from the image; default: off, since on the benchmark it finds few "
                            "nucleoli and costs precision and ~1 CPU s per 512^2 image, docs/pseudo-labels.md)")
    add_batch_options(parser)
    # the shared help names segment's default model, which does not apply here
    add_model_options(parser, help_texts={
        "--model": "a model from the registry ('unsamv2 models' lists them); default: none (no model)"})
    add_common_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """``unsamv2 pseudo-label``: returns 0, or 2 when every image failed."""
    from pathlib import Path

    images_dir = Path(args.images_dir)
    if args.dino_weights and args.backbone not in (None, "dino"):
        raise CliError("--dino-weights is only used with --backbone dino")
    backbone = "dino" if args.dino_weights and args.backbone is None else args.backbone
    if backbone == "dino" and not args.dino_weights:
        raise CliError("--backbone dino needs --dino-weights PATH (a local DINOv2/DINOv3 weights file)")
    if args.dino_weights and not Path(args.dino_weights).is_file():
        raise CliError(f"--dino-weights file not found: {args.dino_weights}")
    with_model = bool(args.checkpoint or args.model)
    if backbone == "sam2" and not with_model:
        raise CliError("--backbone sam2 uses a model's image encoder: give --checkpoint PATH or --model NAME")
    if args.adapter and not with_model:
        raise CliError("--adapter needs the model it applies to: give --checkpoint PATH or --model NAME")
    from unsamv2_engine.cli.batch import run_batch  # a glob, or a folder on Dask workers

    if (code := run_batch(args, "pseudo-label")) is not None:
        return code
    if not images_dir.is_dir():
        raise CliError(f"IMAGES_DIR {args.images_dir!r} is not a folder; give the folder that holds "
                       "the images (or a quoted glob)")

    from unsamv2_engine.outputs import check_output_dir

    check_output_dir("-o", args.output, inputs={"--checkpoint": args.checkpoint, "--adapter": args.adapter,
                                                "--dino-weights": args.dino_weights})
    from unsamv2_engine.pseudo.pipeline import PseudoLabelSettings, pseudo_label_folder

    settings = PseudoLabelSettings().with_(max_side=args.max_side, max_instances=args.max_instances,
                                           thetas=args.thetas, nucleoli=args.nucleoli)
    model = None
    if with_model:
        model = load_model_from_args(args).model
    elif args.device not in ("auto", "cpu"):
        warn(f"--device {args.device} is unused without a model (the classical backbone runs on the CPU)")
    name = backbone or ("sam2" if model is not None else "classical")
    say(args, f"pseudo-labelling {images_dir} -> {args.output} (backbone {name}"
              f"{', proposals from the model too' if model is not None else ''}) ...")

    from tqdm import tqdm

    bar = tqdm(disable=args.quiet, file=sys.stderr, unit="img", desc="pseudo-labels", dynamic_ncols=True)

    def progress(done: int, total: int, image_name: str) -> None:
        bar.total = total
        bar.set_postfix_str(image_name, refresh=False)
        bar.update(done - bar.n)

    from unsamv2_engine.pseudo.pipeline import SettingsMismatchError

    try:
        summary = pseudo_label_folder(images_dir, args.output, model=model, backbone=backbone,
                                      dino_weights=args.dino_weights, settings=settings,
                                      overlays=not args.no_overlays, progress=progress, overwrite=args.overwrite)
    except SettingsMismatchError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    for name_, reason in summary.failed.items():
        warn(f"{name_}: {reason}")
    for name_, reason in summary.empty.items():
        warn(f"{name_}: {reason}")
    line = (f"wrote {len(summary.done)} pseudo-label file(s) to {args.output} ({summary.n_masks} masks); "
            f"{len(summary.skipped)} skipped (already done), {len(summary.failed)} failed")
    print(line, flush=True)
    if summary.failed and not summary.done and not summary.skipped:
        raise CliError(f"every image failed ({len(summary.failed)}); see the reasons above")
    return EXIT_OK
