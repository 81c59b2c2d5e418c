"""Positional initialisation of the mask decoder's cross-attention: a SAM trained from scratch uses its clicks.

In SAM's two-way transformer a point prompt reaches the image only through attention: the point
token's query carries the positional encoding of the click, the image keys carry the dense positional
encoding of their location, and the point "sees" its neighbourhood when ``W_q^T W_k`` matches the two.
With the default random projections that product is a random matrix, attention is spread evenly over
the image, and nothing in the loss makes it sharpen quickly: trained from random weights on the
synthetic stream, the decoder instead learns one click-independent foreground mask (best-of-3
first-click IoU stuck at 0.15 for 2,000+ steps, docs/fine-tuning.md).

Giving the query and key projections of every cross-attention the same (orthogonal) weights makes
``W_q^T W_k = gain^2 P`` with ``P`` a projection: the attention logit of the point token and an image
location then contains the dot product of their positional encodings, which peaks at the click (a
random-Fourier-feature kernel). The click is visible from the first step; training is otherwise
unchanged and every weight stays trainable. The architecture and the checkpoint layout do not change.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["positional_attention_init"]


def positional_attention_init(sam: nn.Module, *, gain: float = 1.5, seed: int = 0) -> int:
    """Tie the query and key projections of the mask decoder's cross-attentions (in place).

    ``sam``: a SAM 2 model (``sam.sam_mask_decoder.transformer`` is a two-way transformer);
    ``gain``: scale of the shared orthogonal weights (1.5 gives attention logits of about 4-5 at the
    click for SAM 2's 8 heads of 16 channels). Biases of those projections are zeroed. Returns the
    number of attention modules changed (5 for SAM 2.1: token-to-image and image-to-token in each of
    the 2 blocks, and the final token-to-image).
    """
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    transformer = sam.sam_mask_decoder.transformer
    attentions = [block.cross_attn_token_to_image for block in transformer.layers]
    attentions += [block.cross_attn_image_to_token for block in transformer.layers]
    attentions.append(transformer.final_attn_token_to_image)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for attention in attentions:
            weight = torch.empty_like(attention.q_proj.weight, device="cpu")
            nn.init.orthogonal_(weight, gain=float(gain), generator=generator)
            attention.q_proj.weight.copy_(weight)
            attention.k_proj.weight.copy_(weight)
            attention.q_proj.bias.zero_()
            attention.k_proj.bias.zero_()
    return len(attentions)
