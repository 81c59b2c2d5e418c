"""The clean-room DINOv2/DINOv3 backbone: official key layout, loading, resampling, features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unsamv2_engine.pseudo.dino import (
    DinoArchitecture,
    DinoBackbone,
    build_dino_vit,
    infer_architecture,
    interpolate_pos_embed,
    resized_shape,
    rope_sin_cos,
)

# Tiny random configs; the loader must infer all of this from the saved state dict.
V2_TINY = DinoArchitecture("dinov2", embed_dim=128, depth=2, num_heads=2, patch_size=14, pos_grid=4)
V2_REG = DinoArchitecture("dinov2", embed_dim=128, depth=2, num_heads=2, patch_size=14, pos_grid=4,
                          extra_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
V2_ODD_HEADS = DinoArchitecture("dinov2", embed_dim=48, depth=2, num_heads=3, patch_size=14, pos_grid=3)
V3_TINY = DinoArchitecture("dinov3", embed_dim=48, depth=2, num_heads=3, patch_size=16, extra_tokens=4,
                           qkv_bias_mask=True, norm_eps=1e-5, interpolate_offset=0.0)


def random_state_dict(arch: DinoArchitecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random state dict with the official key names of ``arch``."""
    torch.manual_seed(seed)
    model = build_dino_vit(arch)
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith("qkv.bias_mask"):  # official DINOv3 files: ones, zeros over the K third
            mask = torch.ones_like(value)
            third = value.numel() // 3
            mask[third:2 * third] = 0
            sd[key] = mask
        elif key.endswith("periods"):
            sd[key] = value.clone()
        elif "norm" in key and key.endswith("weight"):
            sd[key] = 1 + 0.1 * torch.randn_like(value)
        else:
            sd[key] = 0.2 * torch.randn_like(value)
    return sd


def save(sd: object, path: Path) -> Path:
    torch.save(sd, path)
    return path


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ official facts

# Expected from facebookresearch/dinov2 @112792f dinov2/models/vision_transformer.py (vit_small:
# embed 384, depth 12, 6 heads, mlp_ratio 4) built as dinov2/hub/backbones.py does
# (img_size 518, patch 14 -> pos_embed 1 + 37*37, init_values 1.0 -> ls1/ls2, block_chunks 0 ->
# "blocks.N.", qkv/proj/ffn biases, Mlp fc1/fc2, head = Identity).
def _dinov2_vits14_expected(registers: int = 0) -> dict[str, tuple[int, ...]]:
    c = 384
    keys = {"cls_token": (1, 1, c), "pos_embed": (1, 1 + 37 * 37, c), "mask_token": (1, c),
            "patch_embed.proj.weight": (c, 3, 14, 14), "patch_embed.proj.bias": (c,),
            "norm.weight": (c,), "norm.bias": (c,)}
    if registers:
        keys["register_tokens"] = (1, registers, c)
    for i in range(12):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                     b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                     b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,), b + "ls1.gamma": (c,),
                     b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                     b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                     b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,), b + "ls2.gamma": (c,)})
    return keys


# Expected from facebookresearch/dinov3 @dbeab0e dinov3/models/vision_transformer.py with the
# dinov3_vitb16 arguments of dinov3/hub/backbones.py @071435e (embed 768, depth 12, 12 heads,
# patch 16, n_storage_tokens 4, layerscale 1e-5, mask_k_bias -> qkv.bias_mask buffer, RoPE
# periods buffer [768 / 12 / 4], no pos_embed, no cls_norm).
def _dinov3_vitb16_expected() -> dict[str, tuple[int, ...]]:
    c = 768
    keys = {"cls_token": (1, 1, c), "storage_tokens": (1, 4, c), "mask_token": (1, c),
            "patch_embed.proj.weight": (c, 3, 16, 16), "patch_embed.proj.bias": (c,),
            "rope_embed.periods": (16,), "norm.weight": (c,), "norm.bias": (c,)}
    for i in range(12):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                     b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                     b + "attn.qkv.bias_mask": (3 * c,),
                     b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,), b + "ls1.gamma": (c,),
                     b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                     b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                     b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,), b + "ls2.gamma": (c,)})
    return keys


