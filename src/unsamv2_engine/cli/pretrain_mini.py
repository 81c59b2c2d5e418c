"""The ``unsamv2 pretrain-mini`` command: pretrain a miniature SAM 2.1 on synthetic images.

::

    unsamv2 pretrain-mini -o MINI.pt [--steps N] [--image-size PX] [--device ...] [--max-minutes M]

Progress (step, loss, best first-click IoU, s/step, ETA) goes to stderr, one line per
``--log-every`` steps; the run is resumable (run the same command again). The file is copied into
the weights cache as ``minisam-synthetic-<size>-<px>px-seed<S>.pt`` unless ``--no-cache``. This module
imports the standard library only at import time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from unsamv2_engine.cli.loading import resolve_device
from unsamv2_engine.cli.options import (
    add_common_options,
    fraction,
    non_negative_int,
    parse_device,
    positive_float,
    positive_int,
    subparser,
)
from unsamv2_engine.cli.output import CliError

__all__ = ["cached_name", "register", "run"]

_EPILOG = """\
what it makes:
  A SAM 2.1-architecture model trained from random weights, every weight trainable, on the
  synthetic generator only (SAM's recipe: one click plus correction clicks on objects at random
  hierarchy levels, the best of three outputs supervised, IoU head, objectness). The file is an
  ordinary plain-SAM 2.1 checkpoint that --checkpoint / --base load (it records its input size and
  says in its metadata that it is a synthetic miniature, NOT a real SAM). Use it to test training
  code on machines where no SAM weights can be downloaded.

examples:
  unsamv2 pretrain-mini -o mini.pt --max-minutes 75                 # 2 CPU cores, 256 px
  unsamv2 pretrain-mini -o mini512.pt --image-size 512 --synth-shape 512 --device cuda --max-minutes 7
"""


def cached_name(size: str, image_size: int, seed: int) -> str:
    """The cache file name of a miniature (it says what the file is)."""
    return f"minisam-synthetic-{size}-{int(image_size)}px-seed{int(seed)}.pt"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pretrain-mini`` to the ``unsamv2`` subparsers; returns its parser."""
    parser = subparser(
        subparsers, "pretrain-mini", "pretrain a miniature SAM 2.1 on synthetic images (for testing training)",
        "Pretrain a miniature SAM 2.1 (hiera-tiny at a reduced input size, every weight trainable) on the "
        "synthetic generator with SAM's interactive recipe, and write a plain SAM 2.1 checkpoint that is "
        "marked as a synthetic miniature.", _EPILOG)
    parser.add_argument("-o", "--output", required=True, metavar="MINI.pt", help="the checkpoint to write")
    parser.add_argument("--steps", type=positive_int, default=20000, metavar="N",
                        help="optimizer steps at most (default: 20000; --max-minutes usually ends the run first)")
    parser.add_argument("--max-minutes", type=positive_float, default=75.0, metavar="M",
                        help="training time budget over all resumed sessions (default: 75); the learning-rate "
                             "schedule ends with it")
    parser.add_argument("--image-size", type=positive_int, default=256, metavar="PX",
                        help="model input size, a multiple of 32 (default: 256)")
    parser.add_argument("--synth-shape", type=positive_int, default=256, metavar="PX",
                        help="side of the generated training images (default: 256)")
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"), help="SAM 2.1 size (default: tiny)")
    parser.add_argument("--objects", type=positive_int, default=16, metavar="K", help="targets per image (default: 16)")
    parser.add_argument("--attention-init-gain", type=float, default=1.5, metavar="G",
                        help="tie the decoder's cross-attention query/key projections at this gain so that clicks "
                             "are visible from the first step (default: 1.5; 0: PyTorch's default init)")
    parser.add_argument("--correction-clicks", type=non_negative_int, default=1, metavar="N",
                        help="correction passes after the first click (default: 1)")
    parser.add_argument("--innermost-clicks", type=fraction, default=0.0, metavar="F",
                        help="fraction of targets clicked as the evaluator clicks (innermost pixel of the object, "
                             "then of the largest error) instead of uniformly as SAM samples (default: 0)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                        help="images per optimizer step (default: 1)")
    parser.add_argument("--lr", type=positive_float, default=1.5e-4,
                        help="peak learning rate (default: 1.5e-4; 4e-4 collapsed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the image stream (default: 0)")
    parser.add_argument("--workdir", metavar="DIR", help="resume state and log.jsonl (default: <output stem>_work/)")
    parser.add_argument("--checkpoint-minutes", type=positive_float, default=3.0, metavar="M",
                        help="save the resume state every M minutes (default: 3)")
    parser.add_argument("--log-every", type=positive_int, default=10, metavar="N",
                        help="a progress line every N steps (default: 10)")
    parser.add_argument("--no-cache", action="store_true", help="do not copy the result into the weights cache")
    parser.add_argument("--device", default="auto", type=parse_device, metavar="{auto,cpu,cuda,mps}",
                        help="where to train (default: auto)")
    add_common_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """``unsamv2 pretrain-mini``; returns the exit code."""
    from unsamv2_engine.minisam.pretrain import PretrainConfig, pretrain
    from unsamv2_engine.weights import cache_dir

    output = Path(args.output)
    if output.suffix != ".pt":
        raise CliError(f"-o {output}: give a .pt file name")
    if args.image_size < 64 or args.image_size % 32:
        raise CliError(f"--image-size {args.image_size}: use a multiple of 32, at least 64 (e.g. 256)")
    workdir = Path(args.workdir) if args.workdir else output.with_name(output.stem + "_work")
    config = PretrainConfig(steps=args.steps, max_minutes=args.max_minutes, size=args.size,
                            image_size=args.image_size, synth_shape=args.synth_shape, objects=args.objects,
                            correction_clicks=args.correction_clicks, grad_accum=args.grad_accum, lr=args.lr,
                            attention_init_gain=args.attention_init_gain, innermost_clicks=args.innermost_clicks,
                            min_lr=args.lr / 20, seed=args.seed, checkpoint_minutes=args.checkpoint_minutes)
    device = resolve_device(args.device)

    def report(event: dict) -> None:
        if args.quiet:
            return
        kind = event.get("event")
        if kind == "step" and (event["step"] % args.log_every == 0 or event["step"] == 1):
            print(f"step {event['step']}/{event['max_steps']}  loss {event['loss']:.3f} (focal {event['loss_mask']:.3f}"
                  f" dice {event['loss_dice']:.3f} iou {event['loss_iou']:.3f} obj {event['loss_class']:.3f})  "
                  f"best-of-3 1-click IoU {event['iou_first_mean50']:.3f} (mean of 50)  lr {event['lr']:.2e}  "
                  f"{event['seconds']:.2f} s/step  {event['elapsed_min']:.1f} min, ETA {event['eta_min']:.1f} min",
                  file=sys.stderr, flush=True)
        elif kind in ("stage", "checkpoint"):
            print(event.get("message") or f"checkpoint at step {event['step']}: {event['path']}", file=sys.stderr,
                  flush=True)

    result = pretrain(config, output, workdir=workdir, device=device, progress=report)
    print(f"wrote {result['output']} ({result['steps']} steps, {result['seconds'] / 60:.1f} min): a synthetic "
          f"miniature SAM 2.1-{args.size} at {args.image_size} px, not a real SAM")
    if not args.no_cache:
        target = cache_dir() / cached_name(args.size, args.image_size, args.seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != output.resolve():
            shutil.copyfile(output, target)
        print(f"cached as {target}")
    return 0
