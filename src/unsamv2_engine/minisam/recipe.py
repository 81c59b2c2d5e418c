"""SAM's interactive training step on one image (SAM 2 ``MultiStepMultiMasksAndIous``, plain SAM).

For ``K`` targets of one image:

1. pass 0: one positive click inside each target (uniform, or, for a fraction ``innermost`` of the
   targets, at the target's innermost pixel as the RITM evaluator clicks); the decoder's three multimask outputs
   (mask tokens 1-3) are all scored, and only the best one (lowest ``20 focal + dice``) is supervised
   (SAM's ambiguity-aware loss); the IoU head is supervised on all three (L1 to the actual IoU);
2. passes 1..C: one correction click from the error of the previous prediction (uniform over the error,
   or, for the same fraction of targets, at the deepest error pixel as the evaluator clicks; the output with the
   highest predicted IoU, as at inference), all clicks so far plus the previous low-res logits as
   prompts, and the single-mask output (token 0) supervised;
3. objectness: binary cross-entropy towards "present" (every target is a real object).

Loss terms are summed over passes and averaged over targets. Shapes: pixels ``[1, 3, S, S]``,
masks bool ``[K, S, S]``; logits are compared at the model input size S.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unsamv2_engine.model.decoding import decode, encode_image, upsample_logits
from unsamv2_engine.train.clicks import batch_correction_clicks, batch_initial_clicks
from unsamv2_engine.train.losses import LOSS_WEIGHTS, actual_iou, dice_loss, objectness_loss, sigmoid_focal_loss

TERMS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")


def _per_mask(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Focal, dice and actual IoU (each ``[K, M]``) for ``logits`` ``[K, M, S, S]`` vs ``targets`` ``[K, 1, S, S]``."""
    k, m = logits.shape[:2]
    flat = logits.reshape(k * m, 1, *logits.shape[-2:])
    tgt = targets.expand(-1, m, -1, -1).reshape(k * m, 1, *logits.shape[-2:])
    focal = sigmoid_focal_loss(flat, tgt).reshape(k, m)
    dice = dice_loss(flat, tgt).reshape(k, m)
    with torch.no_grad():
        iou = actual_iou(flat, tgt).reshape(k, m)
    return focal, dice, iou


def _innermost_clicks(coords: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, pred: torch.Tensor | None,
                      chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the clicks of the ``chosen`` targets (bool ``[K]``) by the RITM evaluator's click.

    ``coords`` float ``[K, 1, 2]`` (x, y) and ``labels`` int ``[K, 1]`` are the uniform clicks of this pass;
    ``masks`` bool ``[K, S, S]`` the targets; ``pred`` bool ``[K, S, S]`` the previous prediction (None on
    the first pass: the innermost pixel of the target).
    """
    from unsamv2_engine.evaluate.clicker import next_click

    coords, labels = coords.clone(), labels.clone()
    for k in torch.nonzero(chosen).flatten().tolist():
        gt = masks[k].cpu().numpy()
        previous = pred[k].cpu().numpy() if pred is not None else np.zeros_like(gt)
        click = next_click(gt, previous)
        coords[k, 0, 0], coords[k, 0, 1] = float(click.col), float(click.row)
        labels[k, 0] = click.label
    return coords, labels


def interaction_loss(sam: nn.Module, pixels: torch.Tensor, masks: torch.Tensor, *, correction_clicks: int,
                     generator: torch.Generator, innermost: float = 0.0) -> dict[str, torch.Tensor | float]:
    """The SAM loss of one simulated interaction per target (see the module docstring).

    ``innermost``: fraction of targets (drawn with ``generator``) whose clicks follow the evaluator's rule
    (innermost pixel of the target, then of the largest error) instead of uniform sampling.

    Returns ``"loss"`` (scalar with graph; weights as :data:`LOSS_WEIGHTS`), the unweighted terms as
    floats, and ``"iou_first"``: the mean IoU of the best of the three first-click outputs (no grad).
    """
    features = encode_image(sam, pixels)
    size = tuple(masks.shape[-2:])
    targets = masks[:, None].float()
    coords, labels = batch_initial_clicks(masks, generator)
    evaluator_style = torch.rand(masks.shape[0], generator=generator) < innermost
    if bool(evaluator_style.any()):
        coords, labels = _innermost_clicks(coords, labels, masks, None, evaluator_style)
    coords, labels = coords.to(pixels.device), labels.to(pixels.device)
    terms: dict[str, torch.Tensor] = {}
    mask_input = None
    best_first = 0.0
    prev_high: torch.Tensor | None = None  # the chosen high-res logits of the previous pass
    for step in range(1 + correction_clicks):
        if step:
            new_c, new_l = batch_correction_clicks(prev_high.detach() > 0, masks, generator)
            if bool(evaluator_style.any()):
                new_c, new_l = _innermost_clicks(new_c, new_l, masks, prev_high.detach() > 0, evaluator_style)
            coords = torch.cat([coords, new_c.to(coords.device)], 1)
            labels = torch.cat([labels, new_l.to(labels.device)], 1)
        out = decode(sam, features, coords, labels, None, mask_input, return_sam_logits=True)
        low_all = out.sam_logits.float()  # [K, 4, s, s]
        iou_pred = out.iou_all.float()  # [K, 4]
        if step == 0:
            low, pred = low_all[:, 1:4], iou_pred[:, 1:4]
        else:
            low, pred = low_all[:, :1], iou_pred[:, :1]
        high = upsample_logits(low, size)
        focal, dice, iou = _per_mask(high, targets)
        combo = LOSS_WEIGHTS["loss_mask"] * focal + LOSS_WEIGHTS["loss_dice"] * dice
        best = combo.argmin(dim=1, keepdim=True)  # SAM: only the best of the candidates is supervised
        step_terms = {
            "loss_mask": focal.gather(1, best).mean(),
            "loss_dice": dice.gather(1, best).mean(),
            "loss_iou": (pred - iou).abs().sum(1).mean(),
            "loss_class": objectness_loss(out.object_score_logits.float(),
                                          torch.ones_like(iou[:, 0], dtype=torch.bool)).mean(),
        }
        for key, value in step_terms.items():
            terms[key] = value if key not in terms else terms[key] + value
        if step == 0:
            best_first = float(iou.max(dim=1).values.mean())
        chosen = pred.detach().argmax(dim=1)  # the output a user would get: highest predicted IoU
        rows = torch.arange(low.shape[0], device=low.device)
        prev_high = high[rows, chosen]
        mask_input = low[rows, chosen][:, None].detach()
    total = sum(LOSS_WEIGHTS[k] * terms[k] for k in TERMS)
    result: dict[str, torch.Tensor | float] = {"loss": total, "iou_first": best_first}
    result.update({k: float(terms[k].detach()) for k in TERMS})
    return result