def _shapes(arch: DinoArchitecture) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_dino_vit(arch, device="meta").state_dict().items()}


def test_fact_dinov2_vits14_key_layout_matches_official():
    arch = DinoArchitecture("dinov2", embed_dim=384, depth=12, num_heads=6, patch_size=14, pos_grid=37)
    shapes = _shapes(arch)
    assert shapes == _dinov2_vits14_expected()
    assert len(shapes) == 175
    inferred = infer_architecture(build_dino_vit(arch, device="meta").state_dict())
    assert inferred == arch and inferred.name == "dinov2-vits14"


def test_fact_dinov2_vits14_reg4_key_layout_and_resampling_mode():
    arch = DinoArchitecture("dinov2", embed_dim=384, depth=12, num_heads=6, patch_size=14, pos_grid=37,
                            extra_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    assert _shapes(arch) == _dinov2_vits14_expected(registers=4)
    inferred = infer_architecture(build_dino_vit(arch, device="meta").state_dict())
    # dinov2/hub/backbones.py *_reg: interpolate_antialias=True, interpolate_offset=0.0
    assert inferred == arch and inferred.name == "dinov2-vits14-reg4"


def test_fact_dinov3_vitb16_key_layout_matches_official():
    arch = DinoArchitecture("dinov3", embed_dim=768, depth=12, num_heads=12, patch_size=16, extra_tokens=4,
                            qkv_bias_mask=True, norm_eps=1e-5, interpolate_offset=0.0)
    assert _shapes(arch) == _dinov3_vitb16_expected()
    inferred = infer_architecture(build_dino_vit(arch, device="meta").state_dict())
    assert inferred == arch and inferred.name == "dinov3-vitb16"


# ------------------------------------------------------------------------------ position encodings

def _torch_bicubic_1d(values: np.ndarray, n_out: int, scale: float) -> np.ndarray:
    """Independent reference: cubic convolution (A = -0.75), align_corners=False, clamped taps,
    sampling positions src = (dst + 0.5) / scale - 0.5.
    """
    a = -0.75

    def weight(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    out = np.zeros(n_out)
    for d in range(n_out):
        src = (d + 0.5) / scale - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            out[d] += weight(src - tap) * values[min(max(tap, 0), len(values) - 1)]
    return out


def test_pos_embed_interpolation_uses_the_official_offset_scale_factor():
    m, rows = 5, np.array([0.0, 1.0, -2.0, 4.0, 0.5])
    grid = torch.tensor(rows, dtype=torch.float32)[:, None, None].expand(m, m, 1).reshape(m * m, 1)
    h, w = 9, 3
    out = interpolate_pos_embed(grid, (h, w), offset=0.1, antialias=False).reshape(h, w)
    expected = _torch_bicubic_1d(rows, h, (h + 0.1) / m)
    np.testing.assert_allclose(out[:, 0].numpy(), expected, atol=1e-5)
    assert torch.allclose(out, out[:, :1].expand(h, w), atol=1e-6)  # constant along x stays constant
    plain_resize = _torch_bicubic_1d(rows, h, h / m)
    assert np.abs(expected - plain_resize).max() > 1e-3  # the +0.1 changes values, not only sizes


def test_pos_embed_interpolation_shapes_identity_and_constants():
    m, c = 37, 4
    pe = torch.randn(m * m, c, generator=torch.Generator().manual_seed(1))
    assert torch.equal(interpolate_pos_embed(pe, (m, m), offset=0.1, antialias=False), pe)
    for n in (1, 2, 13, 32, 36, 38, 55, 74, 80):  # sizes where floor((n / m) * m) can misfire
        for offset, antialias in ((0.1, False), (0.0, True)):
            assert interpolate_pos_embed(pe, (n, 7), offset=offset, antialias=antialias).shape == (n * 7, c)
    const = torch.full((m * m, c), 0.25)
    for offset, antialias in ((0.1, False), (0.0, True)):
        out = interpolate_pos_embed(const, (20, 50), offset=offset, antialias=antialias)
        assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-5)


def test_rope_tables_match_hand_computed_angles():
    periods = torch.tensor([1.0, 10.0])  # head_dim 8
    sin, cos = rope_sin_cos(periods, (1, 2))  # y coord 0; x coords -0.5, +0.5
    assert sin.shape == cos.shape == (2, 8)
    angles_right = [0.0, 0.0, 2 * math.pi * 0.5 / 1.0, 2 * math.pi * 0.5 / 10.0] * 2  # [y freqs, x freqs] x 2
    np.testing.assert_allclose(sin[1].numpy(), np.sin(angles_right), atol=1e-6)
    np.testing.assert_allclose(cos[0].numpy(), np.cos(angles_right), atol=1e-6)  # cos is even: x = -0.5


# ------------------------------------------------------------------------------ loading + features

def test_resized_shape_rounds_each_side_up_to_the_patch_multiple():
    assert resized_shape(100, 200, 768, 16) == (384, 768)
    assert resized_shape(1000, 1000, 448, 14) == (448, 448)
    assert resized_shape(10, 1000, 448, 14) == (14, 448)
    assert resized_shape(301, 200, 768, 16) == (768, 512)  # 510.3 -> 510 -> 512


def test_features_shape_for_a_non_square_image(tmp_path):
    path = save(random_state_dict(V2_TINY), tmp_path / "tiny_v2.pth")
    backbone = DinoBackbone(path, input_long_side=56)
    assert (backbone.name, backbone.patch_size, backbone.feature_dim) == ("dinov2-vit-d128x2-p14", 14, 128)
    assert backbone.arch == V2_TINY
    feats = backbone.features(image(50, 90))  # -> 31 x 56 -> 42 x 56 pixels -> 3 x 4 patches
    assert feats.shape == (3, 4, 128) and feats.dtype == np.float32 and np.isfinite(feats).all()
    # x_norm_patchtokens are LayerNorm outputs, not L2-normalised
    assert not np.allclose(np.linalg.norm(feats, axis=-1), 1.0)
    assert backbone.features(image(90, 50)).shape == (4, 3, 128)
    assert all(p.device.type == "cpu" for p in backbone.model.parameters())


def test_determinism_across_loads_and_calls(tmp_path):
    path = save(random_state_dict(V2_TINY, seed=3), tmp_path / "v2.pth")
    img = image(40, 64, seed=5)
    a = DinoBackbone(path, input_long_side=56).features(img)
    b_backbone = DinoBackbone(path, input_long_side=56)
    np.testing.assert_array_equal(a, b_backbone.features(img))
    np.testing.assert_array_equal(a, b_backbone.features(img))


def test_register_variant_loads_uses_registers_and_drops_them(tmp_path):
    sd = random_state_dict(V2_REG)
    backbone = DinoBackbone(save(sd, tmp_path / "reg.pth"), input_long_side=56)
    assert backbone.name == "dinov2-vit-d128x2-p14-reg4"
    assert backbone.arch.interpolate_offset == 0.0 and backbone.arch.interpolate_antialias
    img = image(56, 42)
    feats = backbone.features(img)
    assert feats.shape == (4, 3, 128)
    # (a per-token constant shift would be invisible behind the LayerNorms: perturb per channel)
    sd["register_tokens"] = sd["register_tokens"] + torch.randn(sd["register_tokens"].shape)
    changed = DinoBackbone(save(sd, tmp_path / "reg2.pth"), input_long_side=56).features(img)
    assert changed.shape == feats.shape and not np.allclose(changed, feats, atol=1e-4)


def test_dinov3_variant_with_rope_and_storage_tokens(tmp_path):
    sd = random_state_dict(V3_TINY)
    backbone = DinoBackbone(save(sd, tmp_path / "v3.pth"), input_long_side=64)
    assert backbone.arch == V3_TINY and backbone.patch_size == 16
    assert backbone.name == "dinov3-vit-d48x2-p16"
    img = image(30, 64)
    feats = backbone.features(img)  # 30 -> 32 px -> 2 patches; 64 -> 4 patches
    assert feats.shape == (2, 4, 48) and np.isfinite(feats).all()
    # the stored K-bias mask is what the model multiplies the qkv bias with
    assert torch.equal(backbone.model.blocks[0].attn.qkv.bias_mask, sd["blocks.0.attn.qkv.bias_mask"])
    sd["blocks.0.attn.qkv.bias_mask"] = torch.ones_like(sd["blocks.0.attn.qkv.bias_mask"])
    unmasked = DinoBackbone(save(sd, tmp_path / "v3b.pth"), input_long_side=64).features(img)
    assert not np.allclose(unmasked, feats, atol=1e-4)


def test_num_heads_override_for_a_non_official_width(tmp_path):
    path = save(random_state_dict(V2_ODD_HEADS), tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="num_heads"):
        DinoBackbone(path)
    backbone = DinoBackbone(path, num_heads=3, input_long_side=42)
    assert backbone.arch == V2_ODD_HEADS
    assert backbone.features(image(42, 42)).shape == (3, 3, 48)


def test_training_checkpoint_wrappers_load_like_the_bare_file(tmp_path):
    sd = random_state_dict(V2_TINY)
    img = image(42, 56)
    bare = DinoBackbone(save(sd, tmp_path / "bare.pth"), input_long_side=56).features(img)
    # DINOv2 teacher checkpoint: {"teacher": backbone.* + heads}, blocks chunked as blocks.<chunk>.<i>.
    teacher = {"backbone." + k.replace("blocks.1.", "blocks.1.1.").replace("blocks.0.", "blocks.0.0."): v
               for k, v in sd.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 128)
    wrapped = DinoBackbone(save({"teacher": teacher}, tmp_path / "teacher.pth"), input_long_side=56)
    np.testing.assert_array_equal(wrapped.features(img), bare)
    model_wrapped = DinoBackbone(save({"model": sd, "iteration": 7}, tmp_path / "model.pth"), input_long_side=56)
    np.testing.assert_array_equal(model_wrapped.features(img), bare)


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tmp_path):
    sd = random_state_dict(V2_TINY)
    del sd["blocks.1.ls2.gamma"]
    sd["blocks.0.attn.extra_weight"] = torch.zeros(3)
    sd["norm.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        DinoBackbone(save(sd, tmp_path / "bad.pth"))
    message = str(info.value)
    assert "blocks.1.ls2.gamma" in message and "blocks.0.attn.extra_weight" in message
    assert "norm.bias (7,)" in message and "missing" in message and "unexpected" in message


def test_wrong_files_get_clear_errors(tmp_path, tiny_sam2_model):
    with pytest.raises(OSError, match="not found"):
        DinoBackbone(tmp_path / "absent.pth")
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="not a PyTorch weights file"):
        DinoBackbone(text)
    sam2 = save({"model": tiny_sam2_model.sam.state_dict()}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(ValueError, match="SAM 2"):
        DinoBackbone(sam2)
    with pytest.raises(ValueError, match="not a state dict"):
        DinoBackbone(save(torch.zeros(3), tmp_path / "tensor.pth"))


def test_bad_images_and_options_are_rejected(tmp_path):
    path = save(random_state_dict(V2_TINY), tmp_path / "v2.pth")
    with pytest.raises(ValueError, match="input_long_side"):
        DinoBackbone(path, input_long_side=10)
    backbone = DinoBackbone(path, input_long_side=28)
    with pytest.raises(ValueError, match="uint8"):
        backbone.features(image(20, 20).astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        backbone.features(image(20, 20)[..., 0])
