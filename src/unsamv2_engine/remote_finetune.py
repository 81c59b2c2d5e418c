"""Fine-tuning started by a remote client (:class:`~unsamv2_engine.protocol.FineTune`), run on the server.

The request names folders **of the server**; they are interpreted here, and only inside the data root the
operator gave (``unsamv2 serve --data-root DIR``): without one, fine-tuning from clients is off. The run is
the one of ``unsamv2 finetune`` (the steps of :mod:`unsamv2_engine.train.folder_run`): the base checkpoint
of the served model, loaded afresh (the served model is never trained in place), pseudo-labels made
first unless given, embeddings cached with a frozen encoder. Its events reach
the client as :class:`~unsamv2_engine.protocol.FineTuneEvent` messages; the client's cancel saves a
checkpoint after the current step.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unsamv2_engine import protocol as p
from unsamv2_engine.errors import EngineError, InputError

TRAINABLE = ("granularity", "decoder", "all")
BACKBONES = ("sam2", "classical")


class DataRootError(InputError):
    """A path of a FineTune request outside the server's data root, or fine-tuning not enabled."""


def resolve_inside(root: Path, value: str, what: str) -> Path:
    """``value`` (absolute, or relative to ``root``) resolved; refused unless it lies inside ``root``."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what}: give a path on the server (inside its data root {root})")
    path = Path(value.strip())
    full = (path if path.is_absolute() else root / path).resolve()
    if full != root and root not in full.parents:
        raise DataRootError(f"{what} {value} is outside the server's data root {root}: give a path inside it "
                            "(absolute, or relative to the data root); the server reads and writes nothing else")
    return full


class RemoteFinetuner:
    """Runs FineTune requests for an :class:`~unsamv2_engine.remote_server.EngineServer`, one at a time.

    data_root: the folder clients may read and write (None: fine-tuning refused); base_checkpoint: the
    served model's checkpoint file (the base of every run); device: where to train (the served model's).
    """

    def __init__(self, data_root: str | Path | None, base_checkpoint: str | Path | None, device: Any) -> None:
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.base_checkpoint = Path(base_checkpoint) if base_checkpoint is not None else None
        self.device = device
        self._running = threading.Lock()

    def run(self, request: p.FineTune, emit: Callable[[Any], None], cancel: threading.Event) -> p.FineTuned:
        """Check the request, then train (blocking); raises user errors for the client."""
        if self.data_root is None:
            raise DataRootError("fine-tuning from a client is off on this server: start it with 'unsamv2 serve "
                                "--data-root DIR' (the folder that holds the images and receives the adapters)")
        if self.base_checkpoint is None:
            raise EngineError("this server's model was not loaded from a checkpoint file: fine-tuning needs one "
                              "(start 'unsamv2 serve' with --checkpoint or --model)")
        job = _checked(request, self.data_root)
        if not self._running.acquire(blocking=False):
            raise EngineError("another client's fine-tuning run is going on this server: wait until it ends")
        try:
            cancel.clear()
            return self._train(request, job, emit, cancel)
        finally:
            self._running.release()

    def _train(self, request: p.FineTune, job: dict[str, Any], emit: Callable[[Any], None],
               cancel: threading.Event) -> p.FineTuned:
        from unsamv2_engine.outputs import check_output_dir, check_outputs
        from unsamv2_engine.train import folder_run
        from unsamv2_engine.train.config import FinetuneConfig

        start = time.perf_counter()
        rid = request.request_id

        def report(event: dict[str, Any]) -> None:
            emit(p.FineTuneEvent(rid, json.loads(json.dumps(event, default=str))))  # plain JSON values only

        base = self.base_checkpoint
        check_outputs({"adapter": job["output"]}, {"the base checkpoint": base})
        check_output_dir("workdir", job["workdir"], inputs={"the base checkpoint": base, "adapter": job["output"]})
        backbone = request.backbone or folder_run.default_backbone(self.device)
        report({"event": "stage", "stage": "load", "message": f"loading the base {base.name} on {self.device} ..."})
        model = folder_run.load_base(base, self.device)
        labels_dir = job["pseudo_labels"]
        if labels_dir is None:
            labels_dir = folder_run.make_pseudo_labels(job["images"], job["workdir"], model, backbone, report, cancel)
            if labels_dir is None:
                return p.FineTuned(rid, None, 0, request.max_steps, None, None, None, str(job["workdir"]), True,
                                   time.perf_counter() - start)
        config = FinetuneConfig(max_steps=request.max_steps, batch_size=request.batch_size, lr=request.lr,
                                min_lr=min(1e-5, request.lr), trainable=request.trainable,
                                val_fraction=request.val_fraction, seed=request.seed, max_masks=request.max_masks,
                                num_correction_clicks=request.correction_clicks,
                                cache_embeddings=request.trainable != "all", augment=False)
        result = folder_run.train_on_folder(model, job["images"], labels_dir, config, workdir=job["workdir"],
                                            output=job["output"], report=report, cancel=cancel,
                                            resume=request.resume)
        del model
        return p.FineTuned(rid, None if result.cancelled or result.output is None else str(result.output),
                           result.steps, result.max_steps, result.final_loss, result.val[-1] if result.val else None,
                           None if result.checkpoint is None else str(result.checkpoint), str(result.workdir),
                           bool(result.cancelled), time.perf_counter() - start)


def _checked(request: p.FineTune, root: Path) -> dict[str, Any]:
    """The request's paths resolved inside ``root`` and its settings checked (before anything is loaded)."""
    images = resolve_inside(root, request.images, "images folder")
    if not images.is_dir():
        raise InputError(f"images folder {request.images}: no such folder on the server (inside {root})")
    labels = None
    if request.pseudo_labels:
        labels = resolve_inside(root, request.pseudo_labels, "pseudo-labels folder")
        if not labels.is_dir():
            raise InputError(f"pseudo-labels folder {request.pseudo_labels}: no such folder on the server")
    output = resolve_inside(root, request.output, "adapter")
    if output.suffix.lower() != ".pt" or output.is_dir():
        raise InputError(f"adapter {request.output} must be a file name ending in .pt")
    workdir = resolve_inside(root, request.workdir, "workdir") if request.workdir else \
        output.with_name(f"{output.stem}_work")
    if request.trainable not in TRAINABLE:
        raise InputError(f"trainable must be one of {', '.join(TRAINABLE)}, got {request.trainable!r}")
    if request.backbone is not None and request.backbone not in BACKBONES:
        raise InputError(f"backbone must be one of {', '.join(BACKBONES)} on a server, got {request.backbone!r}")
    if not isinstance(request.max_steps, int) or request.max_steps < 1:
        raise InputError(f"max_steps must be a whole number >= 1, got {request.max_steps!r}")
    return {"images": images, "pseudo_labels": labels, "output": output, "workdir": workdir}
