"""Fine-tuning of UnSAMv2 on pseudo-labels: the training loop (docs/model-reference.md §4).

One optimizer step:

1. ``grad_accum`` micro-batches of ``batch_size`` images (global; each DDP rank takes its share);
2. per image: the image embedding (no gradient while the encoder is frozen; cached once per image
   with ``cache_embeddings``), then for its objects (up to 30 masks) 1 + ``num_correction_clicks``
   decoder passes: one positive click uniform inside the mask, then one click per pass from the error
   of the previous ``high-res logits > 0`` (FN positive, FP negative), all clicks so far as prompts,
   the previous low-res logits as ``mask_input``, the granularity token at the mask's stored g
   (§4.3, §4.4). As in SAM 2 training, an object whose objectness logit is <= 0 has its logits set
   to -1024 for that pass;
3. loss :func:`unsamv2_engine.train.losses.unsamv2_loss` on the 1024x1024 logits, summed over the
   passes and divided by the number of objects of the micro-batch averaged across ranks (§4.5);
4. AdamW (default betas), weight decay 1e-5, learning rate cosine from ``lr`` to ``min_lr`` over
   ``max_steps`` (§4.1); bf16 autocast on CUDA.

Trainable sets (:func:`select_trainable`): ``granularity`` (default, as the authors) = the 345,760
parameters UnSAMv2 adds; ``decoder`` = those plus the whole SAM mask decoder (tokens, transformer,
upscaling, hypernetwork MLPs, IoU and objectness heads) except ``conv_s0``/``conv_s1``, which project the
image encoder's high-resolution features once per image and so belong to the image path;
``all`` = every parameter of the model, the image encoder included (no embedding cache then).

Files under ``workdir`` (written by rank 0 only): ``checkpoints/step_<N>.pt`` and ``checkpoints/last.pt``
(trainable tensors, optimizer, schedule, step, RNG states, config, data split; atomic writes),
``log.jsonl`` (one JSON object per step and per validation), ``loss.png``. The result is an adapter
file (``granularity``) or a full UnSAMv2 checkpoint (``decoder``/``all``: an adapter holds only the
added parameters).

Modules: :mod:`.config` (the run's settings, trainable sets, schedule), :mod:`.sampling` (split,
sample order, click seeds, mask chunks), :mod:`.interactive_loss` (the simulated interaction and its
loss), :mod:`.state` (RNG states, atomic checkpoint I/O, resume checks), :mod:`.plotting`
(``loss.png``) and this module, the loop. The public names of those modules stay importable from here.
"""


from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unsamv2_engine.errors import InputError, OutputError
from unsamv2_engine.model.build import UnSAMv2Model, is_added_parameter
from unsamv2_engine.model.decoding import ImageFeatures, encode_image
from unsamv2_engine.train.augment import AugmentConfig
from unsamv2_engine.train.config import (
    AMP_CHOICES,
    TRAINABLE_SETS,
    FinetuneConfig,
    FinetuneResult,
    added_parameter_count,
    cosine_lr,
    select_trainable,
)
from unsamv2_engine.train.dataset import STREAM_CLICKS, STREAM_DROPOUT, PseudoLabelDataset, TrainSample, sample_seed
from unsamv2_engine.train.distributed import DistContext, current_context, shard
from unsamv2_engine.train.interactive_loss import NO_OBJECT_LOGIT, InteractiveLoss
from unsamv2_engine.train.plotting import plot_losses
from unsamv2_engine.train.sampling import STREAM_ORDER, SampleOrder, mask_chunks, object_click_seed, split_indices
from unsamv2_engine.train.state import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_torch_save,
    load_resume_state,
    rng_states,
    seeded_rng,
    set_rng_states,
)

log = logging.getLogger(__name__)

__all__ = ["AMP_CHOICES", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "NO_OBJECT_LOGIT", "STREAM_ORDER",
           "TRAINABLE_SETS", "FinetuneConfig", "FinetuneResult", "InteractiveLoss", "SampleOrder",
           "added_parameter_count", "cosine_lr", "finetune", "mask_chunks", "object_click_seed", "plot_losses",
           "select_trainable"]

Progress = Callable[[dict], None]


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "bf16":
        raise InputError("amp 'bf16' needs a CUDA device; use amp 'auto' or 'off'")
    return contextlib.nullcontext()


