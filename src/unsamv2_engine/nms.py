"""Greedy box non-maximum suppression with torchvision's semantics, in plain torch.

The one box NMS of the engine: whole-image segmentation uses it per crop and across crops, and
:mod:`unsamv2_engine.upstream` registers it as ``torchvision::nms`` where the installed
torchvision wheel cannot load its compiled ops.
"""

from __future__ import annotations

import torch

__all__ = ["greedy_nms"]


def greedy_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics, in plain torch.

    ``dets`` ``[N, 4]`` (x1, y1, x2, y2), ``scores`` ``[N]``. Boxes are visited by decreasing
    score (stable for ties); a box is dropped when its IoU with an already kept box is
    strictly greater than ``iou_threshold``. Returns the int64 indices of the kept boxes in
    decreasing score order. The arithmetic follows torchvision's CPU kernel (areas without
    +1, IoU in the boxes' dtype, ``inter / (area_i + area_j - inter)``); the tests check it
    against a brute-force NMS. Cost: one vectorised IoU row per kept box.
    """
    _check_nms_inputs(dets, scores)
    if dets.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = dets[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    remaining = torch.arange(boxes.shape[0], device=dets.device)
    kept: list[torch.Tensor] = []
    while remaining.numel() > 0:
        i, rest = remaining[0], remaining[1:]
        kept.append(i)
        iou = _iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest])
        remaining = rest[~(iou > iou_threshold)]  # NaN IoU (empty boxes) keeps, as torchvision
    return order[torch.stack(kept)]


def _check_nms_inputs(dets: torch.Tensor, scores: torch.Tensor) -> None:
    if dets.dim() != 2 or dets.shape[1] != 4:
        raise RuntimeError(f"boxes should be a [N, 4] tensor, got shape {tuple(dets.shape)}")
    if scores.dim() != 1 or scores.shape[0] != dets.shape[0]:
        raise RuntimeError(f"scores should be a [N] tensor matching boxes, got shape {tuple(scores.shape)}")


def _iou_one_to_many(box: torch.Tensor, area: torch.Tensor, boxes: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """IoU of one box ``[4]`` with ``boxes`` ``[M, 4]``, as torchvision's CPU kernel computes it."""
    xx1 = torch.maximum(boxes[:, 0], box[0])
    yy1 = torch.maximum(boxes[:, 1], box[1])
    xx2 = torch.minimum(boxes[:, 2], box[2])
    yy2 = torch.minimum(boxes[:, 3], box[3])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    return inter / (area + areas - inter)
