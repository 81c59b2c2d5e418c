"""The UnSAMv2 granularity module: a scalar g in [0.1, 1] becomes one extra prompt token,
and one extra decoder output token turns into the granularity mask.

Attribute names reproduce the published state-dict layout exactly
(``sam_prompt_encoder.fourier_embedder.mlp.mlp.{0,3,6}``, ``sam_prompt_encoder.granularity_embedding``,
``sam_mask_decoder.gra_token``, ``sam_mask_decoder.gra_output_token_mlp.layers.{0,1,2}``),
so a model carrying these modules loads and saves published checkpoints without key mapping.
"""

from __future__ import annotations

import torch
from sam2.modeling.sam2_utils import MLP
from torch import nn

from unsamv2_engine.prompts import GRANULARITY_MAX, GRANULARITY_MIN  # noqa: E402,F401 (torch-free home)


class FourierFeatures(nn.Module):
    """Interleaved sin/cos features of a scalar.

    ``f_k = temperature ** (k / n)`` for ``k < n = dim // 2`` (float32, no 2*pi factor);
    output ``[sin(f_0 g), cos(f_0 g), sin(f_1 g), cos(f_1 g), ...]``.

    Shapes: ``g [B, 1]`` -> ``[B, dim]``. No parameters; the frequencies are a non-persistent
    buffer, so they never appear in a checkpoint.
    """

    def __init__(self, dim: int = 128, temperature: float = 100.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"Fourier feature dimension must be even, got {dim}")
        num_freqs = dim // 2
        bands = temperature ** (torch.arange(num_freqs, dtype=torch.float32) / num_freqs)
        self.register_buffer("freq_bands", bands, persistent=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        angles = g.to(torch.float32) * self.freq_bands  # [B, n]
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class GranularityMLP(nn.Module):
    """Three linear layers with ReLU and dropout: ``in -> hidden -> hidden -> out``.

    ``hidden = (in + out) // 2`` (192 for 128 -> 256). Held in ``self.mlp`` (a Sequential at
    indices 0, 3, 6), which is what gives the published ``...mlp.mlp.{0,3,6}`` keys.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = (in_dim + out_dim) // 2
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class FourierGranularityEncoder(nn.Module):
    """``g [B, 1] -> MLP(FourierFeatures(g)) [B, embed_dim]`` (without the type embedding)."""

    def __init__(self, embed_dim: int = 256, fourier_dim: int = 128, temperature: float = 100.0) -> None:
        super().__init__()
        self.fourier = FourierFeatures(fourier_dim, temperature)
        self.mlp = GranularityMLP(fourier_dim, embed_dim)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fourier(g))


def attach_granularity_module(
    prompt_encoder: nn.Module, mask_decoder: nn.Module, *, fourier_dim: int = 128, temperature: float = 100.0
) -> None:
    """Add the granularity encoder and the granularity output token to upstream SAM 2 heads.

    ``prompt_encoder`` is an upstream ``sam2`` ``PromptEncoder``, ``mask_decoder`` an upstream
    ``MaskDecoder``; they keep their own behaviour. The new submodules are used by
    :mod:`unsamv2_engine.model.decoding`. Parameters are randomly initialised as in the
    authors' code (``nn.Embedding`` N(0, 1), PyTorch's default for linear layers).
    """
    if has_granularity_module(prompt_encoder, mask_decoder):
        raise ValueError("this model already carries a granularity module")
    embed_dim = prompt_encoder.embed_dim
    dim = mask_decoder.transformer_dim
    prompt_encoder.add_module("granularity_embedding", nn.Embedding(1, embed_dim))
    prompt_encoder.add_module("fourier_embedder", FourierGranularityEncoder(embed_dim, fourier_dim, temperature))
    mask_decoder.add_module("gra_token", nn.Embedding(1, dim))
    mask_decoder.add_module("gra_output_token_mlp", MLP(dim, dim, dim // 8, 3))


def has_granularity_module(prompt_encoder: nn.Module, mask_decoder: nn.Module) -> bool:
    """True if both heads carry the granularity parts added by :func:`attach_granularity_module`."""
    return hasattr(prompt_encoder, "fourier_embedder") and hasattr(mask_decoder, "gra_token")


def granularity_token(prompt_encoder: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """The granularity prompt token: ``MLP(F(g)) + type embedding``; ``g [B, 1]`` -> ``[B, 1, C]``."""
    token = prompt_encoder.fourier_embedder(g) + prompt_encoder.granularity_embedding.weight
    return token.unsqueeze(1)
