"""A forward pass over the upstream ``TwoWayTransformer`` that shares image-side work across prompts.

Upstream repeats the image embedding once per prompt before the transformer. Here the image
tokens stay at batch 1 until the first image-to-token attention, where the prompts make them
diverge. Layer 0's key/value projections of the image (token-to-image attention) and its query
projection (image-to-token attention) are therefore computed once for the whole prompt batch:
a granularity sweep pays for them once, not once per g. The arithmetic per element is
upstream's; only the broadcasting differs. All weights are the upstream modules' (LoRA included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, num_heads: int, batch: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2).expand(batch, -1, -1, -1)


def attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Upstream ``Attention.forward`` where q and k/v may have batch 1 against a batch of B."""
    batch = max(q.shape[0], k.shape[0])
    qh = _heads(attn.q_proj(q), attn.num_heads, batch)
    kh = _heads(attn.k_proj(k), attn.num_heads, batch)
    vh = _heads(attn.v_proj(v), attn.num_heads, batch)
    dropout = attn.dropout_p if attn.training else 0.0
    out = F.scaled_dot_product_attention(qh, kh, vh, dropout_p=dropout)
    b, h, n, c = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def _block(layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
           key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.skip_first_layer_pe:
        queries = attention(layer.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + attention(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)

    k = keys + key_pe
    queries = layer.norm2(queries + attention(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))

    keys = layer.norm4(keys + attention(layer.cross_attn_image_to_token, k, queries + query_pe, queries))
    return queries, keys


def two_way_transformer(transformer: nn.Module, image: torch.Tensor, image_pe: torch.Tensor,
                        tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as upstream ``TwoWayTransformer.forward``, with the image allowed at batch 1.

    image ``[1 or B, C, H, W]``, image_pe ``[1, C, H, W]``, tokens ``[B, T, C]`` ->
    (tokens ``[B, T, C]``, image tokens ``[B, H*W, C]``).
    """
    keys = image.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        queries, keys = _block(layer, queries, keys, tokens, key_pe)
    attn_out = attention(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys
