"""A clean-room DINOv2 / DINOv3 vision transformer that loads the official released weight files.

Used as the optional self-supervised feature backbone of the pseudo-label pipeline
(docs/model-reference.md §5.2 step 2: the authors take DINOv3 ViT-B/16 ``x_norm_patchtokens``). Plain
torch; no torch.hub, timm or xFormers. The architecture is read off the state dict (embed dim,
depth, patch size, register/storage tokens, FFN kind, biases, LayerScale), so any size loads.

Facts pinned from the public sources (read, not copied):

* DINOv2 (facebookresearch/dinov2, ``dinov2/models/vision_transformer.py`` @112792f,
  ``dinov2/hub/backbones.py``, ``dinov2/layers/*.py``): hub models are built with
  ``img_size=518, patch_size=14, init_values=1.0`` (LayerScale on), ``block_chunks=0``, LayerNorm
  eps 1e-6, qkv/proj/ffn biases, MLP ratio 4 (GELU), head dim 64 (S 6, B 12, L 16, g 24 heads; g
  uses a fused SwiGLU ``mlp.w12``/``mlp.w3``). Learned ``pos_embed [1, 1 + 37*37, C]`` for the cls
  token and the patch grid, resampled bicubically to the input grid: plain files use a
  ``scale_factor = (grid + 0.1) / 37`` ("+0.1 kludge"), ``_reg4`` files use ``interpolate_offset=0``
  (an explicit output ``size``) and ``antialias=True``. Register tokens are inserted after the
  cls token *after* the position embedding is added (they get none).
* DINOv3 (facebookresearch/dinov3, ``dinov3/models/vision_transformer.py`` @dbeab0e,
  ``dinov3/hub/backbones.py`` @071435e, ``dinov3/layers/block.py``; attention / RoPE / FFN layer
  files read from verbatim forks, e.g. sergiocanar/dinov3 @2ff68be): no learned position
  embedding; an axial 2D RoPE (``rope_embed.periods [head_dim / 4]``, base 100, coordinates
  ``2 * (i + 0.5) / n - 1`` per axis, angles ``2 pi coord / period`` laid out ``[y..., x...]``
  then tiled twice, rotate-half convention) applied to the patch tokens' q and k only; 4
  ``storage_tokens`` after the cls token; LayerNorm eps 1e-5 ("layernormbf16"); LayerScale;
  ``mask_k_bias``: the qkv bias is multiplied by a stored ``attn.qkv.bias_mask`` buffer.
* Both: ``x_norm_patchtokens = norm(x)[:, 1 + n_extra_tokens:]`` after the last block.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DinoArchitecture",
    "DinoBackbone",
    "DinoViT",
    "build_dino_vit",
    "infer_architecture",
    "interpolate_pos_embed",
    "load_dino_state_dict",
    "read_dino_checkpoint",
    "resized_shape",
    "rope_sin_cos",
]

Family = Literal["dinov2", "dinov3"]
FfnKind = Literal["mlp", "swiglu_fused", "swiglu"]

_HEAD_DIM = 64  # every official DINOv2/DINOv3 ViT uses 64-dim heads
_SIZE_LETTERS = {384: "s", 768: "b", 1024: "l", 1280: "h", 1536: "g", 4096: "7b"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.")


@dataclass(frozen=True)
class DinoArchitecture:
    """Everything needed to build a DINOv2/DINOv3 ViT whose state dict matches an official file.

    ``pos_grid`` is the side M of the learned ``M x M`` position-embedding grid (DINOv2 only,
    0 for DINOv3); ``extra_tokens`` are DINOv2 registers / DINOv3 storage tokens;
    ``ffn_hidden`` is the FFN hidden width (the SwiGLU width for SwiGLU FFNs).
    """

    family: Family
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    extra_tokens: int = 0
    pos_grid: int = 0
    ffn: FfnKind = "mlp"
    ffn_hidden: int = 0
    layer_scale: bool = True
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    qkv_bias_mask: bool = False
    norm_eps: float = 1e-6
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    cls_norm: bool = False
    local_cls_norm: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        if self.family == "dinov3" and self.embed_dim % (4 * self.num_heads):
            raise ValueError(f"RoPE needs embed dim {self.embed_dim} divisible by 4 x {self.num_heads} heads")
        if self.ffn_hidden <= 0:
            object.__setattr__(self, "ffn_hidden", 4 * self.embed_dim)

    @property
    def name(self) -> str:
        """``dinov2-vits14``, ``dinov2-vitb14-reg4``, ``dinov3-vitb16``, ``dinov3-vitl16plus``, ..."""
        letter = _SIZE_LETTERS.get(self.embed_dim)
        size = f"{letter}{self.patch_size}" if letter else f"-d{self.embed_dim}x{self.depth}-p{self.patch_size}"
        if self.family == "dinov3":
            plus = "plus" if self.ffn == "swiglu" and letter in ("s", "l", "h") else ""
            return f"dinov3-vit{size}{plus}"
        registers = f"-reg{self.extra_tokens}" if self.extra_tokens else ""
        return f"dinov2-vit{size}{registers}"


# --------------------------------------------------------------------------------------------
# Position encodings
# --------------------------------------------------------------------------------------------


def interpolate_pos_embed(
    patch_pos_embed: torch.Tensor, grid_hw: tuple[int, int], *, offset: float, antialias: bool
) -> torch.Tensor:
    """Resample a learned ``[M*M, C]`` patch position embedding to a ``grid_hw = (h, w)`` grid.

    As DINOv2 does: bicubic (``align_corners=False``), in float32. With ``offset > 0`` the
    resampling is driven by ``scale_factor = ((h + offset) / M, (w + offset) / M)`` -- the scale
    factor, not the output size, sets the sampling positions, so the values differ slightly from
    a plain resize; with ``offset == 0`` the output ``size`` is given instead. The official model
    skips resampling when the input grid is exactly ``M x M``.

    Returns ``[h*w, C]`` float32, row-major (the patch-token order).
    """
    n, dim = patch_pos_embed.shape
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embedding has {n} patch entries, not a square grid")
    h, w = grid_hw
    if (h, w) == (m, m):
        return patch_pos_embed.float()
    grid = patch_pos_embed.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = (float(h + offset) / m, float(w + offset) / m)
        out = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        out = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=antialias)
    if tuple(out.shape[-2:]) != (h, w):  # the offset exists to make this impossible
        raise RuntimeError(f"position-embedding resampling gave {tuple(out.shape[-2:])}, expected {(h, w)}")
    return out.permute(0, 2, 3, 1).reshape(h * w, dim)


def rope_sin_cos(periods: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3 axial RoPE tables for an ``(h, w)`` patch grid at inference (no coordinate jitter).

    ``periods`` is ``[head_dim / 4]``. Coordinates are patch centres normalised per axis to
    ``[-1, 1]`` ("separate"); angles ``2 pi coord / period`` are laid out ``[y freqs, x freqs]``
    and tiled twice to the head dim. Returns ``(sin, cos)``, each ``[h*w, head_dim]`` float32.
    """
    h, w = grid_hw
    p = periods.float()
    ys = torch.arange(0.5, h, device=p.device, dtype=torch.float32) / h
    xs = torch.arange(0.5, w, device=p.device, dtype=torch.float32) / w
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)  # [hw, 2]
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / p[None, None, :]  # [hw, 2, head_dim / 4]
    angles = angles.flatten(1, 2).tile(2)  # [hw, head_dim]
    return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


