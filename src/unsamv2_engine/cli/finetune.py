"""The ``unsamv2 finetune`` command: adapt UnSAMv2 to a folder of unlabeled images.

::

    unsamv2 finetune --images DIR [--pseudo-labels DIR] --base CKPT -o adapter.pt [--max-steps N] [--device ...]
    torchrun --nproc_per_node 2 -m unsamv2_engine finetune --images DIR --pseudo-labels DIR --base CKPT -o adapter.pt

Without ``--pseudo-labels`` the pseudo-labels are made first, into ``<workdir>/pseudo-labels``.
``--json-progress`` prints one JSON object per line on stdout (for the napari plugin), each with an
``"event"`` in ``stage``, ``step``, ``val``, ``checkpoint``, ``done``, ``error``. Ctrl-C (SIGINT) saves a
checkpoint after the current step and exits with code 130; ``--resume`` continues from it. See
``docs/fine-tuning.md``.

This module imports the standard library only at import time (``unsamv2 finetune --help`` never
loads torch); the engine is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from unsamv2_engine.cli.loading import reading_checkpoints, resolve_device
from unsamv2_engine.cli.options import (
    add_common_options,
    fraction,
    non_negative_int,
    parse_device,
    positive_float,
    positive_int,
    subparser,
)
from unsamv2_engine.cli.output import EXIT_INTERRUPTED, EXIT_OK, CliError, user_error_message, warn
from unsamv2_engine.cli.signals import on_stop_signals

__all__ = ["register", "run"]

TRAINABLE_CHOICES = ("granularity", "decoder", "all")
EVENTS = ("stage", "step", "val", "checkpoint", "done", "error")

_EPILOG = """\
what is trained (--trainable):
  granularity  the 345,760 parameters UnSAMv2 adds to SAM 2.1 (default, as the authors); -o gets an
               adapter file, loaded with --adapter on top of --base
  decoder      those plus the SAM mask decoder; the adapter also carries the changed decoder tensors
  all          every parameter, the image encoder included (GPU only in practice); the adapter then
               carries every tensor

