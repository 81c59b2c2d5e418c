"""One fine-tuning run from folders to an adapter: the steps ``unsamv2 finetune`` and a server's FineTune share.

1. :func:`load_base`: the base checkpoint, LoRA kept separate (the adapter stores the trained tensors);
2. :func:`make_pseudo_labels`: when no pseudo-label folder is given, the images are pseudo-labelled into
   ``<workdir>/pseudo-labels`` (in this process; the CLI can also use Dask workers);
3. :func:`train_on_folder`: the dataset of images + pseudo-label JSONs and
   :func:`~unsamv2_engine.train.trainer.finetune`.

Every step reports ``{"event": "stage", "stage": ..., "message": ...}`` dictionaries (the events of
``unsamv2 finetune --json-progress``) and stops early when ``cancel`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Report = Callable[[dict[str, Any]], None]


def device_type(device: Any) -> str:
    """``"cpu"``, ``"cuda"`` or ``"mps"`` of a torch device or a device name."""
    return str(getattr(device, "type", device)).split(":")[0]


def default_backbone(device: Any) -> str:
    """The pseudo-label backbone used when none is chosen: the weight-free one on a CPU, SAM's encoder elsewhere."""
    return "classical" if device_type(device) == "cpu" else "sam2"


def load_base(base: str | Path, device: Any, *, source: str | None = None):
    """The base model for training: LoRA not merged (trained separately), its file's SHA-256 recorded."""
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.weights import sha256_file_remembered

    model = load_checkpoint(Path(base), device=device, merge_lora=False, source=source or str(base))
    model.info.base_sha256 = sha256_file_remembered(Path(base))
    return model


def make_pseudo_labels(images: str | Path, workdir: Path, model: Any, backbone: str, report: Report,
                       cancel: threading.Event, *, dino_weights: str | None = None) -> Path | None:
    """Pseudo-label ``images`` into ``<workdir>/pseudo-labels``; None if cancelled.

    backbone ``classical`` is the weight-free recipe of ``unsamv2 pseudo-label`` (no model masks at g = 1);
    ``sam2``/``dino`` use ``model``'s encoder and whole-image masks. The workdir's labels are derived
    data: JSONs made with other settings are re-done.
    """
    from unsamv2_engine.pseudo.pipeline import pseudo_label_folder

    out_dir = Path(workdir) / "pseudo-labels"
    report({"event": "stage", "stage": "pseudo-labels", "message": f"making pseudo-labels ({backbone}) into "
                                                                   f"{out_dir} ..."})

    def progress(done: int, total: int, name: str) -> None:
        report({"event": "stage", "stage": "pseudo-labels", "done": int(done), "total": int(total), "image": name,
                "message": f"pseudo-labelled {done}/{total}: {name}"})

    summary = pseudo_label_folder(images, out_dir, model=None if backbone == "classical" else model,
                                  backbone=backbone, dino_weights=dino_weights, progress=progress, cancel=cancel,
                                  overwrite=True)
    if summary.cancelled or cancel.is_set():
        return None
    report({"event": "stage", "stage": "pseudo-labels",
            "message": f"pseudo-labels: {len(summary.done)} images done, {len(summary.skipped)} already there, "
                       f"{len(summary.failed)} failed, {summary.n_masks} masks"})
    for name, reason in summary.failed.items():
        report({"event": "stage", "stage": "pseudo-labels", "message": f"could not pseudo-label {name}: {reason}"})
    return out_dir


def train_on_folder(model: Any, images: str | Path, labels: str | Path, config: Any, *, workdir: Path, output: Path,
                    report: Report, cancel: threading.Event, augment: Any = None, resume: bool = False,
                    report_skipped: bool = True):
    """Train ``model`` on ``images`` + the pseudo-label JSONs of ``labels`` with ``config``
    (:class:`~unsamv2_engine.train.config.FinetuneConfig`); returns the
    :class:`~unsamv2_engine.train.config.FinetuneResult` (``cancelled`` when ``cancel`` was set).

    augment: an :class:`~unsamv2_engine.train.augment.AugmentConfig` or None; report_skipped: report the
    images the dataset could not use (False on DDP ranks other than the first).
    """
    from unsamv2_engine.train.dataset import PseudoLabelDataset
    from unsamv2_engine.train.trainer import finetune

    dataset = PseudoLabelDataset(images, labels, max_masks=config.max_masks, augment=augment, seed=config.seed,
                                 image_size=model.image_size)
    for reason in dataset.skipped if report_skipped else ():
        report({"event": "stage", "stage": "data", "message": f"skipped {reason}"})
    return finetune(model, dataset, config, workdir=workdir, output=output, resume=resume, progress=report,
                    cancel=cancel)