# --------------------------------------------------------------------------------------------
# Modules (attribute names = the official state-dict key names)
# --------------------------------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, H/p * W/p, C]`` (row-major patch order)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _FusedSwiGLU(nn.Module):
    """DINOv2 ViT-g FFN: one ``w12`` projection split in halves, ``silu(a) * b``, then ``w3``."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class _SwiGLU(nn.Module):
    """DINOv3 "plus" FFN: separate ``w1``, ``w2``; ``w3(silu(w1 x) * w2 x)``."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


_FFN_CLASSES = {"mlp": _Mlp, "swiglu_fused": _FusedSwiGLU, "swiglu": _SwiGLU}


class _QkvLinear(nn.Linear):
    """The qkv projection; with ``bias_mask`` (DINOv3 ``mask_k_bias``) the bias is multiplied by it."""

    def __init__(self, dim: int, bias: bool, bias_mask: bool) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        self.bias_mask: torch.Tensor | None
        if bias and bias_mask:
            self.register_buffer("bias_mask", torch.ones(3 * dim))
        else:
            self.bias_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and self.bias_mask is not None:
            bias = bias * self.bias_mask.to(bias.dtype)
        return F.linear(x, self.weight, bias)


class _Attention(nn.Module):
    def __init__(self, arch: DinoArchitecture) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.qkv = _QkvLinear(arch.embed_dim, arch.qkv_bias, arch.qkv_bias_mask)
        self.proj = nn.Linear(arch.embed_dim, arch.embed_dim, bias=arch.proj_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``x [B, N, C]``; ``rope`` = (sin, cos) ``[n_patch, head_dim]`` for the last n_patch tokens."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B, heads, N, head_dim]
        if rope is not None:
            q, k = _apply_rope(q, rope), _apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _apply_rope(t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    sin, cos = rope
    prefix = t.shape[-2] - sin.shape[-2]  # cls + storage tokens are not rotated
    patches = t[:, :, prefix:].to(sin.dtype)
    rotated = (patches * cos + _rotate_half(patches) * sin).to(t.dtype)
    return torch.cat((t[:, :, :prefix], rotated), dim=-2)


class _Block(nn.Module):
    def __init__(self, arch: DinoArchitecture) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.attn = _Attention(arch)
        self.ls1 = _LayerScale(dim) if arch.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.mlp = _FFN_CLASSES[arch.ffn](dim, arch.ffn_hidden, arch.ffn_bias)
        self.ls2 = _LayerScale(dim) if arch.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _RopeEmbed(nn.Module):
    def __init__(self, head_dim: int) -> None:
        super().__init__()
        # Default = the official base-100 periods; a loaded file overwrites them.
        exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
        self.register_buffer("periods", 100.0**exponents)


class DinoViT(nn.Module):
    """DINOv2 / DINOv3 ViT backbone (inference only); parameter names follow the official files."""

    def __init__(self, arch: DinoArchitecture) -> None:
        super().__init__()
        self.arch = arch
        dim = arch.embed_dim
        self.patch_embed = _PatchEmbed(arch.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if arch.family == "dinov2":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + arch.pos_grid**2, dim))
            if arch.extra_tokens:
                self.register_tokens = nn.Parameter(torch.zeros(1, arch.extra_tokens, dim))
        else:
            if arch.extra_tokens:
                self.storage_tokens = nn.Parameter(torch.zeros(1, arch.extra_tokens, dim))
            self.rope_embed = _RopeEmbed(dim // arch.num_heads)
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(dim, eps=arch.norm_eps)
        # Loaded for strict key matching; neither touches the patch tokens.
        if arch.cls_norm:
            self.cls_norm = nn.LayerNorm(dim, eps=arch.norm_eps)
        if arch.local_cls_norm:
            self.local_cls_norm = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image ``[B, 3, H, W]`` (H, W multiples of the patch size) ->
        ``x_norm_patchtokens`` ``[B, H/p * W/p, C]`` (final LayerNorm; cls and extra tokens dropped).
        """
        p = self.arch.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = self.patch_embed(x)
        batch = tokens.shape[0]
        cls = self.cls_token.expand(batch, -1, -1)
        rope = None
        if self.arch.family == "dinov2":
            pos = self.pos_embed[0].float()
            patch_pos = interpolate_pos_embed(pos[1:], grid, offset=self.arch.interpolate_offset,
                                              antialias=self.arch.interpolate_antialias)
            cls = cls + pos[:1].to(cls.dtype)
            tokens = tokens + patch_pos.to(tokens.dtype)
            extra = [self.register_tokens.expand(batch, -1, -1)] if self.arch.extra_tokens else []
        else:
            rope = rope_sin_cos(self.rope_embed.periods, grid)
            extra = [self.storage_tokens.expand(batch, -1, -1)] if self.arch.extra_tokens else []
        x = torch.cat([cls, *extra, tokens], dim=1)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)[:, 1 + self.arch.extra_tokens:]


def build_dino_vit(arch: DinoArchitecture, device: str | torch.device | None = None) -> DinoViT:
    """An uninitialised-weights :class:`DinoViT` (use ``device="meta"`` to inspect keys for free)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return DinoViT(arch)


# --------------------------------------------------------------------------------------------
# Reading files and inferring the architecture
# --------------------------------------------------------------------------------------------


def read_dino_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a DINO backbone state dict from ``path`` (``torch.load(weights_only=True)`` on CPU).

    Accepts the official hub files (a bare state dict) and DINOv2 training outputs: a
    ``{"teacher": ...}`` or ``{"model": ...}`` wrapper whose keys carry ``backbone.`` /
    ``teacher.backbone.`` / ``module.`` prefixes (heads are dropped) and chunked block names
    ``blocks.<chunk>.<i>.`` (``block_chunks > 0``), which are renamed to ``blocks.<i>.``.
    """
    path = Path(path)
    if not path.is_file():
        raise OSError(f"DINO weights file not found: {path}; see docs/dino-backbone.md for where to get one")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a torch weights file"
        raise ValueError(f"{path} is not a PyTorch weights file ({type(exc).__name__}: {exc}); "
                         "pass an official DINOv2/DINOv3 .pth file") from exc
    return _unwrap_state_dict(obj, str(path))


def _unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict; "
                         "pass an official DINOv2/DINOv3 .pth file")
    for wrapper in ("teacher", "model", "state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source} contains no tensors; pass an official DINOv2/DINOv3 .pth file")
    for prefix in ("teacher.backbone.", "backbone.", "module.backbone.", "module."):
        if any(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    if any(_CHUNKED_BLOCK_KEY.match(k) for k in tensors):
        tensors = {_CHUNKED_BLOCK_KEY.sub(r"blocks.\1.", k): v for k, v in tensors.items()}
    return tensors


def _not_a_dino_error(state_dict: Mapping[str, torch.Tensor], source: str) -> ValueError:
    keys = list(state_dict)
    if any(k.startswith(("image_encoder.", "sam_mask_decoder.", "sam_prompt_encoder.")) for k in keys):
        what = "a SAM 2 / UnSAMv2 checkpoint"
    else:
        what = f"not a DINOv2/DINOv3 ViT backbone (first keys: {', '.join(keys[:5])})"
    return ValueError(f"{source} is {what}; the DINO backbone needs an official DINOv2 file "
                      "(e.g. dinov2_vitb14_pretrain.pth) or DINOv3 ViT file "
                      "(e.g. dinov3_vitb16_pretrain_lvd1689m-*.pth)")


def infer_architecture(
    state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None, source: str = "state dict"
) -> DinoArchitecture:
    """Read a :class:`DinoArchitecture` off a (unwrapped) state dict.

    The head count is not stored in DINOv2 files: it defaults to ``embed_dim / 64`` (true for every
    official model); pass ``num_heads`` for anything else. DINOv3 stores it implicitly
    (``rope_embed.periods`` has ``head_dim / 4`` entries).
    """
    sd = state_dict
    needed = ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight")
    if not all(k in sd for k in needed):
        raise _not_a_dino_error(sd, source)
    proj = sd["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise ValueError(f"{source}: patch_embed.proj.weight has shape {tuple(proj.shape)}, expected [C, 3, p, p]")
    embed_dim, patch_size = int(proj.shape[0]), int(proj.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k)))

    if "pos_embed" in sd:
        family: Family = "dinov2"
        n_patch = sd["pos_embed"].shape[1] - 1
        pos_grid = math.isqrt(n_patch)
        if pos_grid * pos_grid != n_patch:
            raise ValueError(f"{source}: pos_embed {tuple(sd['pos_embed'].shape)} is not 1 + a square grid")
        extra = int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0
        heads = num_heads or _default_heads(embed_dim, source)
        # Hub: registers <=> interpolate_offset 0 + antialias (dinov2/hub/backbones.py *_reg).
        offset, antialias = (0.0, True) if extra else (0.1, False)
        norm_eps = 1e-6
    elif "rope_embed.periods" in sd:
        family, pos_grid, offset, antialias, norm_eps = "dinov3", 0, 0.0, False, 1e-5
        extra = int(sd["storage_tokens"].shape[1]) if "storage_tokens" in sd else 0
        heads = num_heads or embed_dim // (4 * int(sd["rope_embed.periods"].numel()))
    else:
        raise ValueError(f"{source}: found neither pos_embed (DINOv2) nor rope_embed.periods (DINOv3); "
                         "not a supported DINO ViT file")

    mlp = "blocks.0.mlp."
    if f"{mlp}fc1.weight" in sd:
        ffn: FfnKind = "mlp"
        hidden = int(sd[f"{mlp}fc1.weight"].shape[0])
    elif f"{mlp}w12.weight" in sd:
        ffn, hidden = "swiglu_fused", int(sd[f"{mlp}w3.weight"].shape[1])
    elif f"{mlp}w1.weight" in sd:
        ffn, hidden = "swiglu", int(sd[f"{mlp}w1.weight"].shape[0])
    else:
        raise ValueError(f"{source}: block 0 has no recognised FFN (mlp.fc1 / mlp.w12 / mlp.w1)")
    ffn_bias_key = {"mlp": "fc1", "swiglu_fused": "w12", "swiglu": "w1"}[ffn]
    return DinoArchitecture(
        family=family, embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=patch_size,
        extra_tokens=extra, pos_grid=pos_grid, ffn=ffn, ffn_hidden=hidden,
        layer_scale="blocks.0.ls1.gamma" in sd,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=f"{mlp}{ffn_bias_key}.bias" in sd,
        qkv_bias_mask="blocks.0.attn.qkv.bias_mask" in sd,
        norm_eps=norm_eps, interpolate_offset=offset, interpolate_antialias=antialias,
        cls_norm="cls_norm.weight" in sd, local_cls_norm="local_cls_norm.weight" in sd,
    )


def _default_heads(embed_dim: int, source: str) -> int:
    if embed_dim % _HEAD_DIM:
        raise ValueError(f"{source}: embed dim {embed_dim} is not a multiple of 64, so the head count "
                         "cannot be inferred; pass num_heads")
    return embed_dim // _HEAD_DIM


def load_dino_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None, source: str = "state dict"
) -> DinoViT:
    """Build the ViT that ``state_dict`` describes and load it strictly (CPU, eval mode).

    Raises ``ValueError`` naming the missing / unexpected / mis-shaped keys.
    """
    arch = infer_architecture(state_dict, num_heads=num_heads, source=source)
    model = build_dino_vit(arch, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(f"{k} {tuple(state_dict[k].shape)} (expected {shape})"
                         for k, shape in expected.items() if k in state_dict and tuple(state_dict[k].shape) != shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("wrong shapes", wrong_shape)) if keys]
        raise ValueError(f"{source} does not match a {arch.name} backbone: " + "; ".join(parts))
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                          strict=True)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# The pseudo-label backbone
# --------------------------------------------------------------------------------------------


def resized_shape(height: int, width: int, long_side: int, multiple: int) -> tuple[int, int]:
    """Scale ``(height, width)`` so the long side is ``long_side``, then round each side *up* to a
    multiple of ``multiple`` (as the authors' conquer stage does with 768 and 16).
    """
    scale = long_side / max(height, width)

    def side(n: int) -> int:
        return max(multiple, math.ceil(max(1, round(n * scale)) / multiple) * multiple)

    return side(height), side(width)


class DinoBackbone:
    """Patch features from an official DINOv2 / DINOv3 ViT weights file (the pipeline's ``Backbone``).

    ``weights``: a local ``.pth`` file (see docs/dino-backbone.md). ``device``: ``cpu``, ``cuda``,
    ``mps`` or ``auto``; inference runs in float32. ``input_long_side``: pixels of the long side
    before rounding up to a multiple of the patch size. ``num_heads``: only needed for non-official
    DINOv2 sizes (embed dim not a multiple of 64).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        input_long_side: int = 448,
        num_heads: int | None = None,
    ) -> None:
        state_dict = read_dino_checkpoint(weights)
        model = load_dino_state_dict(state_dict, num_heads=num_heads, source=str(weights))
        self.arch = model.arch
        self.name: str = model.arch.name
        self.patch_size: int = model.arch.patch_size
        if int(input_long_side) < self.patch_size:
            raise ValueError(f"input_long_side must be at least the patch size {self.patch_size}, "
                             f"got {input_long_side}")
        self.input_long_side = int(input_long_side)
        self.device = resolve_device(device)
        self.model = model.to(self.device)

    @property
    def feature_dim(self) -> int:
        """C, the channel count of :meth:`features`."""
        return self.arch.embed_dim

    def features(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[h, w, C]`` float32 ``x_norm_patchtokens`` (not L2-normalised).

        The image is resized (PIL bicubic) so its long side is ~``input_long_side``, each side
        rounded up to a multiple of ``patch_size``; then ``/255`` and ImageNet mean/std.
        ``h, w`` = resized sides / ``patch_size``.
        """
        from PIL import Image

        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {got}; "
                             "see unsamv2_engine.intensity.to_uint8_rgb")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"empty image of shape {image.shape}")
        th, tw = resized_shape(image.shape[0], image.shape[1], self.input_long_side, self.patch_size)
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((tw, th), Image.BICUBIC))
        x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        x = ((x - mean) / std).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            tokens = self.model(x)[0]
        p = self.patch_size
        return tokens.reshape(th // p, tw // p, -1).float().cpu().numpy()

    def __repr__(self) -> str:
        return f"DinoBackbone({self.name}, device={self.device}, input_long_side={self.input_long_side})"