examples:
  unsamv2 finetune --images lab_tiffs/ --base sam2.1-small -o lab_adapter.pt
  unsamv2 finetune --images lab_tiffs/ --pseudo-labels lab_pl/ --base unsamv2.pt -o lab.pt --max-steps 2000
  torchrun --nproc_per_node 2 -m unsamv2_engine finetune --images lab_tiffs/ --pseudo-labels lab_pl/ \\
      --base unsamv2.pt -o lab.pt --device cuda
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune`` to the ``unsamv2`` subparsers; returns its parser."""
    parser = subparser(
        subparsers, "finetune", "fine-tune the granularity module on your own unlabeled images",
        "Fine-tune UnSAMv2 on a folder of unlabeled images: make pseudo-labels (masks with granularities) "
        "unless --pseudo-labels gives them, train with simulated clicks, and write an adapter file that "
        "the CLI (--adapter) and the napari plugin load on top of the base model.", _EPILOG)
    data = parser.add_argument_group("data and model")
    data.add_argument("--images", required=True, metavar="DIR", help="folder of images (.tif, .tiff, .png, .jpg)")
    data.add_argument("--pseudo-labels", metavar="DIR",
                      help="folder of <image stem>.json pseudo-labels (default: make them into "
                           "<workdir>/pseudo-labels)")
    data.add_argument("--base", required=True, metavar="CKPT",
                      help="base model: a SAM 2.1 or UnSAMv2 checkpoint file, or a registry name ('unsamv2 models')")
    data.add_argument("--download", action="store_true", help="download the --base model if it is not cached")
    data.add_argument("-o", "--output", required=True, metavar="adapter.pt",
                      help="the adapter file to write (load it with --adapter on top of --base)")
    data.add_argument("--workdir", metavar="DIR",
                      help="checkpoints, log.jsonl, loss.png (default: <output stem>_work/ next to the output)")
    data.add_argument("--device", default="auto", type=parse_device, metavar="{auto,cpu,cuda,mps}",
                      help="where to train (default: auto = cuda, then mps, then cpu); under torchrun each "
                           "process takes its own GPU")
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=positive_int, default=1000, metavar="N",
                       help="optimizer steps (default: 1000)")
    train.add_argument("--trainable", choices=TRAINABLE_CHOICES, default="granularity",
                       help="what is trained (default: granularity; see below)")
    train.add_argument("--batch-size", type=positive_int, default=2, metavar="N",
                       help="images per micro-batch over all processes (default: 2)")
    train.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                       help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate (default: 1e-4)")
    train.add_argument("--min-lr", type=float, default=1e-5, help="final learning rate of the cosine (default: 1e-5)")
    train.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (default: 1e-5)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, sampling, clicks, dropout (default: 0)")
    train.add_argument("--max-masks", type=positive_int, default=30, metavar="N",
                       help="masks per image per step, at most (default: 30)")
    train.add_argument("--correction-clicks", type=non_negative_int, default=3, metavar="N",
                       help="simulated correction clicks after the first click (default: 3, as the authors)")
    train.add_argument("--cache-embeddings", dest="cache_embeddings", action="store_true", default=None,
                       help="compute each image's embedding once (much faster on a CPU; turns augmentation off; "
                            "about 16 MB of memory per image; the default with a frozen encoder, i.e. "
                            "--trainable granularity or decoder)")
    train.add_argument("--no-cache-embeddings", dest="cache_embeddings", action="store_false",
                       help="encode every image at every step (with augmentation): slower, for long GPU runs")
    train.add_argument("--mask-chunk", type=non_negative_int, default=4, metavar="N",
                       help="with a frozen encoder, simulate and back-propagate an image's masks N at a time "
                            "(same loss and gradient; memory of N masks, about 0.6 GB each at 1024 px; "
                            "default: 4; 0: all at once, fastest on a large GPU)")
    train.add_argument("--no-augment", action="store_true", help="no flips, rotations, affine or intensity jitter")
    train.add_argument("--checkpoint-every", type=non_negative_int, default=500, metavar="N",
                       help="save a checkpoint every N steps (default: 500; one is always saved at the end)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --workdir")
    val = parser.add_argument_group("validation")
    val.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                     help="share of the images held out (at most 8) and scored against their pseudo-labels "
                          "(default: 0.1; 0: none)")
    val.add_argument("--val-every", type=non_negative_int, default=500, metavar="N",
                     help="validate every N steps (default: 500; also before the first and after the last)")
    pl = parser.add_argument_group("pseudo-labelling (without --pseudo-labels)")
    pl.add_argument("--backbone", default=None, choices=("sam2", "classical", "dino"),
                    help="patch features for pseudo-labelling (default: classical on a CPU, sam2 on a GPU); sam2: "
                         "the base model's image encoder plus its own whole-image masks at g = 1; classical: "
                         "weight-free, without the model (much faster on a CPU); dino: a DINOv2/v3 weights file "
                         "(--dino-weights)")
    pl.add_argument("--dino-weights", default=None, metavar="PATH", help="weights file of that backbone")
    pl.add_argument("--workers", type=positive_int, default=1, metavar="N",
                    help="pseudo-label on a local Dask cluster of N worker processes, then train here (default: 1, "
                         "in this process; see docs/batch.md)")
    pl.add_argument("--scheduler", metavar="ADDRESS",
                    help="pseudo-label on the workers of an existing dask.distributed scheduler (e.g. "
                         "tcp://node:8786; shared filesystem), then train here")
    out = parser.add_argument_group("output")
    out.add_argument("--json-progress", action="store_true",
                     help="JSON lines on stdout, one per event (stage, step, val, checkpoint, done, error)")
    add_common_options(parser)
    parser.set_defaults(func=run)
    return parser


# ============================================================================ command
class _Reporter:
    """Turns engine events into JSON lines (``--json-progress``) or a progress bar and messages on stderr."""

    def __init__(self, args: argparse.Namespace, is_main: bool) -> None:
        self.args, self.is_main = args, is_main
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self.args.json_progress:
            print(json.dumps(event, default=str), flush=True)
            return
        kind = event.get("event")
        if kind == "step":
            self._step(event)
        elif kind == "val":
            self._say(f"validation at step {event['step']}: 1-click IoU {event['iou_1click']:.3f}, NoC@85 "
                      f"{event['noc85']:.2f}, NoC@90 {event['noc90']:.2f} ({event['objects']} masks)")
        elif kind == "stage":
            self._say(event.get("message", event.get("stage", "")))
        elif kind == "checkpoint":
            self._say(f"checkpoint {event['path']}")

    def _step(self, event: dict[str, Any]) -> None:
        if self.args.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event["max_steps"], initial=event["step"] - 1, file=sys.stderr, unit="step",
                            desc="training", dynamic_ncols=True)
        self.bar.update(event["step"] - self.bar.n)
        self.bar.set_postfix(loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}")

    def _say(self, message: str) -> None:
        if self.args.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _workdir(args: argparse.Namespace) -> Path:
    if args.workdir:
        return Path(args.workdir)
    out = Path(args.output)
    return out.with_name(f"{out.stem}_work")


def _check_inputs(args: argparse.Namespace) -> None:
    """Every cheap check before anything heavy is imported."""
    for option, value in (("--images", args.images), ("--pseudo-labels", args.pseudo_labels)):
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            raise CliError(f"{option} {value}: no such folder")
        if not path.is_dir():
            raise CliError(f"{option} {value} is a file; give the folder that holds the "
                           + ("images" if option == "--images" else "<image stem>.json files"))
    if Path(args.output).suffix.lower() != ".pt":
        raise CliError(f"-o {args.output} must end in .pt")
    if Path(args.output).is_dir():
        raise CliError(f"-o {args.output} is a folder; give a file name such as adapter.pt")
    _check_outputs(args)
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise CliError(f"--min-lr {args.min_lr:g} must be between 0 and --lr {args.lr:g}")
    if args.weight_decay < 0:
        raise CliError(f"--weight-decay must be 0 or more, got {args.weight_decay:g}")
    if args.cache_embeddings is None:  # default: cache whenever the encoder is frozen
        args.cache_embeddings = args.trainable != "all"
    if args.cache_embeddings and args.trainable == "all":
        raise CliError("--cache-embeddings needs a frozen image encoder: use it with --trainable "
                       "granularity or decoder")


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: -o may not replace the base checkpoint (or any input), and -o and --workdir must be
    writable, so that a finished run can always write its adapter.
    """
    from unsamv2_engine import weights
    from unsamv2_engine.outputs import check_output_dir, check_outputs

    base = args.base if Path(args.base).expanduser().exists() or args.base not in weights.REGISTRY \
        else weights.cached_path(args.base)
    inputs = {"--base": base, "--dino-weights": getattr(args, "dino_weights", None)}
    check_outputs({"-o": args.output}, inputs)
    check_output_dir("--workdir", _workdir(args), inputs={**inputs, "-o": args.output})


