"""Build UnSAMv2 (or plain SAM 2.1) on the official ``sam2`` package.

The upstream ``SAM2Base`` is instantiated from sam2's own hydra configs, unchanged; the
granularity module and LoRA are attached to its prompt encoder and mask-decoder transformer
(:func:`attach_granularity_module`, :func:`inject_lora`). Its ``state_dict()`` is then exactly
the published UnSAMv2 layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


# What ``sam2.build_sam.build_sam2`` adds to every config (its ``apply_postprocessing=True``, the default that
# the official predictors use); tests/test_model.py checks that a model built here equals build_sam2's.
SAM2_POSTPROCESSING_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


class _SkipRandomInit(TorchFunctionMode):
    """Leaves the in-place random fills of weight initialisation (``uniform_``, ``normal_``) undone.

    For a model whose every weight is loaded right after it is built (:func:`load_checkpoint`): the
    fills cost about a quarter of building hiera-tiny. A torch function mode is active in the
    thread that entered it only, so other threads building models are not affected.
    """

    SKIPPED = frozenset({torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            return args[0]
        return func(*args, **(kwargs or {}))


@functools.lru_cache(maxsize=16)
def _upstream_config(config_name: str, overrides: tuple[str, ...]):
    """sam2's hydra config ``config_name`` with ``overrides``, composed and resolved once per process.

    Composing was about a third of building hiera-tiny in a profile; hydra's ``instantiate`` copies the
    config it is given, so the cached one is never changed.
    """
    import sam2  # noqa: F401  (initialises sam2's hydra config module)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():  # another library cleared hydra's global state
        initialize_config_module("sam2", version_base="1.2")
    cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def _build_upstream(size: str, device: torch.device, granularity: bool, image_size: int | None = None,
                    random_init: bool = True) -> nn.Module:
    """sam2's ``SAM2Base`` as ``sam2.build_sam.build_sam2`` builds it (no checkpoint), in eval mode.

    ``random_init=False`` skips the random fills of the weights (:class:`_SkipRandomInit`): only for a
    model whose state is loaded next.
    """
    from hydra.utils import instantiate

    overrides = list(UNSAMV2_OVERRIDES) if granularity else []
    if image_size is not None:
        overrides.append(f"++model.image_size={int(image_size)}")
    cfg = _upstream_config(SIZES[size].config, tuple(overrides) + SAM2_POSTPROCESSING_OVERRIDES)
    if random_init:
        sam = instantiate(cfg.model, _recursive_=True)
    else:
        with _SkipRandomInit():
            sam = instantiate(cfg.model, _recursive_=True)
    return sam.to(device).eval()


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
                image_size: int | None = None, random_init: bool = True) -> UnSAMv2Model:
    """A randomly initialised model of the given SAM 2.1 size, in eval mode.

    ``granularity=False`` gives plain SAM 2.1. ``seed`` makes the random weights reproducible
    (tests and benchmarks). ``image_size``: the square input side in pixels (default the config's
    1024; a multiple of 32, e.g. 256 for the miniature models of :mod:`unsamv2_engine.minisam`; the
    weights do not depend on it). Load weights with :mod:`unsamv2_engine.model.checkpoint`.
    ``random_init=False`` leaves SAM 2.1's own weights unfilled (uninitialised memory) because every one of
    them is loaded next (:func:`~unsamv2_engine.model.checkpoint.load_checkpoint`); the granularity
    module is always initialised (LoRA starts as the identity).
    """
    size = normalise_size(size)
    if image_size is not None and (int(image_size) < 64 or int(image_size) % 32):
        raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {image_size}")
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    sam = _build_upstream(size, torch.device("cpu"), granularity, image_size, random_init=random_init)
    model = UnSAMv2Model(sam, ModelInfo(size=size, family="sam2.1"))
    if granularity:
        model.add_granularity_module(lora_rank=lora_rank, lora_alpha=lora_alpha)
    model.sam.to(device).eval()
    return model
