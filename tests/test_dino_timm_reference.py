"""The clean-room DINOv2/DINOv3 ViT (``pseudo/dino.py``) checked numerically against timm.

timm (Apache-2.0, pinned in the ``test`` extra) carries independent implementations of both
families: DINOv2 as ``VisionTransformer`` (``vit_*_patch14[_reg4]_dinov2``) and DINOv3 as ``Eva``
(``vit_*_patch16_dinov3[_qkvb]``, ``vit_*_plus_patch16_dinov3``). Each test

1. builds the timm model (``pretrained=False``, real widths and head counts, depth 2 to stay fast)
   and overwrites *every* parameter with seeded random values of unit-ish scale, so nothing is
   trivial: LayerScale gammas in [0.2, 1] (timm initialises them to 1e-5, which would hide the
   blocks), random biases, norm weights, cls / register / storage tokens and position embedding;
2. rewrites its state dict into the official file layout (the inverse of timm's
   ``checkpoint_filter_fn``; that the inverse is right is checked by running timm's own filter on
   the result and getting the timm weights back);
3. saves it, loads it with the engine's loader (:func:`read_dino_checkpoint` +
   :func:`load_dino_state_dict`, which infers the architecture from the keys), and compares our
   ``x_norm_patchtokens`` with timm's ``forward_features(x)[:, num_prefix_tokens:]`` on a batch of
   random normalised images: the model's native grid, a non-square grid, and (DINOv2) grids that
   need the position embedding resampled down and up.

Tolerance: ``atol = rtol = 1e-4`` on tokens of standard deviation ~1 (LayerNorm outputs). Measured
on CPU float32: max |difference| 1.7e-6 for the DINOv2 register models (timm folds the cls position
into ``cls_token``; splitting it back out for the official layout rounds), exactly 0 otherwise.

Where timm and the official code differ (and we follow the official code):

* **DINOv2 without registers, position-embedding resampling.** The official hub models
  (``dinov2/hub/backbones.py``) resample with ``interpolate_offset=0.1``: bicubic at
  ``scale_factor = (n + 0.1) / M``, no antialiasing (the "+0.1 kludge"); the ``*_reg`` entries use
  ``interpolate_offset=0.0`` (an explicit output size) and ``antialias=True``. timm resamples
  *every* DINOv2 model the second way (``resample_abs_pos_embed``: ``size=``, ``antialias=True``).
  So for the register models timm is the official arithmetic and we compare at every size; for the
  plain models we compare on the native grid (no resampling on either side), show that the two
  resamplings do differ elsewhere, and compare at the other sizes with our model switched to
  timm's resampling mode, which checks everything but the kludge itself. The kludge is checked
  against an independent cubic-convolution reference in ``tests/test_dino_backbone.py``.
* **DINOv3 qkv bias.** Official files store a full ``attn.qkv.bias`` plus an
  ``attn.qkv.bias_mask`` buffer that zeroes the K third (``mask_k_bias``); timm keeps separate
  ``q_bias`` / ``v_bias`` and no K bias. The official-layout file written here has a *random* K
  bias under a zero mask, so a model that ignored the mask would fail. timm's ``vit_*_dinov3``
  (no ``_qkvb``) models have no q/v bias at all: written as zero q/v biases, as official files
  of the distilled models hold them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from unsamv2_engine.pseudo.dino import (
    DinoViT,
    build_dino_vit,
    load_dino_state_dict,
    read_dino_checkpoint,
)
from unsamv2_engine.upstream import ensure_torchvision_importable

TIMM_VERSION = "1.0.31"  # the version pinned in pyproject.toml's test extra
ATOL = RTOL = 1e-4
DEPTH = 2  # real widths / heads / patch sizes, shallow to keep the tests fast


@pytest.fixture(scope="module")
def timm():
    ensure_torchvision_importable()  # timm imports torchvision; see unsamv2_engine.upstream
    import timm

    assert timm.__version__ == TIMM_VERSION, "update TIMM_VERSION together with the pin in pyproject.toml"
    return timm


# ------------------------------------------------------------------------------ helpers


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded values that make each part of the network matter.

    Matrices get ``N(0, 1 / fan_in)`` (attention logits of order 1, so softmax is neither uniform
    nor one-hot), biases ``N(0, 0.1)``, norm weights ``1 + N(0, 0.2)``, LayerScale ``U(0.2, 1)``,
    tokens and position embeddings ``N(0, 0.5)``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("gamma", "gamma_1", "gamma_2")):
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif p.ndim >= 2 and name.endswith("weight"):
                p.copy_(r / math.sqrt(p[0].numel()))
            elif name.endswith(("bias", "q_bias", "v_bias")):
                p.copy_(0.1 * r)
            else:  # cls_token, reg_token, pos_embed
                p.copy_(0.5 * r)
    return model.eval()


def _official_dinov2(timm_sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Timm DINOv2 ``VisionTransformer`` state dict -> the official ``dinov2_*_pretrain.pth`` layout.

    Inverse of timm's ``_convert_dinov2``: with registers timm folds the cls position into
    ``cls_token`` and drops it from ``pos_embed`` (``no_embed_class``), so a random cls position is
    split back out; ``reg_token`` -> ``register_tokens``; SwiGLU ``mlp.fc1/fc2`` -> ``mlp.w12/w3``;
    plus the training-only ``mask_token`` that official files carry.
    """
    g = torch.Generator().manual_seed(seed)
    sd = dict(timm_sd)
    dim = sd["cls_token"].shape[-1]
    swiglu = sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * sd["blocks.0.mlp.fc2.weight"].shape[1]
    out = {}
    if "reg_token" in sd:
        cls_pos = 0.5 * torch.randn(1, 1, dim, generator=g)
        out["register_tokens"] = sd.pop("reg_token")
        out["cls_token"] = sd.pop("cls_token") - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, sd.pop("pos_embed")], dim=1)
    for key, value in sd.items():
        if swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    out["mask_token"] = 0.5 * torch.randn(1, dim, generator=g)
    return out


