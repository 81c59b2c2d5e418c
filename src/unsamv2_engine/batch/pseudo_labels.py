"""Pseudo-label a folder or glob of images on the chosen executor (``unsamv2 pseudo-label`` with a glob or
``--workers``, and the first stage of ``finetune --workers``).

Each image is one work unit (:func:`.items.run_pseudo_item`) writing ``<out>/<stem>.json`` (+ overlay);
``<out>/manifest.json`` records every item (:mod:`.manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from unsamv2_engine.batch.inputs import MANIFEST_NAME, list_inputs, plan_items
from unsamv2_engine.batch.items import ItemTask, pseudo_info, run_pseudo_item
from unsamv2_engine.batch.manifest import Manifest
from unsamv2_engine.batch.runner import BatchSummary, executor, run_tasks
from unsamv2_engine.batch.worker import file_identity

__all__ = ["NOT_SETTINGS", "model_identity", "pseudo_label_batch"]

#: Options that never change an item's outputs (how the batch runs, messages, per-image paths).
NOT_SETTINGS = {"func", "command", "workers", "scheduler", "quiet", "traceback", "download", "overwrite",
                "image", "images_dir", "output", "json", "table", "embeddings"}


def model_identity(path: str | os.PathLike[str], source: str, adapter: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The manifest's record of a model: its local file (path, size, modification time), how it was named, and
    the adapter file's identity.
    """
    return {"model_file": file_identity(path), "model_source": str(source), "adapter_file": file_identity(adapter)}


def pseudo_label_batch(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                       options: Mapping[str, Any], workers: int = 1, scheduler: str | None = None,
                       quiet: bool = False, say: Callable[[str], None] = lambda _m: None,
                       on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """Pseudo-label every image of ``source`` (folder or glob) into ``out_dir`` on the chosen executor.

    Args:
        options: ``checkpoint`` / ``model`` (none: no model, the classical backbone; a name must already be
            in the weights cache), ``adapter``, ``allow_base_mismatch``, ``device``, ``backbone``,
            ``dino_weights``, ``settings`` (overrides of
            :class:`~unsamv2_engine.pseudo.pipeline.PseudoLabelSettings`), ``no_overlays``, ``overwrite``.
        workers: local Dask worker processes (1: in this process, no Dask); ``scheduler``: an existing one.

    Raises
    ------
        SettingsMismatchError: some JSONs in ``out_dir`` were made with other settings and ``overwrite`` is
            not set (checked before any image is labelled, as ``pseudo_label_folder`` does).
    """
    from unsamv2_engine import __version__, weights
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
    named = options.get("checkpoint") or options.get("model")
    if named:
        path = weights.resolve_checkpoint(named, download_missing=False, progress=False)
        model = model_identity(path, named, options.get("adapter"))
    settings = {"engine_version": __version__,
                "options": {k: v for k, v in sorted(options.items()) if k not in NOT_SETTINGS}, **model}
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