def run(args: argparse.Namespace) -> int:
    """``unsamv2 finetune`` (see the module docstring); returns the exit code."""
    try:
        return _run(args)
    except BaseException as exc:
        if args.json_progress and not isinstance(exc, SystemExit):
            message = user_error_message(exc) if isinstance(exc, Exception) else "interrupted"
            print(json.dumps({"event": "error", "message": message or f"{type(exc).__name__}: {exc}",
                              "type": type(exc).__name__}), flush=True)
        raise


def _run(args: argparse.Namespace) -> int:

    _check_inputs(args)
    from unsamv2_engine import weights
    from unsamv2_engine.train import distributed

    base_path = weights.resolve_checkpoint(args.base, download_missing=args.download, progress=not args.quiet)
    device = resolve_device(args.device)
    if distributed.launched_by_torchrun() and args.pseudo_labels is None:
        raise CliError("under torchrun, give --pseudo-labels DIR: make them first with a single-process "
                       "'unsamv2 finetune' run (they are written to <workdir>/pseudo-labels)")
    ctx, device = distributed.init_distributed(device)
    reporter = _Reporter(args, ctx.is_main)
    cancel = threading.Event()
    try:
        with on_stop_signals(lambda signum, frame: cancel.set()):  # a clean stop, not an exception
            code = _train(args, base_path, device, ctx, reporter, cancel)
    finally:
        reporter.close()
        distributed.shutdown()
    return code


