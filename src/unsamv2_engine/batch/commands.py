"""The batch form of each command: ``auto``, ``hierarchy``, ``embed`` (:func:`run_cli_batch`) and
``pseudo-label`` (:func:`pseudo_label_batch`, also the first stage of ``finetune --workers``).

With a folder or glob as input, ``-o`` names a folder and each image gets the outputs a single-image
run would write, named after it (:data:`SPECS`): ``auto`` and ``hierarchy`` ``<out>/<stem>.tif``
(``--json DIR``: ``<DIR>/<stem>.json``; ``--table DIR``: ``<DIR>/<stem>.csv``; ``--embeddings DIR``:
``<DIR>/<stem>.embeddings.zarr``, the layout a batch ``embed`` writes), ``embed``
``<out>/<stem>.embeddings.zarr``, ``pseudo-label`` ``<out>/<stem>.json`` (+ ``overlays/<stem>.png``).
``<out>/manifest.json`` records every item (:mod:`.manifest`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsamv2_engine.batch.inputs import MANIFEST_NAME, is_batch_input, list_inputs, plan_items
from unsamv2_engine.batch.items import ItemTask, pseudo_info, run_cli_item, run_pseudo_item
from unsamv2_engine.batch.manifest import Manifest
from unsamv2_engine.batch.runner import BatchSummary, executor, run_tasks
from unsamv2_engine.batch.worker import file_identity

__all__ = ["SPECS", "BatchSpec", "pseudo_label_batch", "run_cli_batch", "run_command"]


@dataclass(frozen=True)
class BatchSpec:
    """How a command's batch names things: its input's argparse dest, and dest -> suffix of each per-image path
    (optional ones only when their option is given); ``zarr``: zarr image folders are inputs too."""

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
#: Options that never change an item's outputs (how the batch runs, messages, per-image paths).
_NOT_SETTINGS = {"func", "command", "workers", "scheduler", "quiet", "traceback", "download", "overwrite",
                 "image", "images_dir", "output", "json", "table", "embeddings"}


def _cli():
    from unsamv2_engine import cli as main_cli  # standard library only

    return main_cli


def _message(args: argparse.Namespace) -> Callable[[str], None]:
    main_cli = _cli()
    return lambda text: main_cli._say(args, text)


def _check_run_options(args: argparse.Namespace) -> None:
    if getattr(args, "scheduler", None) and getattr(args, "workers", 1) != 1:
        raise _cli().CliError("give --workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one), "
                              "not both: the scheduler's workers are used")


def _model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the model file here, before any worker starts (a missing file or name fails once, --download
    downloads once), and identify it by path, size and modification time for the manifest."""
    main_cli = _cli()
    path, source = main_cli._resolve_model_file(args)
    return {"model_file": file_identity(path), "model_source": source,
            "adapter_file": file_identity(getattr(args, "adapter", None))}


def settings_of(args: argparse.Namespace, model: Mapping[str, Any]) -> dict[str, Any]:
    """What decides an item's outputs: the options that are not per-image paths or run options, the model
    file's identity and the engine version. A re-run skips an item only if these are equal."""
    from unsamv2_engine import __version__

    options = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    return {"engine_version": __version__, "options": options, **model}


def _prepare_folders(args: argparse.Namespace, spec: BatchSpec, source: str) -> dict[str, tuple[str, str]]:
    """Check and create the output folders; dest -> (folder, suffix) for :func:`plan_items`."""
    from unsamv2_engine.outputs import check_output_dir

    main_cli = _cli()
    targets: dict[str, tuple[str, str]] = {}
    input_dirs = {"IMAGES": source} if Path(source).is_dir() else {}
    for dest, suffix in spec.targets.items():
        folder = getattr(args, dest, None)
        if not folder:
            continue
        option = "-o" if dest == "output" else f"--{dest}"
        if folder == "-":
            raise main_cli.CliError(f"{option} - (stdout) is for one image; with a folder or glob as input give a "
                                    f"folder for the {suffix} files")
        if Path(folder).suffix.lower() in (".tif", ".tiff", ".json", ".csv", ".png") and not Path(folder).is_dir():
            raise main_cli.CliError(f"{option} {folder}: with a folder or glob as input, {option} names a folder "
                                    f"(each image gets <folder>/<image stem>{suffix}); e.g. {option} "
                                    f"{Path(folder).with_suffix('')}/")
        check_output_dir(option, folder, inputs=main_cli.model_inputs(args), input_dirs=input_dirs)
        Path(folder).mkdir(parents=True, exist_ok=True)
        targets[dest] = (folder, suffix)
    return targets