class _Run:
    """State shared by the steps of one :func:`finetune` call."""

    def __init__(self, model: UnSAMv2Model, dataset: PseudoLabelDataset, config: FinetuneConfig, workdir: Path,
                 ctx: DistContext, progress: Progress | None) -> None:
        self.model, self.dataset, self.config, self.workdir, self.ctx = model, dataset, config, workdir, ctx
        self.progress = progress
        self.device = model.device
        self.encoder_trainable = config.trainable == "all"
        self.features: dict[int, ImageFeatures] = {}
        self.history: list[float] = []
        self.val: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ reporting
    def emit(self, event: dict[str, Any]) -> None:
        if self.ctx.is_main and self.progress is not None:
            self.progress(event)

    def log_line(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.workdir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ features
    def image_inputs(self, sample: TrainSample) -> tuple[torch.Tensor | None, ImageFeatures | None]:
        """The encoder input (trainable encoder) or the image features (frozen encoder; cached if asked)."""
        if self.encoder_trainable:
            return sample.image[None].to(self.device), None
        if sample.index in self.features:
            return None, self.features[sample.index]
        pixels = sample.image[None] if sample.image is not None else self.dataset.pixels(sample.index)
        features = self.encode(pixels)
        if self.config.cache_embeddings:
            self.features[sample.index] = features
        return None, features

    def encode(self, pixels: torch.Tensor) -> ImageFeatures:
        with torch.no_grad(), _autocast(self.device, self.config.amp):
            return encode_image(self.model.sam, pixels.to(self.device))

    # ------------------------------------------------------------------ validation
    def validate(self, step: int, val_indices: list[int]) -> dict[str, Any] | None:
        """1-click IoU and NoC@85/90 on the held-out images at each mask's own pseudo granularity (rank 0)."""
        if not val_indices:
            return None
        record = None
        if self.ctx.is_main:
            record = self._validate(step, val_indices)
            self.val.append(record)
            self.log_line(record)
            self.emit(record)
        self.ctx.barrier()
        return record

    def _validate(self, step: int, val_indices: list[int]) -> dict[str, Any]:
        from unsamv2_engine.evaluate.interactive import Mode, evaluate_object
        from unsamv2_engine.evaluate.metrics import noc
        from unsamv2_engine.evaluate.predictors import SessionPredictor

        start = time.perf_counter()
        sam = self.model.sam
        modes = {name: m.training for name, m in sam.named_modules()}
        sam.eval()
        cfg = self.config
        try:
            predictor = SessionPredictor(self.model)  # merges LoRA for speed; train() unmerges it
            first, nocs85, nocs90 = [], [], []
            for index in val_indices:
                rgb8 = self.dataset.read_image(index)
                if index not in self.features and not self.encoder_trainable:
                    self.features[index] = self.encode(self.dataset.pixels(index))
                if index in self.features:
                    predictor.session.set_features(self.features[index], rgb8.shape[:2])
                else:
                    predictor.set_image(rgb8)
                which = self.dataset.choose_masks(index, 0)[:cfg.val_max_objects]
                masks, gs = self.dataset.read_masks(index, which)
                for mask, g in zip(masks, gs):
                    mode = Mode("fixed", float(np.clip(round(float(g), 6), 0.1, 1.0)))
                    run, _ = evaluate_object(predictor, mode, mask, max_clicks=cfg.val_max_clicks, target_iou=0.9)
                    first.append(run.ious[0])
                    nocs85.append(noc(run.ious, 0.85, cfg.val_max_clicks))
                    nocs90.append(noc(run.ious, 0.90, cfg.val_max_clicks))
        finally:
            for name, m in sam.named_modules():
                m.training = modes[name]
            self.model.unmerge_lora()
        return {"event": "val", "step": int(step), "iou_1click": float(np.mean(first)),
                "noc85": float(np.mean(nocs85)), "noc90": float(np.mean(nocs90)), "objects": len(first),
                "images": len(val_indices), "max_clicks": cfg.val_max_clicks,
                "seconds": round(time.perf_counter() - start, 3)}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, optimizer: torch.optim.Optimizer, trainable: dict[str, nn.Parameter],
                        split: tuple[list[int], list[int]]) -> Path | None:
        """``checkpoints/step_<step>.pt`` and ``checkpoints/last.pt`` (rank 0), plus ``loss.png``."""
        path = None
        if self.ctx.is_main:
            info = self.model.info
            state = {
                "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "step": int(step),
                "config": self.config.to_dict(),
                "trainable": {name: p.detach().cpu().clone() for name, p in trainable.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": {"kind": "cosine", "lr": self.config.lr, "min_lr": self.config.min_lr,
                              "max_steps": self.config.max_steps, "next_step": int(step)},
                "rng": rng_states(),
                "base": {"size": info.size, "family": info.family, "source": info.source,
                         "sha256": info.base_sha256},
                "split": {"train": [self.dataset.names[i] for i in split[0]],
                          "val": [self.dataset.names[i] for i in split[1]]},
                "history": list(self.history), "val": list(self.val), "skipped_steps": self.skipped_steps,
            }
            folder = self.workdir / "checkpoints"
            path = atomic_torch_save(state, folder / f"step_{step}.pt")
            atomic_torch_save(state, folder / "last.pt")
            steps = sorted((int(p.stem.split("_")[1]), p) for p in folder.glob("step_*.pt")
                           if p.stem.split("_")[1].isdigit())
            for _, old in steps[:-self.config.keep_checkpoints]:
                old.unlink(missing_ok=True)
            if self.history:
                plot_losses(self.history, self.val, self.workdir / "loss.png")
            self.emit({"event": "checkpoint", "step": int(step), "path": str(path)})
        self.last_checkpoint = self.workdir / "checkpoints" / f"step_{step}.pt"
        self.ctx.barrier()
        return path


