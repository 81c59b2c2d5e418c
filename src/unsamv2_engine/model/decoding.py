"""Image encoding and prompt decoding for UnSAMv2 on upstream SAM 2 modules.

Conventions (identical to the authors' ``SAM2ImagePredictor``):

* point coordinates are in the model's input frame: pixels of the 1024x1024 resized image,
  (x, y) = (column, row); the prompt encoder adds 0.5 (pixel centre);
* sparse prompt tokens are ``[points..., pad (label -1), granularity token]``;
* decoder output tokens are ``[obj_score, iou, mask x4, gra]``; UnSAMv2 returns the gra mask only;
  its score is ``iou[0]`` (single output) or ``max(iou[1:4])`` ("multimask"), from the SAM IoU head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unsamv2_engine.model.granularity import granularity_token
from unsamv2_engine.model.two_way import two_way_transformer

LOW_RES_LOGIT_CLAMP = 32.0


@dataclass
class ImageFeatures:
    """Cached image embedding of one image.

    image_embed: ``[1, 256, 64, 64]`` (``no_mem_embed`` added); high_res: ``([1, 32, 256, 256],
    [1, 64, 128, 128])`` already projected by ``conv_s0``/``conv_s1``.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]


@dataclass
class DecoderOutput:
    """Raw decoder outputs for a prompt batch of size B.

    low_res_logits: ``[B, 1, 256, 256]`` unclamped logits of the returned mask;
    iou_all: ``[B, 4]`` the four sigmoid outputs of SAM's IoU head;
    object_score_logits: ``[B, 1]``; token_out: ``[B, 1, 256]`` the output token of the returned
    mask (the gra token for UnSAMv2); sam_logits: ``[B, 4, 256, 256]`` all SAM mask-token logits,
    only when requested (plain SAM mode).
    """

    low_res_logits: torch.Tensor
    iou_all: torch.Tensor
    object_score_logits: torch.Tensor
    token_out: torch.Tensor
    sam_logits: torch.Tensor | None = None


def encode_image(sam: nn.Module, pixels: torch.Tensor) -> ImageFeatures:
    """Run the image encoder on a preprocessed batch ``[1, 3, S, S]`` (S = ``sam.image_size``)."""
    backbone_out = sam.forward_image(pixels)
    _, vision_feats, _, feat_sizes = sam._prepare_backbone_features(backbone_out)
    if sam.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + sam.no_mem_embed
    maps = [f.permute(1, 2, 0).reshape(f.shape[1], -1, *hw) for f, hw in zip(vision_feats, feat_sizes)]
    return ImageFeatures(image_embed=maps[-1], high_res=(maps[0], maps[1]))


