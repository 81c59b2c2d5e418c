"""What one work unit runs, on a Dask worker or in the command's own process.

Both item functions take an :class:`ItemTask` and return a manifest record (a dict; see
:mod:`.manifest`) instead of raising: one image's failure is recorded with its reason and the batch
goes on. Results are written by the item itself; only the small record travels back.

- :func:`unsamv2_engine.cli.batch.run_cli_item` (``auto``, ``hierarchy``, ``embed``): the command's own
  single-image function on a copy of the command line with this image and its output paths, so a batch
  writes exactly what single-image runs write. The model comes from the worker's cache (:mod:`.worker`).
- :func:`run_pseudo_item` (``pseudo-label``): one ``<stem>.json`` (+ overlay) through
  :func:`unsamv2_engine.pseudo.pipeline.label_file`, with the JSON's own resume rule.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ItemTask", "describe_error", "item_record", "pseudo_info", "run_pseudo_item"]


@dataclass(frozen=True)
class ItemTask:
    """One image to process.

    ``func``: the single-image command function (``args -> exit code``; pickled by reference);
    ``options``: the command line's options as a dict (argparse dest -> value) without per-image paths;
    ``input``: the image path; ``outputs``: dest -> path of this image's outputs.
    """

    input: str
    outputs: Mapping[str, str]
    options: Mapping[str, Any]
    func: Callable[[Any], int] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def describe_error(exc: BaseException) -> str:
    """One line for the manifest: the user-facing message of a user error, else the exception and where it
    was raised (a bug: please report it with the manifest).
    """
    from unsamv2_engine.errors import user_error_message  # standard library only

    message = user_error_message(exc)
    if message is not None:
        return message
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"internal error {type(exc).__name__}: {exc}{where} (a bug; please report it)"


def _where() -> str:
    """Return the worker's address (on Dask) or host:pid."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def item_record(task: ItemTask, status: str, reason: str, start: float, device: str, out: str = "",
                err: str = "") -> dict[str, Any]:
    """The manifest record of ``task``: status, reason, seconds since ``start``, where it ran, output lines."""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    warnings = [line.split("warning:", 1)[1].strip() for line in err.splitlines() if "warning:" in line]
    return {"input": task.input, "outputs": dict(task.outputs), "status": status, "reason": reason,
            "seconds": round(time.perf_counter() - start, 3), "worker": _where(), "device": device,
            "message": lines[-1] if lines else "", "warnings": warnings}


# ============================================================================ pseudo-label
def _pseudo_context(options: Mapping[str, Any]) -> tuple[Any, Any, Any, dict[str, Any], str]:
    """(model or None, feature backbone, PseudoLabelSettings, the JSON ``info``, device) of this process, cached."""
    from unsamv2_engine.batch import worker
    from unsamv2_engine.pseudo.backbones import make_backbone
    from unsamv2_engine.pseudo.pipeline import PseudoLabelSettings, folder_info

    settings = PseudoLabelSettings().with_(**dict(options.get("settings") or {}))
    model = None
    device = "cpu"
    if options.get("checkpoint") or options.get("model"):
        model, device = _load_model(options)
    name, weights = options.get("backbone"), options.get("dino_weights")
    backbone = worker.reuse(("backbone", name, id(model), worker.file_identity(weights), device),
                            lambda: make_backbone(name, model=model, dino_weights=weights, device=device))
    return model, backbone, settings, folder_info(backbone, model, settings), device


def _load_model(options: Mapping[str, Any]) -> tuple[Any, str]:
    """(model, device name) of ``options`` (``checkpoint`` or ``model``, ``adapter``, ``device``), loaded once
    per process; the model file was resolved (and downloaded) by the command before the batch.
    """
    import pickle

    from unsamv2_engine import weights
    from unsamv2_engine.batch import worker
    from unsamv2_engine.devices import resolve_device
    from unsamv2_engine.errors import CheckpointError, DeviceError
    from unsamv2_engine.model.checkpoint import load_checkpoint

    source = str(options.get("checkpoint") or options.get("model"))
    path = weights.resolve_checkpoint(source, download_missing=False, progress=False)  # resolved by the command
    try:
        device = str(resolve_device(worker.device_for(options.get("device"))))
    except RuntimeError as exc:
        raise DeviceError(str(exc)) from None
    adapter, allow = options.get("adapter"), bool(options.get("allow_base_mismatch"))

    def load() -> Any:
        try:
            return load_checkpoint(path, device=device, adapter=adapter, allow_base_mismatch=allow, source=source)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__})") from exc

    return worker.reuse_model(load, path=path, source=source, device=device, adapter=adapter,
                              allow_base_mismatch=allow), device


def pseudo_info(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``info`` this process would write into every JSON (for the resume check before the batch)."""
    import json

    return json.loads(json.dumps(_pseudo_context(options)[3]))


def run_pseudo_item(task: ItemTask) -> dict[str, Any]:
    """Pseudo-label one image into ``task.outputs["output"]`` (``<out>/<stem>.json``; overlay beside it)."""
    from pathlib import Path

    from unsamv2_engine.batch import worker

    start = time.perf_counter()
    device = "cpu"
    with worker.captured_output() as (out, err):
        try:
            from unsamv2_engine.pseudo.pipeline import existing_state, label_file

            model, backbone, settings, info, device = _pseudo_context(task.options)
            target = Path(task.outputs["output"])
            state = existing_state(target, info)
            if state == "done":
                return item_record(task, "skipped", "its JSON was made with the same settings", start, device)
            if state == "other-settings" and not task.options.get("overwrite"):
                return item_record(task, "failed", f"{target} was made with other settings; use another output "
                                                   "folder or --overwrite", start, device)
            overlays = not task.options.get("no_overlays")
            if overlays:
                (target.parent / "overlays").mkdir(parents=True, exist_ok=True)
            n, empty = label_file(Path(task.input), target, backbone, model, settings, info, overlays)
            record = item_record(task, "done", "", start, device, out.getvalue(), err.getvalue())
            record["message"] = f"{n} masks"
            if empty:
                record["warnings"].append(empty)
            return record
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            return item_record(task, "failed", describe_error(exc), start, device, out.getvalue(), err.getvalue())