def _official_dinov3(timm_sd: dict[str, torch.Tensor], num_heads: int, seed: int) -> dict[str, torch.Tensor]:
    """Timm DINOv3 ``Eva`` state dict -> the official ``dinov3_*_pretrain_*.pth`` layout.

    Inverse of timm's ``eva.checkpoint_filter_fn``: ``gamma_1/2`` -> ``ls1/ls2.gamma``,
    ``reg_token`` -> ``storage_tokens``, SwiGLU ``fc1_g/fc1_x/fc2`` -> ``w1/w2/w3``; ``q_bias`` and
    ``v_bias`` -> one ``qkv.bias`` with a random K third and ``qkv.bias_mask`` zero over it; the
    ``rope_embed.periods`` buffer (official: ``100 ** (2 i / (head_dim / 2))``, i < head_dim / 4)
    and ``mask_token``, which timm drops.
    """
    g = torch.Generator().manual_seed(seed)
    dim = timm_sd["cls_token"].shape[-1]
    head_dim = dim // num_heads
    swiglu = any(".mlp.fc1_g." in k for k in timm_sd)
    out = {}
    for key, value in timm_sd.items():
        if key.endswith(".attn.v_bias"):
            continue
        if key.endswith(".attn.q_bias"):
            v_bias = timm_sd[key.replace("q_bias", "v_bias")]
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.randn(dim, generator=g), v_bias])
            continue
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        key = key.replace("reg_token", "storage_tokens")
        if swiglu:
            key = key.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
            key = key.replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    for key in [k for k in out if k.endswith(".attn.qkv.weight")]:
        bias = key.replace(".weight", ".bias")
        if bias not in out:  # timm model without q/v bias: zero q/v, a K bias the mask must remove
            out[bias] = torch.cat([torch.zeros(dim), torch.randn(dim, generator=g), torch.zeros(dim)])
        out[key.replace(".weight", ".bias_mask")] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["rope_embed.periods"] = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    out["mask_token"] = 0.5 * torch.randn(1, dim, generator=g)
    return out


def _assert_timm_filter_inverts(filter_fn, official: dict, reference: torch.nn.Module) -> None:
    """Timm's own checkpoint filter maps our official-layout dict back onto the timm weights."""
    back = filter_fn({k: v.clone() for k, v in official.items()}, reference)
    expected = reference.state_dict()
    assert set(back) == set(expected)
    # exact copies, except DINOv2-reg's cls_token: (cls - cls_pos) + cls_pos rounds
    mismatched = [k for k, v in expected.items()
                  if back[k].shape != v.shape or not torch.allclose(back[k], v, atol=1e-6, rtol=0)]
    assert not mismatched


def _load_ours(official: dict[str, torch.Tensor], path: Path) -> DinoViT:
    """Through a file and the engine's own reader / loader, as DinoBackbone does."""
    torch.save(official, path)
    return load_dino_state_dict(read_dino_checkpoint(path), source=str(path))


def _reference_tokens(reference: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Timm's final-norm patch tokens (``x_norm_patchtokens``)."""
    return reference.forward_features(x)[:, reference.num_prefix_tokens:]


def _images(hw: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(seed))


def _compare(ours: DinoViT, reference: torch.nn.Module, sizes, seed: int = 0) -> None:
    with torch.inference_mode():
        for i, hw in enumerate(sizes):
            x = _images(hw, seed + i)
            expected = _reference_tokens(reference, x)
            got = ours(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL, msg=f"input {hw}")


# ------------------------------------------------------------------------------ DINOv2

# img_size 112 -> an 8 x 8 learned position grid for patch 14. 98 x 154 -> 7 x 11 (down in y,
# up in x, non-square); 182 x 126 -> 13 x 9.
V2_SIZES = [(112, 112), (98, 154), (182, 126)]


def _timm_dinov2(timm, name: str, seed: int, **kwargs) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=0, depth=DEPTH, img_size=112,
                              dynamic_img_size=True, **kwargs)
    return _randomised(model, seed)