def _train(args: argparse.Namespace, base_path: Path, device: Any, ctx: Any, reporter: _Reporter,
           cancel: threading.Event) -> int:
    from unsamv2_engine.train import folder_run
    from unsamv2_engine.train.augment import AugmentConfig
    from unsamv2_engine.train.config import FinetuneConfig

    workdir = _workdir(args)
    if args.backbone is None and args.pseudo_labels is None:
        args.backbone = folder_run.default_backbone(device)
        reporter({"event": "stage", "stage": "pseudo-labels",
                  "message": f"pseudo-label backbone: {args.backbone} (the default on "
                             f"{folder_run.device_type(device)}; choose with --backbone)"})
    reporter({"event": "stage", "stage": "load", "message": f"loading {args.base} on {device} ..."})
    with reading_checkpoints(base_path):
        model = folder_run.load_base(base_path, device, source=str(args.base))
    if args.pseudo_labels:
        labels_dir = Path(args.pseudo_labels)
    elif args.workers != 1 or args.scheduler:
        labels_dir = _make_pseudo_labels_on_dask(args, workdir / "pseudo-labels", reporter, cancel)
    else:
        labels_dir = folder_run.make_pseudo_labels(args.images, workdir, model, args.backbone, reporter, cancel,
                                                   dino_weights=args.dino_weights)
    if labels_dir is None:
        warn("interrupted while making pseudo-labels; run again to continue")
        return EXIT_INTERRUPTED
    augment = None if (args.no_augment or args.cache_embeddings) else AugmentConfig()
    config = FinetuneConfig(max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                            lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay, trainable=args.trainable,
                            checkpoint_every=args.checkpoint_every, val_fraction=args.val_fraction,
                            val_every=args.val_every, seed=args.seed, max_masks=args.max_masks,
                            num_correction_clicks=args.correction_clicks,
                            cache_embeddings=args.cache_embeddings, augment=augment is not None,
                            mask_chunk=args.mask_chunk)
    result = folder_run.train_on_folder(model, args.images, labels_dir, config, workdir=workdir, output=args.output,
                                        report=reporter, cancel=cancel, augment=augment, resume=args.resume,
                                        report_skipped=ctx.is_main)
    if result.cancelled:
        if ctx.is_main:
            warn(f"stopped at step {result.steps} of {result.max_steps}; checkpoint {result.checkpoint}. "
                 f"Continue with the same command plus --resume")
        return EXIT_INTERRUPTED
    if ctx.is_main and not args.json_progress:
        final = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        print(f"wrote {result.output} ({result.steps} steps{final}); log and loss curve in {workdir}", flush=True)
    return EXIT_OK


def _make_pseudo_labels_on_dask(args: argparse.Namespace, out_dir: Path, reporter: _Reporter,
                                cancel: threading.Event) -> Path | None:
    """The pseudo-labelling stage on Dask workers (``--workers N`` / ``--scheduler``); None if cancelled.

    The same recipe as the in-process stage: the base model's encoder and whole-image masks unless
    ``--backbone classical``; JSONs made with other settings are re-done (derived data).
    """
    from unsamv2_engine import weights
    from unsamv2_engine.batch.pseudo_labels import pseudo_label_batch

    if args.scheduler and args.workers != 1:
        raise CliError("give --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    reporter({"event": "stage", "stage": "pseudo-labels", "message": f"making pseudo-labels ({args.backbone}) into "
                                                                     f"{out_dir} on Dask workers ..."})

    def progress(done: int, total: int, name: str) -> None:
        reporter({"event": "stage", "stage": "pseudo-labels", "done": int(done), "total": int(total), "image": name,
                  "message": f"pseudo-labelled {done}/{total}: {name}"})

    with_model = args.backbone != "classical"
    options = {"checkpoint": str(weights.resolve_checkpoint(args.base)) if with_model else None, "model": None,
               "adapter": None, "allow_base_mismatch": False, "device": args.device, "backbone": args.backbone,
               "dino_weights": args.dino_weights, "no_overlays": False, "overwrite": True, "settings": {}}
    done = [0]

    def on_record(record: dict[str, Any]) -> None:
        done[0] += 1
        progress(done[0], total[0], Path(record["input"]).name)
        if cancel.is_set():
            raise KeyboardInterrupt  # cancels the items not started; the manifest keeps what is done

    from unsamv2_engine.batch.inputs import list_inputs

    total = [len(list_inputs(args.images, zarr=False))]
    try:
        summary = pseudo_label_batch(args.images, out_dir, options=options, workers=args.workers,
                                     scheduler=args.scheduler, quiet=True, on_record=on_record,
                                     say=lambda m: reporter({"event": "stage", "stage": "pseudo-labels", "message": m}))
    except KeyboardInterrupt:
        return None
    if cancel.is_set():
        return None
    reporter({"event": "stage", "stage": "pseudo-labels",
              "message": f"pseudo-labels: {len(summary.done)} images done, {len(summary.skipped)} already there, "
                         f"{len(summary.failed)} failed ({summary.where}, {summary.seconds:.1f} s)"})
    for record in summary.failed:
        reporter({"event": "stage", "stage": "pseudo-labels",
                  "message": f"could not pseudo-label {Path(record['input']).name}: {record['reason']}"})
    return out_dir
