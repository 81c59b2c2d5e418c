"""UnSAMv2 training loss: upstream SAM 2 ``MultiStepMultiMasksAndIous`` (FACTS §4.5).

Per step and per object: sigmoid focal (weight 20), dice (1), L1 between predicted and actual IoU (1),
and objectness BCE (1). Mask, dice and IoU terms count only for objects whose target is non-empty.
Terms are summed over the interactive steps (1 initial click + 3 corrections) and over objects,
then divided by the number of objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_WEIGHTS: dict[str, float] = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}

StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``[N, 1, H, W]`` (or ``[N, H, W]``) to ``[N, H*W]``."""
    return x.reshape(x.shape[0], -1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, averaged over pixels per object (SAM 2 convention).

    Parameters
    ----------
    logits : torch.Tensor
        Mask logits, shape ``[N, 1, H, W]``.
    targets : torch.Tensor
        Binary targets (float 0/1), shape ``[N, 1, H, W]``.
    alpha : float
        Weight of the positive class; ``alpha < 0`` disables the weighting.
    gamma : float
        Focusing exponent on ``(1 - p_t)``.

    Returns
    -------
    torch.Tensor
        Per-object loss, shape ``[N]``.
    """
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _flat(loss).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss on sigmoid probabilities: ``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)``.

    Parameters
    ----------
    logits : torch.Tensor
        Mask logits, shape ``[N, 1, H, W]``.
    targets : torch.Tensor
        Binary targets (float 0/1), shape ``[N, 1, H, W]``.

    Returns
    -------
    torch.Tensor
        Per-object loss, shape ``[N]``.
    """
    p = _flat(logits.sigmoid())
    t = _flat(targets.to(logits.dtype))
    num = 2 * (p * t).sum(-1)
    den = p.sum(-1) + t.sum(-1)
    return 1 - (num + 1) / (den + 1)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised prediction ``logits > 0`` against ``targets > 0``.

    Parameters
    ----------
    logits : torch.Tensor
        Mask logits, shape ``[N, 1, H, W]``.
    targets : torch.Tensor
        Binary targets, shape ``[N, 1, H, W]``.

    Returns
    -------
    torch.Tensor
        IoU per object, shape ``[N]`` (0 when the union is empty: union clamped to >= 1, as upstream).
    """
    pred = _flat(logits) > 0
    gt = _flat(targets) > 0
    inter = (pred & gt).sum(-1).to(logits.dtype)
    union = (pred | gt).sum(-1).to(logits.dtype)
    return inter / union.clamp(min=1.0)


def iou_l1_loss(pred_iou: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L1 distance between the predicted IoU and the actual IoU of the binarised mask.

    Parameters
    ----------
    pred_iou : torch.Tensor
        Predicted IoU, shape ``[N]`` (``[N, 1]`` accepted).
    logits : torch.Tensor
        Mask logits, shape ``[N, 1, H, W]``; no gradient flows through the actual IoU.
    targets : torch.Tensor
        Binary targets, shape ``[N, 1, H, W]``.

    Returns
    -------
    torch.Tensor
        Per-object loss, shape ``[N]``.
    """
    with torch.no_grad():
        iou = actual_iou(logits, targets)
    return (pred_iou.reshape(-1) - iou.to(pred_iou.dtype)).abs()


def objectness_loss(object_score_logits: torch.Tensor, target_present: torch.Tensor) -> torch.Tensor:
    """Objectness loss: binary cross-entropy with logits (focal with γ 0 and α −1).

    Parameters
    ----------
    object_score_logits : torch.Tensor
        Object-presence logits, shape ``[N, 1]``.
    target_present : torch.Tensor
        Whether each target is non-empty (bool or float 0/1), shape ``[N]``.

    Returns
    -------
    torch.Tensor
        Per-object loss, shape ``[N]``.
    """
    logit = object_score_logits.reshape(-1)
    return F.binary_cross_entropy_with_logits(logit, target_present.reshape(-1).to(logit.dtype), reduction="none")


def unsamv2_loss(step_outputs: Sequence[StepOutput], targets: torch.Tensor,
                 num_objects: float | None = None,
                 weights: dict[str, float] | None = None) -> dict[str, object]:
    """Multi-step UnSAMv2 loss (upstream ``MultiStepMultiMasksAndIous`` with the UnSAMv2 weights).

    Parameters
    ----------
    step_outputs : sequence of tuple
        One ``(logits [N, 1, H, W], pred_iou [N], object_logits [N, 1])`` per interactive step.
    targets : torch.Tensor
        Binary targets (float 0/1), shape ``[N, 1, H, W]``, shared by all steps.
    num_objects : float, optional
        Normaliser; defaults to ``N`` (clamped to at least 1).
    weights : dict, optional
        Term weights; defaults to :data:`LOSS_WEIGHTS` (mask 20, dice 1, iou 1, class 1).

    Returns
    -------
    dict
        ``"loss"``: weighted total, a scalar tensor carrying the graph; ``"loss_mask"``, ``"loss_dice"``,
        ``"loss_iou"``, ``"loss_class"``: unweighted terms summed over steps and normalised, as floats;
        ``"num_objects"``: the normaliser used.
    """
    if len(step_outputs) == 0:
        raise ValueError("step_outputs is empty")
    w = dict(LOSS_WEIGHTS if weights is None else weights)
    n = targets.shape[0]
    norm = float(max(float(n if num_objects is None else num_objects), 1.0))
    targets = targets.float()
    present = _flat(targets).gt(0).any(-1)
    present_f = present.float()
    terms = {k: None for k in ("loss_mask", "loss_dice", "loss_iou", "loss_class")}

    def _acc(key: str, value: torch.Tensor) -> None:
        terms[key] = value if terms[key] is None else terms[key] + value

    for logits, pred_iou, obj_logits in step_outputs:
        if logits.shape[0] != n:
            raise ValueError(f"logits have {logits.shape[0]} objects, targets {n}")
        tgt = targets.to(logits.dtype)
        pf = present_f.to(logits.dtype)
        _acc("loss_mask", (sigmoid_focal_loss(logits, tgt) * pf).sum() / norm)
        _acc("loss_dice", (dice_loss(logits, tgt) * pf).sum() / norm)
        _acc("loss_iou", (iou_l1_loss(pred_iou, logits, tgt) * pf.to(pred_iou.dtype)).sum() / norm)
        _acc("loss_class", objectness_loss(obj_logits, present).sum() / norm)

    total = sum(w[k] * terms[k] for k in terms)
    out: dict[str, object] = {"loss": total}
    out.update({k: float(v.detach()) for k, v in terms.items()})
    out["num_objects"] = norm
    return out