# ============================================================================ auto, hierarchy, embed
def _precheck(args: argparse.Namespace, command: str) -> None:
    """Checks every item would fail alike, made once before any work."""
    if command in ("auto", "hierarchy"):
        from types import SimpleNamespace

        from unsamv2_engine.automatic.cli import _settings

        _settings(args, SimpleNamespace(type="cpu"))  # the settings overrides are valid together


def run_cli_batch(args: argparse.Namespace, command: str, *,
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """Run ``command`` (``auto``, ``hierarchy``, ``embed``) on every image of ``args.image`` (folder or glob)."""
    spec = SPECS[command]
    _check_run_options(args)
    source = getattr(args, spec.input_dest)
    _precheck(args, command)
    targets = _prepare_folders(args, spec, source)
    items = plan_items(list_inputs(source, zarr=spec.zarr), targets)
    settings = settings_of(args, _model_identity(args))
    options = {k: v for k, v in vars(args).items() if k not in ("func", "workers", "scheduler", "download")}
    options["download"] = False  # the model file was resolved (and downloaded) here
    tasks = [ItemTask(input=item.input, outputs=item.outputs, options=options, func=args.func) for item in items]
    manifest = Manifest.load(Path(args.output) / MANIFEST_NAME, command)
    say = _message(args)
    if manifest.note:
        _cli()._warn(manifest.note)
    with executor(workers=args.workers, scheduler=args.scheduler, device=args.device, say=say) as ex:
        say(f"{command}: {len(tasks)} images from {source} -> {args.output} ({ex.description})")
        return run_tasks(tasks, run_cli_item, manifest=manifest, settings=settings, ex=ex, label=command,
                         quiet=args.quiet, on_record=on_record)


# ============================================================================ pseudo-label
def pseudo_label_batch(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                       options: Mapping[str, Any], workers: int = 1, scheduler: str | None = None,
                       quiet: bool = False, say: Callable[[str], None] = lambda _m: None,
                       on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """Pseudo-label every image of ``source`` (folder or glob) into ``out_dir`` on the chosen executor.

    Args:
        options: ``checkpoint`` / ``model`` (none: no model, the classical backbone), ``adapter``,
            ``allow_base_mismatch``, ``device``, ``backbone``, ``dino_weights``, ``settings`` (overrides of
            :class:`~unsamv2_engine.pseudo.pipeline.PseudoLabelSettings`), ``no_overlays``, ``overwrite``.
    Raises:
        SettingsMismatchError: some JSONs in ``out_dir`` were made with other settings and ``overwrite`` is
            not set (checked before any image is labelled, as ``pseudo_label_folder`` does).
    """
    from unsamv2_engine.outputs import check_output_dir
    from unsamv2_engine.pseudo.pipeline import SettingsMismatchError, existing_state

    source = os.fspath(source)
    check_output_dir("-o", out_dir, inputs={"--checkpoint": options.get("checkpoint"),
                                            "--adapter": options.get("adapter"),
                                            "--dino-weights": options.get("dino_weights")},
                     input_dirs={"IMAGES_DIR": source} if Path(source).is_dir() else {})
    items = plan_items(list_inputs(source, zarr=False), {"output": (os.fspath(out_dir), ".json")})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model: dict[str, Any] = {}
    if options.get("checkpoint") or options.get("model"):
        model = _model_identity(argparse.Namespace(**{"adapter": None, "download": False, "quiet": quiet,
                                                      "checkpoint": None, "model": None, **options}))
    from unsamv2_engine import __version__

    settings = {"engine_version": __version__, "options": {k: v for k, v in sorted(options.items())
                                                           if k not in _NOT_SETTINGS}, **model}
    tasks = [ItemTask(input=item.input, outputs=item.outputs, options=dict(options)) for item in items]
    manifest = Manifest.load(Path(out_dir) / MANIFEST_NAME, "pseudo-label")
    with executor(workers=workers, scheduler=scheduler, device=str(options.get("device") or "auto"), say=say) as ex:
        info = ex.call(pseudo_info, dict(options))  # loads the model (on one worker) to know what the JSONs record
        states = {t.input: existing_state(Path(t.outputs["output"]), info) for t in tasks}
        stale = [t.outputs["output"] for t in tasks if states[t.input] == "other-settings"]
        if stale and not options.get("overwrite"):
            raise SettingsMismatchError(
                f"{len(stale)} pseudo-label file(s) in {out_dir} were made with other settings (e.g. "
                f"{Path(stale[0]).name}); use another output folder, or overwrite them (--overwrite)")
        skipped = []
        for t in tasks:
            if states[t.input] == "done":
                skipped.append({"input": t.input, "outputs": dict(t.outputs), "status": "skipped",
                                "reason": "its JSON was made with the same settings", "seconds": None,
                                "worker": None, "device": None, "message": "", "warnings": []})
        todo = [t for t in tasks if states[t.input] != "done"]
        say(f"pseudo-label: {len(tasks)} images from {source} -> {out_dir} ({ex.description}); "
            f"{len(skipped)} already done")
        return run_tasks(todo, run_pseudo_item, manifest=manifest, settings=settings, ex=ex, label="pseudo-labels",
                         quiet=quiet, on_record=on_record, skip_finished=False, skipped=skipped)


def _pseudo_options(args: argparse.Namespace) -> dict[str, Any]:
    """``pseudo-label``'s command line as :func:`pseudo_label_batch` options."""
    return {"checkpoint": args.checkpoint, "model": args.model, "adapter": args.adapter,
            "allow_base_mismatch": args.allow_base_mismatch, "device": args.device, "backbone": args.backbone,
            "dino_weights": args.dino_weights, "no_overlays": args.no_overlays, "overwrite": args.overwrite,
            "settings": {"max_side": args.max_side, "max_instances": args.max_instances,
                         "thetas": list(args.thetas) if args.thetas else None}}


# ============================================================================ the commands' one call
def run_command(args: argparse.Namespace, command: str) -> int | None:
    """The batch form of ``command`` when its input is a folder or glob (``pseudo-label``: a glob, or a folder
    with ``--workers``/``--scheduler``), else None: the command goes on with its single-input path.

    Prints the summary line on stdout; returns 0, or raises a user error when every image failed.
    """
    spec = SPECS[command]
    source = getattr(args, spec.input_dest)
    main_cli = _cli()
    parallel = getattr(args, "workers", 1) != 1 or bool(getattr(args, "scheduler", None))
    if not is_batch_input(source):
        if parallel:
            main_cli._warn("--workers / --scheduler apply to a folder or glob of images; this one image runs here")
        return None
    if command == "pseudo-label" and Path(source).is_dir() and not parallel:
        return None  # the folder path of pseudo_label_folder, as before
    if command == "pseudo-label":
        _check_run_options(args)
        from unsamv2_engine.pseudo.pipeline import SettingsMismatchError

        try:
            summary = pseudo_label_batch(source, args.output, options=_pseudo_options(args), workers=args.workers,
                                         scheduler=args.scheduler, quiet=args.quiet, say=_message(args))
        except SettingsMismatchError as exc:
            raise main_cli.CliError(str(exc)) from None
    else:
        summary = run_cli_batch(args, command)
    return report(summary, command)


def report(summary: BatchSummary, command: str) -> int:
    """Print the summary (stdout) and a warning for items with warnings; a user error if every image failed."""
    main_cli = _cli()
    warned = [r for r in summary.done if r.get("warnings")]
    if warned:
        main_cli._warn(f"{len(warned)} image(s) have warnings (e.g. {warned[0]['input']}: {warned[0]['warnings'][0]});"
                       f" all are in {summary.manifest}")
    print(summary.line(command), flush=True)
    if summary.failed and not summary.done and not summary.skipped:
        first = summary.failed[0]
        raise main_cli.CliError(f"every image failed ({len(summary.failed)}), e.g. {first['input']}: "
                                f"{first['reason']}; the reasons are in {summary.manifest}")
    return main_cli.EXIT_OK
