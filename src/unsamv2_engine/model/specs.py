"""The SAM 2.1 model sizes, their upstream configs, and size detection from tensor shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeSpec:
    """One SAM 2.1 image-encoder size: Hiera ``embed_dim`` and the number of Hiera blocks."""

    name: str
    config: str  # hydra config name inside the upstream ``sam2`` package
    embed_dim: int
    num_blocks: int


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", 96, 12),
    "small": SizeSpec("small", "configs/sam2.1/sam2.1_hiera_s.yaml", 96, 16),
    "base_plus": SizeSpec("base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", 112, 24),
    "large": SizeSpec("large", "configs/sam2.1/sam2.1_hiera_l.yaml", 144, 48),
}
SIZE_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "base-plus": "base_plus", "base+": "base_plus",
                "bp": "base_plus", "l": "large"}

_PATCH_EMBED_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_BLOCK_PREFIX = "image_encoder.trunk.blocks."


def normalise_size(name: str) -> str:
    """Accept ``tiny|small|base_plus|large`` and the usual aliases (``t``, ``b+``, ``base-plus``...)."""
    key = name.strip().lower()
    key = SIZE_ALIASES.get(key, key)
    if key not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(SIZES)}")
    return key


def detect_size(state_dict: Mapping[str, object]) -> str:
    """Model size from the image-encoder tensor shapes of a (full) state dict."""
    weight = state_dict.get(_PATCH_EMBED_KEY)
    if weight is None:
        raise ValueError(
            f"cannot detect the model size: the checkpoint has no {_PATCH_EMBED_KEY!r}; "
            "is this a full SAM 2.1 / UnSAMv2 checkpoint (not an adapter)?"
        )
    embed_dim = int(weight.shape[0])
    blocks = {int(k[len(_BLOCK_PREFIX):].split(".", 1)[0]) for k in state_dict if k.startswith(_BLOCK_PREFIX)}
    num_blocks = max(blocks) + 1 if blocks else 0
    for spec in SIZES.values():
        if spec.embed_dim == embed_dim and spec.num_blocks == num_blocks:
            return spec.name
    raise ValueError(
        f"checkpoint has Hiera embed_dim={embed_dim} with {num_blocks} blocks, which matches no SAM 2.1 size "
        f"({', '.join(f'{s.name}: {s.embed_dim}/{s.num_blocks}' for s in SIZES.values())})"
    )
