"""Low-rank adapters on the linear layers of the SAM 2 mask-decoder transformer.

``LoRALinear`` keeps the wrapped layer as ``original_layer`` and adds ``lora_A [r, in]`` and
``lora_B [out, r]``: ``y = original(x) + scale * (dropout(x) A^T) B^T`` with ``scale = alpha / r``.
Those names give the published state-dict keys (``...q_proj.original_layer.weight``,
``...q_proj.lora_A``). For inference the update can be folded into one weight
(:meth:`LoRALinear.merge`), which is exact in eval mode; the parameters stay separate, so the
state dict and training are unaffected (``train()`` unfolds automatically).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.1


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
                 dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.original_layer = base
        self.dropout = nn.Dropout(dropout)
        self._merged_weight: torch.Tensor | None = None

    @property
    def merged(self) -> bool:
        return self._merged_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A``, shape ``[out, in]``."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into one weight for inference (call again after changing A/B)."""
        self._merged_weight = self.original_layer.weight + self.delta_weight().to(self.original_layer.weight.dtype)

    def unmerge(self) -> None:
        self._merged_weight = None

    def train(self, mode: bool = True) -> LoRALinear:
        if mode:
            self.unmerge()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate the folded weight
        self.unmerge()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._merged_weight is not None:
            return F.linear(x, self._merged_weight, self.original_layer.bias)
        update = (self.dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype)
        return self.original_layer(x) + update * self.scale


def attention_modules(transformer: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The 7 attention modules of an upstream ``TwoWayTransformer`` (names relative to it)."""
    for i, layer in enumerate(transformer.layers):
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            yield f"layers.{i}.{name}", getattr(layer, name)
    yield "final_attn_token_to_image", transformer.final_attn_token_to_image


def inject_lora(transformer: nn.Module, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
                dropout: float = DEFAULT_DROPOUT) -> int:
    """Wrap q/k/v/out projections of every attention module in ``transformer``; returns the count (28)."""
    count = 0
    for _, attn in attention_modules(transformer):
        for target in LORA_TARGETS:
            layer = getattr(attn, target)
            if isinstance(layer, LoRALinear):
                raise ValueError("LoRA is already applied to this transformer")
            setattr(attn, target, LoRALinear(layer, rank, alpha, dropout))
            count += 1
    return count


def lora_layers(module: nn.Module) -> list[LoRALinear]:
    """Every :class:`LoRALinear` inside ``module``."""
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA update below ``module`` into its weight (inference speed); returns the count."""
    layers = lora_layers(module)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(module: nn.Module) -> None:
    """Undo :func:`merge_lora` on every LoRA layer of ``module``."""
    for layer in lora_layers(module):
        layer.unmerge()
