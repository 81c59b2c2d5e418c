"""Build UnSAMv2 (or plain SAM 2.1) on the official ``sam2`` package.

The upstream ``SAM2Base`` is instantiated from sam2's own hydra configs, unchanged; the
granularity module and LoRA are attached to its prompt encoder and mask-decoder transformer
(:func:`attach_granularity_module`, :func:`inject_lora`). Its ``state_dict()`` is then exactly
the published UnSAMv2 layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unsamv2_engine.model.granularity import attach_granularity_module, has_granularity_module
from unsamv2_engine.model.lora import DEFAULT_ALPHA, DEFAULT_RANK, inject_lora, lora_layers, merge_lora, unmerge_lora
from unsamv2_engine.model.specs import SIZES, normalise_size

# The three flags that unsamv2_small.yaml turns off against sam2.1_hiera_s.yaml (docs/model-reference.md §1.1).
UNSAMV2_OVERRIDES = (
    "++model.multimask_output_in_sam=false",
    "++model.multimask_output_for_tracking=false",
    "++model.use_multimask_token_for_obj_ptr=false",
)


@dataclass
class ModelInfo:
    """Where a model came from; carried into outputs (JSON metadata, adapter files)."""

    size: str
    family: str  # "sam2.1" (plain) or "unsamv2"
    source: str = "random init"  # checkpoint path or registry name
    base_sha256: str | None = None
    adapter: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        text = f"{self.family}-{self.size} ({self.source})"
        return text + (f" + adapter {self.adapter}" if self.adapter else "")


def _build_upstream(size: str, device: torch.device, granularity: bool, image_size: int | None = None) -> nn.Module:
    import sam2  # noqa: F401  (initialises sam2's hydra config module)
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2

    if not GlobalHydra.instance().is_initialized():  # someone cleared it (ENVIRONMENT.md trap 5)
        initialize_config_module("sam2", version_base="1.2")
    overrides = list(UNSAMV2_OVERRIDES) if granularity else []
    if image_size is not None:
        overrides.append(f"++model.image_size={int(image_size)}")
    return build_sam2(SIZES[size].config, ckpt_path=None, device=str(device), mode="eval",
                      hydra_overrides_extra=overrides)


class UnSAMv2Model:
    """An upstream ``SAM2Base`` with (optionally) the UnSAMv2 granularity module and LoRA.

    ``sam`` is the torch module; ``sam.state_dict()`` is the published checkpoint layout.
    Without a granularity module it is plain SAM 2.1, and the session's granularity dial picks
    among SAM's three candidate masks (see :mod:`unsamv2_engine.model.decoding`).
    """

    def __init__(self, sam: nn.Module, info: ModelInfo) -> None:
        self.sam = sam
        self.info = info

    @property
    def has_granularity(self) -> bool:
        return has_granularity_module(self.sam.sam_prompt_encoder, self.sam.sam_mask_decoder)

    @property
    def has_lora(self) -> bool:
        return bool(lora_layers(self.sam.sam_mask_decoder.transformer))

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (and of ``mask_input``): ``image_size // 4``, 256 at 1024 px."""
        return int(self.sam.sam_prompt_encoder.mask_input_size[0])

    def to(self, device: torch.device | str) -> UnSAMv2Model:
        self.sam.to(device)
        return self

    def add_granularity_module(self, *, lora_rank: int = DEFAULT_RANK, lora_alpha: float = DEFAULT_ALPHA) -> None:
        """Attach a freshly initialised granularity module + LoRA (the starting point of fine-tuning)."""
        device = self.device
        attach_granularity_module(self.sam.sam_prompt_encoder, self.sam.sam_mask_decoder)
        inject_lora(self.sam.sam_mask_decoder.transformer, rank=lora_rank, alpha=lora_alpha)
        self.sam.to(device)
        self.info.family = "unsamv2"

    def granularity_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters UnSAMv2 adds to SAM 2.1 (345,760 of them), by state-dict name."""
        return {name: p for name, p in self.sam.named_parameters() if is_added_parameter(name)}

    def merge_lora(self) -> int:
        """Fold LoRA into the decoder weights for faster inference (no effect on state_dict)."""
        return merge_lora(self.sam.sam_mask_decoder.transformer)

    def unmerge_lora(self) -> None:
        unmerge_lora(self.sam.sam_mask_decoder.transformer)


def is_added_parameter(name: str) -> bool:
    """True for the state-dict names of the UnSAMv2 additions (granularity module, gra token, LoRA)."""
    return (
        "lora_" in name
        or name.startswith("sam_prompt_encoder.granularity_embedding")
        or name.startswith("sam_prompt_encoder.fourier_embedder")
        or name.startswith("sam_mask_decoder.gra_")
    )


def build_model(size: str = "small", *, granularity: bool = True, device: str | torch.device = "cpu",
                lora_rank: int = DEFAULT_RANK, lora_alpha: float = DEFAULT_ALPHA, seed: int | None = None,
                image_size: int | None = None) -> UnSAMv2Model:
    """A randomly initialised model of the given SAM 2.1 size, in eval mode.

    ``granularity=False`` gives plain SAM 2.1. ``seed`` makes the random weights reproducible
    (tests and benchmarks). ``image_size``: the square input side in pixels (default the config's
    1024; a multiple of 32, e.g. 256 for the miniature models of :mod:`unsamv2_engine.minisam`; the
    weights do not depend on it). Load weights with :mod:`unsamv2_engine.model.checkpoint`.
    """
    size = normalise_size(size)
    if image_size is not None and (int(image_size) < 64 or int(image_size) % 32):
        raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {image_size}")
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    sam = _build_upstream(size, torch.device("cpu"), granularity, image_size)
    model = UnSAMv2Model(sam, ModelInfo(size=size, family="sam2.1"))
    if granularity:
        model.add_granularity_module(lora_rank=lora_rank, lora_alpha=lora_alpha)
    model.sam.to(device).eval()
    return model
