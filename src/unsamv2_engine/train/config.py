"""What defines a fine-tuning run: :class:`FinetuneConfig`, its result, the trainable sets, the schedule.

Defaults are the authors' recipe (docs/model-reference.md §4.1). Trainable sets
(:func:`select_trainable`): ``granularity`` (default) = the parameters UnSAMv2 adds to SAM 2.1;
``decoder`` = those plus the SAM mask decoder except ``conv_s0``/``conv_s1``; ``all`` = every
parameter (see :mod:`unsamv2_engine.train.trainer`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from unsamv2_engine.errors import InputError
from unsamv2_engine.model.build import UnSAMv2Model, is_added_parameter

__all__ = ["AMP_CHOICES", "RUN_FIELDS", "TRAINABLE_SETS", "FinetuneConfig", "FinetuneResult", "added_parameter_count",
           "cosine_lr", "select_trainable"]

TRAINABLE_SETS = ("granularity", "decoder", "all")
AMP_CHOICES = ("auto", "bf16", "off")
# Config fields that define the optimisation: a resumed run must use the same values.
RUN_FIELDS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr", "weight_decay", "betas", "trainable",
               "val_fraction", "val_max_images", "seed", "num_correction_clicks", "max_masks", "augment")


def added_parameter_count(lora_rank: int = 8) -> int:
    """Parameters UnSAMv2 adds to SAM 2.1 (any size; the decoder is 256-wide in all): 345,760 at rank 8."""
    return 251_552 + 11_776 * int(lora_rank)


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (defaults: the authors' recipe, docs/model-reference.md §4.1).

    Attributes
    ----------
    max_steps : int
        Optimizer steps.
    batch_size : int
        Images per micro-batch over all processes (a multiple of the number of DDP processes).
    grad_accum : int
        Micro-batches per optimizer step (effective batch = ``batch_size * grad_accum`` images).
    lr, min_lr : float
        Cosine schedule from ``lr`` (first step) towards ``min_lr`` (after ``max_steps``).
    weight_decay : float
        AdamW weight decay. ``betas``: AdamW betas (PyTorch default).
    trainable : str
        ``granularity`` | ``decoder`` | ``all`` (see the module docstring).
    checkpoint_every : int
        Save a checkpoint every N steps (0: only at the end or on cancel).
    keep_checkpoints : int
        How many ``step_<N>.pt`` files to keep (older ones are deleted; ``last.pt`` always stays).
    val_fraction : float
        Share of the images held out for validation (0: none); at most ``val_max_images`` images.
    val_every : int
        Validate every N steps (0: only at the end), and once before the first step.
    val_max_objects, val_max_clicks : int
        Masks per validation image, and clicks per mask, at most.
    seed : int
        Seeds the split, the sample order, augmentation, clicks and dropout.
    num_correction_clicks : int
        Correction passes after the first click (3 as the authors).
    max_masks : int
        Masks per image per sample (30 as the authors).
    amp : str
        ``auto`` (bf16 autocast on CUDA, none elsewhere), ``bf16`` (CUDA only) or ``off``.
    cache_embeddings : bool
        Compute each image's embedding once and reuse it (needs a frozen encoder and no augmentation;
        about 16 MB per image of host or GPU memory).
    mask_chunk : int
        With a frozen encoder, an image's masks are simulated and back-propagated ``mask_chunk`` at a
        time (gradients accumulate; the loss and its gradient are those of all masks at once), so that
        memory does not grow with ``max_masks`` (each mask costs about 0.6 GB at 1024 px with its 4
        passes). 0: all masks at once. A trainable encoder (``all``) always takes all masks at once.
    augment : bool
        Augment the training images (when the dataset is built here from folders).
    """

    max_steps: int = 1000
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    trainable: str = "granularity"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_fraction: float = 0.1
    val_every: int = 500
    val_max_images: int = 8
    val_max_objects: int = 10
    val_max_clicks: int = 10
    seed: int = 0
    num_correction_clicks: int = 3
    max_masks: int = 30
    amp: str = "auto"
    cache_embeddings: bool = False
    augment: bool = True
    mask_chunk: int = 4

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        positive = ("max_steps", "batch_size", "grad_accum", "max_masks", "val_max_images", "val_max_objects",
                    "val_max_clicks", "keep_checkpoints")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "val_every", "num_correction_clicks", "mask_chunk"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise InputError(f"learning rates must satisfy 0 <= min_lr <= lr and lr > 0, got lr {self.lr}, "
                             f"min_lr {self.min_lr}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.trainable not in TRAINABLE_SETS:
            raise InputError(f"trainable must be one of {', '.join(TRAINABLE_SETS)}, got {self.trainable!r}")
        if self.amp not in AMP_CHOICES:
            raise InputError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.cache_embeddings and self.trainable == "all":
            raise InputError("cache_embeddings needs a frozen image encoder; it cannot be used with trainable 'all'")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


@dataclass
class FinetuneResult:
    """What a run produced.

    output: the adapter written, None when cancelled; steps: optimizer steps done;
    losses: the loss of every step (from step 1); val: every validation record; cancelled: stopped by
    the ``cancel`` event (a checkpoint was saved); checkpoint: the last checkpoint written.
    """

    output: Path | None
    workdir: Path
    steps: int
    max_steps: int
    losses: list[float]
    val: list[dict[str, Any]]
    cancelled: bool
    checkpoint: Path | None
    seconds: float
    skipped_steps: int = 0
    dataset: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def select_trainable(model: UnSAMv2Model, trainable: str) -> dict[str, nn.Parameter]:
    """The parameters a trainable set names, by state-dict name (see the module docstring)."""
    named = dict(model.sam.named_parameters())
    if trainable == "granularity":
        chosen = model.granularity_parameters()
        lora = next((m for m in model.sam.sam_mask_decoder.transformer.modules() if hasattr(m, "lora_A")), None)
        expected = added_parameter_count(lora.rank if lora is not None else 0)
        count = sum(p.numel() for p in chosen.values())
        if count != expected:
            raise ValueError(f"the granularity module has {count:,} parameters, expected {expected:,}: is it the "
                             "UnSAMv2 module (granularity encoder, gra token and MLP, LoRA)?")
        return chosen
    if trainable == "decoder":
        return {name: p for name, p in named.items()
                if is_added_parameter(name) or (name.startswith("sam_mask_decoder.")
                                                and not name.startswith(("sam_mask_decoder.conv_s0",
                                                                         "sam_mask_decoder.conv_s1")))}
    if trainable == "all":
        return named
    raise ValueError(f"trainable must be one of {', '.join(TRAINABLE_SETS)}, got {trainable!r}")


def cosine_lr(step: int, config: FinetuneConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): ``min + (max - min) (1 + cos(pi step / steps)) / 2``."""
    progress = min(max(step, 0), config.max_steps) / config.max_steps
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
