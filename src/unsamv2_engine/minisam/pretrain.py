"""The pretraining loop of the miniature SAM: time-budgeted, resumable, with progress.

Every weight of a SAM 2.1-architecture model (default hiera-tiny at 256 px) is trained with
:func:`unsamv2_engine.minisam.recipe.interaction_loss` on an endless stream of synthetic images
(:func:`unsamv2_engine.minisam.samples.make_sample`, seed ``seed * 1_000_003 + position``), one image per
micro-batch, AdamW with a linear warm-up and a cosine decay over the run's progress, where progress is
``max(step / steps, elapsed / budget)``: the schedule ends with the time budget when that comes first.

Work folder: ``last.pt`` (weights, optimizer, step, elapsed seconds, config; atomic writes every
``checkpoint_minutes``) and ``log.jsonl`` (one record per step). A run started again with the same
output resumes from ``last.pt`` (same settings required). The output is written by
:func:`save_mini_checkpoint`: a plain SAM 2.1 file that records ``image_size`` and metadata saying it is
a synthetic miniature.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from unsamv2_engine.model.build import ModelInfo, UnSAMv2Model, build_model

CHECKPOINT_FORMAT = "unsamv2-minisam-pretrain"
KIND = "synthetic-miniature-sam2.1"
#: What the output file says about itself (``metadata["warning"]``).
WARNING = ("A miniature SAM 2.1-architecture model trained from random weights on synthetic microscopy only "
           "(unsamv2 pretrain-mini); NOT a real SAM 2.1 checkpoint and not for real images.")
_RUN_FIELDS = ("size", "image_size", "synth_shape", "objects", "correction_clicks", "lr", "min_lr",
               "weight_decay", "warmup", "seed", "modality", "grad_accum", "attention_init_gain", "innermost_clicks")

Progress = Callable[[dict], None]


@dataclass
class PretrainConfig:
    """Settings of a pretraining run.

    steps: optimizer steps at most; max_minutes: wall-clock budget of the training loop (the schedule
    fits into it); size: SAM 2.1 size; image_size: model input side (px); synth_shape: side of the
    generated images (px); objects: targets per image; correction_clicks: passes after the first click;
    grad_accum: images per optimizer step; lr / min_lr: peak and final learning rate; warmup: linear
    warm-up steps; checkpoint_minutes: how often ``last.pt`` is written; seed; modality;
    attention_init_gain: gain of :func:`~unsamv2_engine.minisam.init.positional_attention_init` applied
    to the fresh model (0: PyTorch's default initialisation, which does not learn to use clicks);
    innermost_clicks: fraction of targets clicked by the evaluator's rule (innermost pixel, then the
    deepest error) instead of uniformly (SAM's sampling).
    """

    steps: int = 20000
    max_minutes: float = 75.0
    size: str = "tiny"
    image_size: int = 256
    synth_shape: int = 256
    objects: int = 16
    correction_clicks: int = 1
    grad_accum: int = 1
    lr: float = 1.5e-4  # 4e-4 collapsed on the synthetic stream at step ~300 (docs/fine-tuning.md)
    min_lr: float = 2e-5
    weight_decay: float = 0.05
    warmup: int = 50
    checkpoint_minutes: float = 3.0
    seed: int = 0
    modality: str = "fluorescence"
    attention_init_gain: float = 1.5
    innermost_clicks: float = 0.0

    def validate(self) -> None:
        for name in ("steps", "objects", "grad_accum", "synth_shape"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_minutes <= 0 or self.checkpoint_minutes <= 0:
            raise ValueError("max_minutes and checkpoint_minutes must be positive")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {self.image_size}")
        if not 0.0 <= self.innermost_clicks <= 1.0:
            raise ValueError(f"innermost_clicks must be in [0, 1], got {self.innermost_clicks}")
        if self.attention_init_gain < 0:
            raise ValueError(f"attention_init_gain must be >= 0, got {self.attention_init_gain}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got {self.min_lr}, {self.lr}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def learning_rate(step: int, progress: float, config: PretrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` over ``progress`` in [0, 1]."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    p = min(max(progress, 0.0), 1.0)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def save_mini_checkpoint(model: UnSAMv2Model, path: str | os.PathLike, *, config: PretrainConfig, steps: int,
                         seconds: float, final: dict[str, float] | None = None) -> Path:
    """Write the plain SAM 2.1 checkpoint with ``image_size`` and the miniature's metadata."""
    from unsamv2_engine import __version__
    from unsamv2_engine.model.checkpoint import save_checkpoint

    metadata = {"kind": KIND, "synthetic_miniature": True, "warning": WARNING,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "engine_version": __version__, "steps": int(steps), "train_seconds": round(float(seconds), 1),
                "config": asdict(config), "final": dict(final or {})}
    return save_checkpoint(model, path, kind="sam2", metadata=metadata)


def _atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(config: PretrainConfig, output: str | os.PathLike, *, workdir: str | os.PathLike,
             device: str | torch.device = "cpu", progress: Progress | None = None) -> dict[str, Any]:
    """Pretrain a miniature SAM and write it to ``output`` (resuming from ``workdir/last.pt`` if present).

    Returns a summary: ``output``, ``steps``, ``seconds`` (training time over all sessions), ``final``
    (running means of the loss terms and of the best first-click IoU over the last steps).
    """
    from unsamv2_engine.minisam.init import positional_attention_init
    from unsamv2_engine.minisam.recipe import TERMS, interaction_loss
    from unsamv2_engine.minisam.samples import make_sample

    config.validate()
    emit = progress or (lambda record: None)
    device = torch.device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    last = workdir / "last.pt"
    model = build_model(config.size, granularity=False, device="cpu", seed=config.seed, image_size=config.image_size)
    sam = model.sam
    if config.attention_init_gain > 0:
        positional_attention_init(sam, gain=config.attention_init_gain, seed=config.seed)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, elapsed, position = 0, 0.0, 0
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        saved = PretrainConfig.from_dict(state["config"])
        differ = [f"{n}: {getattr(saved, n)!r} then, {getattr(config, n)!r} now" for n in _RUN_FIELDS
                  if getattr(saved, n) != getattr(config, n)]
        if differ:
            raise ValueError(f"cannot resume from {last}: other settings ({'; '.join(differ)}); use the same "
                             f"options or delete {workdir}")
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, position = int(state["step"]), float(state["elapsed"]), int(state["position"])
        emit({"event": "stage", "message": f"resuming at step {step} ({elapsed / 60:.1f} min trained) from {last}"})
    sam.to(device).train()
    budget = config.max_minutes * 60.0
    log_path = workdir / "log.jsonl"
    recent: list[dict[str, float]] = []
    session_start = time.perf_counter()
    base_elapsed = elapsed
    last_save = time.perf_counter()

    def save_state() -> None:
        _atomic({"format": CHECKPOINT_FORMAT, "config": asdict(config), "model": sam.state_dict(),
                 "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed, "position": position}, last)

    while step < config.steps and elapsed < budget:
        t0 = time.perf_counter()
        lr = learning_rate(step, max(step / config.steps, elapsed / budget), config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        record = {k: 0.0 for k in (*TERMS, "loss", "iou_first")}
        done = 0
        while done < config.grad_accum:
            seed = config.seed * 1_000_003 + position
            position += 1
            sample = make_sample(seed, image_size=config.image_size, synth_shape=config.synth_shape,
                                 objects=config.objects, modality=config.modality)
            if sample is None:
                continue
            generator = torch.Generator().manual_seed(seed)
            out = interaction_loss(sam, sample.pixels.to(device), sample.masks.to(device),
                                   correction_clicks=config.correction_clicks, generator=generator,
                                   innermost=config.innermost_clicks)
            (out["loss"] / config.grad_accum).backward()
            for key in record:
                value = out[key]
                record[key] += float(value.detach() if isinstance(value, torch.Tensor) else value) / config.grad_accum
            done += 1
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        step += 1
        elapsed = base_elapsed + time.perf_counter() - session_start
        seconds = time.perf_counter() - t0
        recent = (recent + [record])[-50:]
        per_step = elapsed / step if step else seconds
        eta = max(0.0, min((config.steps - step) * per_step, budget - elapsed))
        line = {"event": "step", "step": step, "max_steps": config.steps, "lr": lr, "seconds": round(seconds, 3),
                "elapsed_min": round(elapsed / 60, 2), "eta_min": round(eta / 60, 1),
                **{k: round(v, 5) for k, v in record.items()},
                "iou_first_mean50": round(sum(r["iou_first"] for r in recent) / len(recent), 4)}
        with open(log_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        emit(line)
        if time.perf_counter() - last_save >= config.checkpoint_minutes * 60:
            save_state()
            last_save = time.perf_counter()
            emit({"event": "checkpoint", "step": step, "path": str(last)})
    save_state()
    final = {k: round(sum(r[k] for r in recent) / max(len(recent), 1), 5) for k in (recent[0] if recent else {})}
    sam.eval()
    model.info = ModelInfo(size=config.size, family="sam2.1", source=str(output))
    path = save_mini_checkpoint(model, output, config=config, steps=step, seconds=elapsed, final=final)
    emit({"event": "done", "output": str(path), "steps": step, "minutes": round(elapsed / 60, 2), **final})
    return {"output": path, "steps": step, "seconds": elapsed, "final": final}