def _as_dataset(data: PseudoLabelDataset | tuple[str | os.PathLike, str | os.PathLike], config: FinetuneConfig,
                image_size: int) -> PseudoLabelDataset:
    if isinstance(data, PseudoLabelDataset):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError("data must be a PseudoLabelDataset or a pair (images_dir, labels_dir)")
    augment = AugmentConfig() if config.augment and not config.cache_embeddings else None
    return PseudoLabelDataset(data[0], data[1], max_masks=config.max_masks, augment=augment, seed=config.seed,
                              image_size=image_size)


def finetune(model: UnSAMv2Model, data: PseudoLabelDataset | tuple[str | os.PathLike, str | os.PathLike],
             config: FinetuneConfig, *, workdir: str | os.PathLike, output: str | os.PathLike | None = None,
             resume: bool = False, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> FinetuneResult:
    """Fine-tune ``model`` on pseudo-labels (see the module docstring).

    Parameters
    ----------
    model : UnSAMv2Model
        The base model on its training device: UnSAMv2 (its module is fine-tuned) or plain SAM 2.1
        (a freshly initialised granularity module is added first). Trained in place; it is left in
        eval mode with its original ``requires_grad`` flags.
    data : PseudoLabelDataset or (images_dir, labels_dir)
        The training data; from folders, it is built with ``config.max_masks``, ``config.seed`` and
        augmentation unless ``config.augment`` is false or embeddings are cached.
    config : FinetuneConfig
    workdir : path
        Checkpoints, ``log.jsonl``, ``loss.png``. Refused if it holds checkpoints and ``resume`` is false.
    output : path, optional
        The adapter to write at the end (default ``workdir/adapter.pt``); for ``decoder``/``all`` it
        also carries the base tensors the run changed.
    resume : bool
        Continue from ``workdir/checkpoints/last.pt`` (same settings required); a fresh start when
        there is none.
    progress : callable, optional
        Called (rank 0 only) with event dicts: ``{"event": "stage", "stage", "message"}``,
        ``{"event": "step", "step", "max_steps", "loss", "lr", "seconds", ...}``, ``{"event": "val", ...}``,
        ``{"event": "checkpoint", "step", "path"}``, ``{"event": "done", "output", "steps", "final_loss"}``.
    cancel : threading.Event, optional
        When set, the run saves a checkpoint after the current step and returns (``cancelled``).

    Returns
    -------
    FinetuneResult
    """
    config.validate()
    start_time = time.perf_counter()
    workdir = Path(workdir)
    ctx = current_context(model.device)
    if config.batch_size % ctx.world_size:
        raise InputError(f"batch_size {config.batch_size} must be a multiple of the number of processes "
                         f"({ctx.world_size})")
    dataset = _as_dataset(data, config, model.image_size)
    if config.cache_embeddings and dataset.augment is not None:
        raise InputError("cache_embeddings reuses each image's embedding, so the dataset must not augment the "
                         "images: build it with augment=None (or set augment=False)")
    last_path = workdir / "checkpoints" / "last.pt"
    if last_path.exists() and not resume:
        raise InputError(f"{workdir} holds checkpoints of an earlier run: pass resume=True (--resume) to continue "
                         "it, or use another work folder")
    if not model.has_granularity:
        with seeded_rng(config.seed, torch.device("cpu")):  # the same --seed gives the same fresh module
            model.add_granularity_module()
    model.unmerge_lora()
    sam = model.sam
    flags = {name: p.requires_grad for name, p in sam.named_parameters()}
    trainable = select_trainable(model, config.trainable)
    for name, p in sam.named_parameters():
        p.requires_grad_(name in trainable)
    split = split_indices(len(dataset), config)
    order = SampleOrder(split[0], config.seed)
    run = _Run(model, dataset, config, workdir, ctx, progress)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    start_step = 0
    if resume and last_path.exists():
        state = load_resume_state(last_path, config, model, dataset)
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                trainable[name].copy_(tensor.to(trainable[name].device))
        optimizer.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"])
        start_step = int(state["step"])
        run.history, run.val = list(state["history"]), list(state["val"])
        run.skipped_steps = int(state.get("skipped_steps", 0))
        run.last_checkpoint = last_path
        if ctx.is_main:
            _truncate_log(workdir / "log.jsonl", start_step)
        run.emit({"event": "stage", "stage": "resume", "message": f"resuming at step {start_step} from {last_path}"})
    elif resume:
        run.emit({"event": "stage", "stage": "resume", "message": f"nothing to resume in {workdir}: starting afresh"})
    if ctx.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        if start_step == 0:
            (workdir / "log.jsonl").write_text("")
    ctx.barrier()
    run.emit({"event": "stage", "stage": "train",
              "message": f"{len(split[0])} training and {len(split[1])} validation images, "
                         f"{sum(p.numel() for p in trainable.values()):,} trainable parameters ({config.trainable}), "
                         f"{config.max_steps} steps of {config.batch_size * config.grad_accum} images"
                         + (f" on {ctx.world_size} processes" if ctx.enabled else "")})

    forward = ctx.wrap(InteractiveLoss(sam, config.num_correction_clicks),
                       find_unused_parameters=config.trainable != "granularity")
    cancelled = False
    try:
        if start_step == 0 and config.val_every > 0:
            run.validate(0, split[1])
        _set_train_modes(model, run.encoder_trainable)
        step = start_step
        while step < config.max_steps:
            if ctx.any(cancel is not None and cancel.is_set()):
                cancelled = True
                break
            record = _train_step(run, forward, optimizer, order, step)
            step += 1
            run.log_line(record)
            run.emit(record)
            if config.val_every and step % config.val_every == 0 and step < config.max_steps:
                run.validate(step, split[1])
                _set_train_modes(model, run.encoder_trainable)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                run.save_checkpoint(step, optimizer, trainable, split)
        if not cancelled and split[1]:
            run.validate(step, split[1])
        if step > start_step or cancelled or run.last_checkpoint is None:
            run.save_checkpoint(step, optimizer, trainable, split)
        out_path = None
        if not cancelled:
            out_path = _write_output(run, output, step)
            run.emit({"event": "done", "output": str(out_path), "steps": step, "final_loss": run.history[-1]
                      if run.history else None, "seconds": round(time.perf_counter() - start_time, 3)})
    finally:
        sam.eval()
        for name, p in sam.named_parameters():
            p.requires_grad_(flags[name])
    return FinetuneResult(output=out_path, workdir=workdir, steps=step, max_steps=config.max_steps,
                          losses=list(run.history), val=list(run.val), cancelled=cancelled,
                          checkpoint=run.last_checkpoint, seconds=time.perf_counter() - start_time,
                          skipped_steps=run.skipped_steps, dataset=dataset.describe())


def _set_train_modes(model: UnSAMv2Model, encoder_trainable: bool) -> None:
    """Training mode (dropout on, LoRA unmerged); a frozen image encoder stays in eval mode."""
    model.sam.train()
    if not encoder_trainable:
        model.sam.image_encoder.eval()


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log records after ``last_step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


def _train_step(run: _Run, forward: nn.Module, optimizer: torch.optim.Optimizer, order: SampleOrder,
                step: int) -> dict[str, Any]:
    """One optimizer step; returns its log record (loss terms averaged over ranks)."""
    cfg, ctx, device = run.config, run.ctx, run.device
    start = time.perf_counter()
    lr = cosine_lr(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    terms = {"loss": 0.0, "loss_mask": 0.0, "loss_dice": 0.0, "loss_iou": 0.0, "loss_class": 0.0}
    objects = 0
    for micro in range(cfg.grad_accum):
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        positions = list(range(first, first + cfg.batch_size))
        mine = [order.at(k) for k in shard(positions, ctx.rank, ctx.world_size)]
        samples = [run.dataset.sample(index, epoch, with_image=not (cfg.cache_embeddings and index in run.features))
                   for epoch, index in mine]
        local_objects = sum(s.num_objects for s in samples)
        objects += local_objects
        norm = ctx.mean(local_objects)
        for j, sample in enumerate(samples):
            image, features = run.image_inputs(sample)
            embed, (s0, s1) = ((features.image_embed, features.high_res) if features is not None
                               else (None, (None, None)))
            click_seed = sample_seed(cfg.seed, sample.epoch, sample.index, STREAM_CLICKS)
            dropout_seed = sample_seed(cfg.seed, sample.epoch, sample.index, STREAM_DROPOUT)
            # A frozen encoder: the masks go through in chunks, each back-propagated at once (same loss,
            # memory of one chunk). A trainable encoder's graph is shared by all masks: one pass.
            chunks = mask_chunks(sample.num_objects, cfg.mask_chunk if image is None else 0)
            for c, (lo, hi) in enumerate(chunks):
                last = micro == cfg.grad_accum - 1 and j == len(samples) - 1 and c == len(chunks) - 1
                with ctx.accumulating(forward, accumulate=not last), seeded_rng(dropout_seed + c, device):
                    with _autocast(device, cfg.amp):
                        out = forward(image, embed, s0, s1, sample.masks[lo:hi].to(device),
                                      sample.granularities[lo:hi].to(device), click_seed, norm, lo)
                    (out["loss"] / cfg.grad_accum).backward()
                terms["loss"] += float(out["loss"].detach()) / cfg.grad_accum
                for key in ("loss_mask", "loss_dice", "loss_iou", "loss_class"):
                    terms[key] += float(out[key]) / cfg.grad_accum
                del out
    # Each rank's loss is its objects' sum over the mean object count, so the mean over ranks is the
    # single-process loss of the global batch.
    terms = {k: ctx.mean(v) for k, v in terms.items()}
    finite = math.isfinite(terms["loss"])
    if finite:
        optimizer.step()
    else:
        run.skipped_steps += 1
        log.warning("step %d: loss is not finite (%s); the update is skipped", step + 1, terms["loss"])
    run.history.append(terms["loss"])
    return {"event": "step", "step": step + 1, "max_steps": cfg.max_steps, **terms, "lr": lr,
            "objects": int(ctx.mean(objects) * ctx.world_size), "skipped": not finite,
            "seconds": round(time.perf_counter() - start, 4)}


def _write_output(run: _Run, output: str | os.PathLike | None, steps: int) -> Path:
    """The adapter file, written by rank 0: the granularity module + LoRA, plus (trainable ``decoder`` /
    ``all``) the base tensors the run changed, so every trainable set loads with ``--adapter`` on its base.
    """
    from unsamv2_engine.model.checkpoint import save_adapter

    cfg, model = run.config, run.model
    path = Path(output) if output is not None else run.workdir / "adapter.pt"
    if run.ctx.is_main:
        metadata = {"finetune": {"steps": steps, "config": cfg.to_dict(), "dataset": run.dataset.describe(),
                                 "final_loss": run.history[-1] if run.history else None,
                                 "validation": run.val[-1] if run.val else None, "workdir": str(run.workdir),
                                 "processes": run.ctx.world_size}}
        changed = [name for name in select_trainable(model, cfg.trainable) if not is_added_parameter(name)]
        try:
            save_adapter(model, path, base_sha256=model.info.base_sha256, base_source=model.info.source,
                         metadata=metadata, extra_keys=changed)
        except OSError as exc:
            raise OutputError(f"cannot write the adapter {path} ({exc.strerror or exc}); the trained weights are safe "
                              f"in the last checkpoint in {run.workdir}: run the same command again with -o in a "
                              "writable folder and --resume to write the adapter") from exc
    run.ctx.barrier()
    return path
