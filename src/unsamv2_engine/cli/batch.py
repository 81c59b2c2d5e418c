"""The batch form of ``auto``, ``hierarchy``, ``embed`` and ``pseudo-label``: a folder or glob of images.

Each command adds :func:`add_batch_options` to its parser and starts its run function with::

    if (code := run_batch(args, "auto")) is not None:
        return code

With a folder or glob as input, ``-o`` names a folder and each image gets the outputs a single-image
run would write, named after it (:data:`SPECS`): ``auto`` and ``hierarchy`` ``<out>/<stem>.tif``
(``--json DIR``: ``<DIR>/<stem>.json``; ``--table DIR``: ``<DIR>/<stem>.csv``; ``--embeddings DIR``:
``<DIR>/<stem>.embeddings.zarr``, the layout a batch ``embed`` writes), ``embed``
``<out>/<stem>.embeddings.zarr``, ``pseudo-label`` ``<out>/<stem>.json`` (+ ``overlays/<stem>.png``).
``<out>/manifest.json`` records every item. The engine side (inputs, manifest, workers, Dask) is
:mod:`unsamv2_engine.batch`. Standard library only at import (``unsamv2 CMD --help`` imports neither
torch nor dask).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsamv2_engine.cli.loading import model_inputs, resolve_model_file
from unsamv2_engine.cli.options import positive_int
from unsamv2_engine.cli.output import EXIT_OK, CliError, say, warn

__all__ = ["SPECS", "BatchSpec", "add_batch_options", "run_batch", "run_cli_batch", "run_cli_item"]


@dataclass(frozen=True)
class BatchSpec:
    """How a command's batch names things: its input's argparse dest, and dest -> suffix of each per-image path
    (optional ones only when their option is given); ``zarr``: zarr image folders are inputs too.
    """

    input_dest: str
    targets: Mapping[str, str]
    zarr: bool = True


SPECS = {
    "auto": BatchSpec("image", {"output": ".tif", "json": ".json", "embeddings": ".embeddings.zarr"}),
    "hierarchy": BatchSpec("image", {"output": ".tif", "table": ".csv", "json": ".json",
                                     "embeddings": ".embeddings.zarr"}),
    "embed": BatchSpec("image", {"output": ".embeddings.zarr"}),
    "pseudo-label": BatchSpec("images_dir", {"output": ".json"}, zarr=False),
}


# ============================================================================ options
def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--scheduler ADDRESS`` (used when the input is a folder or a glob)."""
    group = parser.add_argument_group(
        "batch (a folder or a quoted glob as input; -o then names a folder)",
        "Each image gets <output folder>/<image stem><suffix>; <output folder>/manifest.json records every "
        "image (done, failed with the reason, skipped); a re-run skips what is done with the same settings. "
        "See docs/batch.md.")
    group.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="images in parallel on a local Dask cluster of N worker processes, each loading the "
                            "model once (default: 1, in this process, no Dask)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the workers of an existing dask.distributed scheduler, e.g. tcp://node:8786 "
                            "(dask-jobqueue on SLURM; the files must be on a filesystem the workers share)")


def check_run_options(args: argparse.Namespace) -> None:
    """``--workers`` and ``--scheduler`` exclude each other."""
    if getattr(args, "scheduler", None) and getattr(args, "workers", 1) != 1:
        raise CliError("give --workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one), "
                       "not both: the scheduler's workers are used")


