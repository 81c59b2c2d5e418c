"""The ``unsamv2 synth`` command: write a seeded synthetic dataset.

::

    unsamv2 synth -o DIR --n N --seed S [--modality fluorescence|brightfield|he] [--ndim 2|3|t]
                  [--shape 512,512 | 32,256,256] [--difficulty easy|medium|hard] [--workers K] [--quiet]

This module imports only the standard library at import time (numpy, scipy... are imported by
:func:`run`), so ``unsamv2 --help`` stays cheap. Progress goes to stderr; stdout gets one summary line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from unsamv2_engine.cli.options import non_negative_int, positive_int, subparser
from unsamv2_engine.errors import InputError

__all__ = ["parse_shape", "register", "run"]

_MODALITIES = ("fluorescence", "brightfield", "he")
_NDIMS = ("2", "3", "t")
_DIFFICULTIES = ("easy", "medium", "hard")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"512,512"`` or ``"32,256,256"`` (also ``x`` as separator) -> a tuple of positive ints."""
    parts = [p for p in text.replace("x", ",").replace("X", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be integers such as 512,512 or 32,256,256, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be 2 (H,W) or 3 (Z|T,H,W) positive integers, got {text!r}")
    return shape


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``synth`` to the ``unsamv2`` subparsers; returns its parser.

    The parser's defaults set ``func=run`` (and ``traceback=False``: the command has no
    ``--traceback``), so ``args.func(args)`` runs the command.
    """
    parser = subparser(
        subparsers, "synth", "write a seeded synthetic microscopy dataset with a 5-level part/whole hierarchy",
        "Write N synthetic samples (image, one label image per level tissue/cluster/cell/nucleus/"
        "nucleolus, hierarchy.csv, coco.json with granularity targets) and manifest.json with "
        "the SHA-256 of every file. The same seed and options give byte-identical files.",
        "example: unsamv2 synth -o bench/fluo2d --n 20 --seed 0 --modality fluorescence --ndim 2", wrap=False)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="dataset folder (created)")
    parser.add_argument("--n", required=True, type=positive_int, metavar="N", help="number of samples")
    parser.add_argument("--seed", required=True, type=non_negative_int, metavar="S", help="dataset seed")
    parser.add_argument("--modality", choices=_MODALITIES, default="fluorescence",
                        help="image formation (default: fluorescence; he is 2D only)")
    parser.add_argument("--ndim", choices=_NDIMS, default="2",
                        help="2 = 2D images, 3 = Z-stacks, t = 2D time-lapse (default: 2)")
    parser.add_argument("--shape", type=parse_shape, default=None, metavar="SHAPE",
                        help="H,W for --ndim 2 (default 512,512); Z,H,W or T,H,W otherwise "
                             "(default 32,256,256 / 10,256,256)")
    parser.add_argument("--difficulty", choices=_DIFFICULTIES, default="medium",
                        help="difficulty preset: SNR, blur, illumination, density, contrast (default: medium)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="K",
                        help="parallel processes (default: 1 below 8 samples, else the CPU count up to 8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, traceback=False)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the dataset described by ``args``; returns 0. Bad options raise ``ValueError``."""
    from unsamv2_engine.synth.config import SynthConfig
    from unsamv2_engine.synth.dataset import write_dataset

    shape = args.shape
    if shape is not None:
        want = 2 if args.ndim == "2" else 3
        if len(shape) != want:
            raise InputError(f"--shape for --ndim {args.ndim} needs {want} values, got {','.join(map(str, shape))}")
    if args.modality == "he" and args.ndim != "2":
        raise InputError("--modality he (a stained thin section) is 2D only; use --ndim 2")
    from unsamv2_engine.outputs import check_output_dir

    check_output_dir("-o", args.output)
    cfg = SynthConfig.preset(getattr(args, "difficulty", "medium") or "medium")
    quiet = bool(getattr(args, "quiet", False))
    workers = getattr(args, "workers", None)
    if workers is None:
        workers = 1 if args.n < 8 else min(os.cpu_count() or 1, 8)
    root = write_dataset(args.output, args.n, args.seed, modality=args.modality, ndim=args.ndim, shape=shape,
                         config=cfg, progress=not quiet, workers=workers)
    print(f"wrote {args.n} {args.modality} sample(s) (ndim {args.ndim}) to {root}; manifest {root / 'manifest.json'}",
          file=sys.stdout)
    return 0
