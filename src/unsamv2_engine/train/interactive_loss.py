"""The simulated interaction on one image and its loss, as a module (so that DDP can wrap it).

docs/model-reference.md §4.3-4.5: a first click uniform inside each mask, then correction clicks from
the error of the previous pass, the previous low-res logits as ``mask_input``, the granularity token at
the mask's stored g; SAM 2's no-object rule; :func:`unsamv2_engine.train.losses.unsamv2_loss` summed
over the passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unsamv2_engine.model.decoding import ImageFeatures, decode, encode_image, upsample_logits
from unsamv2_engine.train.clicks import batch_correction_clicks, batch_initial_clicks
from unsamv2_engine.train.losses import unsamv2_loss
from unsamv2_engine.train.sampling import object_click_seed

__all__ = ["NO_OBJECT_LOGIT", "InteractiveLoss"]

NO_OBJECT_LOGIT = -1024.0  # SAM 2's NO_OBJ_SCORE


class InteractiveLoss(nn.Module):
    """The simulated interaction on one image and its loss (a module, so that DDP can wrap it).

    ``forward(image, embed, feat_s0, feat_s1, masks, granularities, click_seed, num_objects)``:
    ``image`` ``[1, 3, S, S]`` (encoded here, with gradient: trainable ``all``) or None with the
    three feature tensors of :class:`ImageFeatures`; ``masks`` bool ``[O, S, S]``; ``granularities``
    float ``[O]``; returns the dict of :func:`unsamv2_loss` (``"loss"`` carries the graph).
    """

    def __init__(self, sam: nn.Module, num_correction_clicks: int) -> None:
        super().__init__()
        self.sam = sam
        self.num_correction_clicks = int(num_correction_clicks)

    def forward(self, image: torch.Tensor | None, embed: torch.Tensor | None, feat_s0: torch.Tensor | None,
                feat_s1: torch.Tensor | None, masks: torch.Tensor, granularities: torch.Tensor, click_seed: int,
                num_objects: float, first_object: int = 0) -> dict[str, Any]:
        features = encode_image(self.sam, image) if image is not None else ImageFeatures(embed, (feat_s0, feat_s1))
        # One click generator per object (seeded by its index in the image), so that an object's clicks
        # are the same whichever chunk of masks it is processed in.
        generator = [torch.Generator().manual_seed(object_click_seed(click_seed, first_object + i))
                     for i in range(masks.shape[0])]
        size = tuple(masks.shape[-2:])
        gra = granularities.reshape(-1, 1).to(torch.float32)
        coords, labels = batch_initial_clicks(masks, generator)
        mask_input = None
        steps = []
        for step in range(1 + self.num_correction_clicks):
            if step:
                new_coords, new_labels = batch_correction_clicks(steps[-1][0].detach()[:, 0] > 0, masks, generator)
                coords, labels = torch.cat([coords, new_coords], 1), torch.cat([labels, new_labels], 1)
            out = decode(self.sam, features, coords, labels, gra, mask_input)
            present = out.object_score_logits.float() > 0  # [O, 1]
            low_res = torch.where(present[:, :, None, None], out.low_res_logits.float(),
                                  torch.full_like(out.low_res_logits, NO_OBJECT_LOGIT, dtype=torch.float32))
            high_res = upsample_logits(low_res, size)
            steps.append((high_res, out.iou_all[:, 0].float(), out.object_score_logits.float()))
            mask_input = low_res
        return unsamv2_loss(steps, masks[:, None].float(), num_objects=num_objects)