def _model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the model file here, before any worker starts (a missing file or name fails once, --download
    downloads once), and identify it by path, size and modification time for the manifest.
    """
    from unsamv2_engine.batch.pseudo_labels import model_identity

    path, source = resolve_model_file(args)
    return model_identity(path, source, getattr(args, "adapter", None))


def settings_of(args: argparse.Namespace, model: Mapping[str, Any]) -> dict[str, Any]:
    """What decides an item's outputs: the options that are not per-image paths or run options, the model
    file's identity and the engine version. A re-run skips an item only if these are equal.
    """
    from unsamv2_engine import __version__
    from unsamv2_engine.batch.pseudo_labels import NOT_SETTINGS

    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}
    return {"engine_version": __version__, "options": options, **model}


def _prepare_folders(args: argparse.Namespace, spec: BatchSpec, source: str) -> dict[str, tuple[str, str]]:
    """Check and create the output folders; dest -> (folder, suffix) for ``plan_items``."""
    from unsamv2_engine.outputs import check_output_dir

    targets: dict[str, tuple[str, str]] = {}
    input_dirs = {"IMAGES": source} if Path(source).is_dir() else {}
    for dest, suffix in spec.targets.items():
        folder = getattr(args, dest, None)
        if not folder:
            continue
        option = "-o" if dest == "output" else f"--{dest}"
        if folder == "-":
            raise CliError(f"{option} - (stdout) is for one image; with a folder or glob as input give a "
                           f"folder for the {suffix} files")
        if Path(folder).suffix.lower() in (".tif", ".tiff", ".json", ".csv", ".png") and not Path(folder).is_dir():
            raise CliError(f"{option} {folder}: with a folder or glob as input, {option} names a folder "
                           f"(each image gets <folder>/<image stem>{suffix}); e.g. {option} "
                           f"{Path(folder).with_suffix('')}/")
        check_output_dir(option, folder, inputs=model_inputs(args), input_dirs=input_dirs)
        Path(folder).mkdir(parents=True, exist_ok=True)
        targets[dest] = (folder, suffix)
    return targets


# ============================================================================ auto, hierarchy, embed
def run_cli_item(task: Any) -> dict[str, Any]:
    """Run ``task.func`` (an :class:`~unsamv2_engine.batch.items.ItemTask`) on one image, quiet, with stdout and
    stderr captured into its manifest record; a failure is recorded, never raised.
    """
    from unsamv2_engine.batch import worker
    from unsamv2_engine.batch.items import describe_error, item_record

    start = time.perf_counter()
    options = {**task.options, "image": task.input, **task.outputs, "quiet": True}
    options["device"] = worker.device_for(options.get("device"))
    with worker.captured_output() as (out, err):
        try:
            code = task.func(argparse.Namespace(**options)) if task.func is not None else 2
            status, reason = ("done", "") if code in (0, None) else ("failed", f"exit code {code}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            status, reason = "failed", describe_error(exc)
    return item_record(task, status, reason, start, options["device"], out.getvalue(), err.getvalue())


def _precheck(args: argparse.Namespace, command: str) -> None:
    """Checks every item would fail alike, made once before any work."""
    if command in ("auto", "hierarchy"):
        from types import SimpleNamespace

        from unsamv2_engine.cli.auto import settings_from_args

        settings_from_args(args, SimpleNamespace(type="cpu"))  # the settings overrides are valid together


def run_cli_batch(args: argparse.Namespace, command: str, *,
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Run ``command`` (``auto``, ``hierarchy``, ``embed``) on every image of ``args.image`` (folder or glob);
    returns the :class:`~unsamv2_engine.batch.runner.BatchSummary`.
    """
    from unsamv2_engine.batch.inputs import MANIFEST_NAME, list_inputs, plan_items
    from unsamv2_engine.batch.items import ItemTask
    from unsamv2_engine.batch.manifest import Manifest
    from unsamv2_engine.batch.runner import executor, run_tasks

    spec = SPECS[command]
    check_run_options(args)
    source = getattr(args, spec.input_dest)
    _precheck(args, command)
    targets = _prepare_folders(args, spec, source)
    items = plan_items(list_inputs(source, zarr=spec.zarr), targets)
    settings = settings_of(args, _model_identity(args))
    options = {k: v for k, v in vars(args).items() if k not in ("func", "workers", "scheduler", "download")}
    options["download"] = False  # the model file was resolved (and downloaded) here
    tasks = [ItemTask(input=item.input, outputs=item.outputs, options=options, func=args.func) for item in items]
    manifest = Manifest.load(Path(args.output) / MANIFEST_NAME, command)
    if manifest.note:
        warn(manifest.note)
    with executor(workers=args.workers, scheduler=args.scheduler, device=args.device,
                  say=lambda text: say(args, text)) as ex:
        say(args, f"{command}: {len(tasks)} images from {source} -> {args.output} ({ex.description})")
        return run_tasks(tasks, run_cli_item, manifest=manifest, settings=settings, ex=ex, label=command,
                         quiet=args.quiet, on_record=on_record)


# ============================================================================ pseudo-label
def _pseudo_options(args: argparse.Namespace) -> dict[str, Any]:
    """``pseudo-label``'s command line as ``pseudo_label_batch`` options (the model file resolved here)."""
    if args.checkpoint or args.model:
        resolve_model_file(args)  # a missing file fails, and a name is downloaded (--download), once, here
    return {"checkpoint": args.checkpoint, "model": args.model, "adapter": args.adapter,
            "allow_base_mismatch": args.allow_base_mismatch, "device": args.device, "backbone": args.backbone,
            "dino_weights": args.dino_weights, "no_overlays": args.no_overlays, "overwrite": args.overwrite,
            "settings": {"max_side": args.max_side, "max_instances": args.max_instances,
                         "thetas": list(args.thetas) if args.thetas else None,
                         "nucleoli": getattr(args, "nucleoli", None)}}


# ============================================================================ the commands' one call
def run_batch(args: argparse.Namespace, command: str) -> int | None:
    """The batch form of ``command`` when its input is a folder or glob (``pseudo-label``: a glob, or a folder
    with ``--workers``/``--scheduler``), else None: the command goes on with its single-input path.

    Prints the summary line on stdout; returns 0, or raises a user error when every image failed.
    """
    from unsamv2_engine.batch.inputs import is_batch_input

    spec = SPECS[command]
    source = getattr(args, spec.input_dest)
    parallel = getattr(args, "workers", 1) != 1 or bool(getattr(args, "scheduler", None))
    if not is_batch_input(source):
        if parallel:
            warn("--workers / --scheduler apply to a folder or glob of images; this one image runs here")
        return None
    if command == "pseudo-label" and Path(source).is_dir() and not parallel:
        return None  # the folder path of pseudo_label_folder, as before
    if command == "pseudo-label":
        check_run_options(args)
        from unsamv2_engine.batch.pseudo_labels import pseudo_label_batch
        from unsamv2_engine.pseudo.pipeline import SettingsMismatchError

        try:
            summary = pseudo_label_batch(source, args.output, options=_pseudo_options(args), workers=args.workers,
                                         scheduler=args.scheduler, quiet=args.quiet,
                                         say=lambda text: say(args, text))
        except SettingsMismatchError as exc:
            raise CliError(str(exc)) from None
    else:
        summary = run_cli_batch(args, command)
    return report(summary, command)


def report(summary: Any, command: str) -> int:
    """Print the summary (stdout) and a warning for items with warnings; a user error if every image failed."""
    warned = [r for r in summary.done if r.get("warnings")]
    if warned:
        warn(f"{len(warned)} image(s) have warnings (e.g. {warned[0]['input']}: {warned[0]['warnings'][0]}); "
             f"all are in {summary.manifest}")
    print(summary.line(command), flush=True)
    if summary.failed and not summary.done and not summary.skipped:
        first = summary.failed[0]
        raise CliError(f"every image failed ({len(summary.failed)}), e.g. {first['input']}: "
                       f"{first['reason']}; the reasons are in {summary.manifest}")
    return EXIT_OK