def test_dinov2_reg4_matches_timm_at_native_resampled_and_non_square_sizes(timm, tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    reference = _timm_dinov2(timm, "vit_small_patch14_reg4_dinov2", seed=1)
    official = _official_dinov2(reference.state_dict(), seed=2)
    _assert_timm_filter_inverts(checkpoint_filter_fn, official, reference)
    ours = _load_ours(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert ours.arch.name == "dinov2-vits14-reg4" and ours.arch.pos_grid == 8
    assert (ours.arch.interpolate_offset, ours.arch.interpolate_antialias) == (0.0, True)
    _compare(ours, reference, V2_SIZES)


def test_dinov2_plain_matches_timm_and_differs_only_by_the_official_offset_resampling(timm, tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    reference = _timm_dinov2(timm, "vit_small_patch14_dinov2", seed=3)
    official = _official_dinov2(reference.state_dict(), seed=4)
    _assert_timm_filter_inverts(checkpoint_filter_fn, official, reference)
    ours = _load_ours(official, tmp_path / "dinov2_vits14_pretrain.pth")
    assert ours.arch.name == "dinov2-vits14"
    assert (ours.arch.interpolate_offset, ours.arch.interpolate_antialias) == (0.1, False)
    _compare(ours, reference, V2_SIZES[:1])  # native grid: no resampling anywhere

    x = _images(V2_SIZES[1], seed=10)
    with torch.inference_mode():
        gap = (ours(x) - _reference_tokens(reference, x)).abs().max().item()
    assert gap > 1e-2  # the official (n + 0.1) / M, non-antialiased resampling is not timm's

    timm_mode = build_dino_vit(dataclasses.replace(ours.arch, interpolate_offset=0.0, interpolate_antialias=True))
    timm_mode.load_state_dict(ours.state_dict())
    _compare(timm_mode.eval(), reference, V2_SIZES)


def test_dinov2_giant_style_fused_swiglu_matches_timm(timm, tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    # ViT-g/14's FFN (fused SwiGLU w12 / w3) and 64-dim heads, at a width of 128.
    reference = _timm_dinov2(timm, "vit_giant_patch14_reg4_dinov2", seed=5, embed_dim=128, num_heads=2)
    official = _official_dinov2(reference.state_dict(), seed=6)
    _assert_timm_filter_inverts(checkpoint_filter_fn, official, reference)
    ours = _load_ours(official, tmp_path / "dinov2_vitg14_like.pth")
    assert ours.arch.ffn == "swiglu_fused" and ours.arch.num_heads == 2
    _compare(ours, reference, V2_SIZES)


# ------------------------------------------------------------------------------ DINOv3

# No learned grid: RoPE coordinates are normalised per axis, so square and non-square grids.
V3_SIZES = [(64, 64), (96, 160), (48, 112)]


def _timm_dinov3(timm, name: str, seed: int) -> torch.nn.Module:
    return _randomised(timm.create_model(name, pretrained=False, num_classes=0, depth=DEPTH), seed)


@pytest.mark.parametrize(("timm_name", "our_name", "ffn"), [
    ("vit_small_patch16_dinov3_qkvb", "dinov3-vits16", "mlp"),
    ("vit_small_plus_patch16_dinov3", "dinov3-vits16plus", "swiglu"),
])
def test_dinov3_matches_timm_with_rope_storage_tokens_and_masked_k_bias(timm, tmp_path, timm_name, our_name, ffn):
    from timm.models.eva import checkpoint_filter_fn

    reference = _timm_dinov3(timm, timm_name, seed=7)
    official = _official_dinov3(reference.state_dict(), num_heads=6, seed=8)
    _assert_timm_filter_inverts(checkpoint_filter_fn, official, reference)
    ours = _load_ours(official, tmp_path / f"{timm_name}.pth")
    assert (ours.arch.name, ours.arch.ffn, ours.arch.num_heads) == (our_name, ffn, 6)
    assert ours.arch.extra_tokens == 4 and ours.arch.qkv_bias_mask
    _compare(ours, reference, V3_SIZES)

    # The comparison is sensitive to the rotary embedding: other periods give other tokens.
    ours.rope_embed.periods.mul_(1.5)
    x = _images(V3_SIZES[1], seed=20)
    with torch.inference_mode():
        assert (ours(x) - _reference_tokens(reference, x)).abs().max().item() > 1e-2