def embed_prompts(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor,
                  granularity: torch.Tensor | None,
                  mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse and dense prompt embeddings.

    coords ``[B, N, 2]`` float (model frame), labels ``[B, N]`` int (1 positive, 0 negative),
    granularity ``[B, 1]`` or None (no granularity token), mask_input ``[B, 1, 256, 256]`` logits or None.
    Returns sparse ``[B, N + 1 (+1), C]`` and dense ``[B, C, 64, 64]``.
    """
    sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
    if granularity is not None:
        sparse = torch.cat([sparse, granularity_token(prompt_encoder, granularity).to(sparse.dtype)], dim=1)
    return sparse, dense


def run_mask_decoder(decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor,
                     dense: torch.Tensor, *, granularity_head: bool, return_sam_logits: bool = False) -> DecoderOutput:
    """The mask decoder of SAM 2 with the UnSAMv2 granularity output token appended.

    With ``granularity_head`` the returned mask comes from ``gra_output_token_mlp`` applied to
    the gra output token (channel 4 of the authors' decoder); without it, from SAM's
    single-mask token 0 (``sam_logits`` then holds all four).
    """
    batch = sparse.shape[0]
    token_weights = [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight]
    if granularity_head:
        token_weights.append(decoder.gra_token.weight)
    output_tokens = torch.cat(token_weights, dim=0).unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat([output_tokens.to(sparse.dtype), sparse], dim=1)

    if dense.shape[0] > 1 and dense.stride(0) == 0:  # the same no-mask embedding for every prompt
        dense = dense[:1]
    src = features.image_embed + dense  # batch 1 unless mask inputs differ per prompt
    hs, src = two_way_transformer(decoder.transformer, src, image_pe, tokens)
    b, c, h, w = src.shape[0], src.shape[2], *dense.shape[-2:]
    src = src.transpose(1, 2).reshape(b, c, h, w)

    dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
    feat_s0, feat_s1 = features.high_res
    upscaled = act1(ln1(dc1(src) + feat_s1))
    upscaled = act2(dc2(upscaled) + feat_s0)
    _, cu, hu, wu = upscaled.shape
    upscaled = upscaled.reshape(b, cu, hu * wu)

    num_sam = decoder.num_mask_tokens  # 4
    sam_tokens = hs[:, 2:2 + num_sam]
    if granularity_head:
        token_out = hs[:, 2 + num_sam:3 + num_sam]
        hyper = decoder.gra_output_token_mlp(token_out)  # [B, 1, 32]
    else:
        token_out = sam_tokens[:, :1]
        hyper = decoder.output_hypernetworks_mlps[0](token_out)
    low_res = (hyper @ upscaled).reshape(b, 1, hu, wu)

    sam_logits = None
    if return_sam_logits:
        hyper_all = torch.stack([mlp(sam_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        sam_logits = (hyper_all @ upscaled).reshape(b, num_sam, hu, wu)

    return DecoderOutput(
        low_res_logits=low_res,
        iou_all=decoder.iou_prediction_head(hs[:, 1]),
        object_score_logits=decoder.pred_obj_score_head(hs[:, 0]),
        token_out=token_out,
        sam_logits=sam_logits,
    )


def decode(sam: nn.Module, features: ImageFeatures, coords: torch.Tensor, labels: torch.Tensor,
           granularity: torch.Tensor | None, mask_input: torch.Tensor | None = None, *,
           return_sam_logits: bool = False) -> DecoderOutput:
    """Prompt encoder + mask decoder for a prompt batch (shapes as in :func:`embed_prompts`).

    A model without a granularity module ignores ``granularity`` and returns SAM's outputs
    (``return_sam_logits`` gives the three multimask candidates too).
    """
    pe, dec = sam.sam_prompt_encoder, sam.sam_mask_decoder
    with_gra = hasattr(dec, "gra_token")
    sparse, dense = embed_prompts(pe, coords, labels, granularity if with_gra else None, mask_input)
    return run_mask_decoder(dec, features, pe.get_dense_pe(), sparse, dense,
                            granularity_head=with_gra, return_sam_logits=return_sam_logits or not with_gra)


def returned_iou(iou_all: torch.Tensor, multimask_output: bool) -> torch.Tensor:
    """The score UnSAMv2 returns with its mask: ``iou[:, 0]`` or ``max(iou[:, 1:4])``; ``[B]``."""
    return iou_all[:, 1:].max(dim=1).values if multimask_output else iou_all[:, 0]


def clamp_low_res(logits: torch.Tensor) -> torch.Tensor:
    """Low-resolution logits as the predictor returns them (and feeds them back): clamped to +-32."""
    return logits.clamp(-LOW_RES_LOGIT_CLAMP, LOW_RES_LOGIT_CLAMP)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of ``[B, C, 256, 256]`` logits straight to ``size`` (H, W)."""
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)


UPSAMPLE_BAND_PIXELS = 1 << 24


def upsampled_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float, *,
                    band_pixels: int = UPSAMPLE_BAND_PIXELS) -> torch.Tensor:
    """``upsample_logits(logits, size)[:, 0] > threshold`` as bool ``[B, H, W]``, in bounded memory.

    Up to ``band_pixels`` output values this is exactly that expression. Larger outputs (a coarse view of a
    whole slide: 16384^2 float logits would be 1 GiB) are interpolated separably: along x for the 256 low-res
    rows, then along y one band of rows at a time with the same source-index rule, so only the bool mask is
    ever whole. The two ways agree to ~1e-4 in the logits (float rounding of the same weights), so a pixel
    whose logit lies that close to the threshold may differ.
    """
    b, _, h, _ = logits.shape
    height, width = int(size[0]), int(size[1])
    if b * height * width <= band_pixels:
        return upsample_logits(logits, size)[:, 0] > threshold
    wide = F.interpolate(logits[:, :1], (h, width), mode="bilinear", align_corners=False)[:, 0]  # [B, h, W]
    out = torch.empty((b, height, width), dtype=torch.bool, device=logits.device)
    rows = max(1, band_pixels // (b * width))
    for y0 in range(0, height, rows):
        y = torch.arange(y0, min(y0 + rows, height), device=logits.device, dtype=torch.float32)
        src = ((y + 0.5) * (h / height) - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=h - 1)
        i1 = (i0 + 1).clamp(max=h - 1)
        lam = (src - i0).unsqueeze(-1).to(wide.dtype)
        out[:, y0:y0 + len(y)] = wide[:, i0] * (1 - lam) + wide[:, i1] * lam > threshold
    return out
