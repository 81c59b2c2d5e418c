"""Point grids, crop boxes, mask boxes and box NMS, in torch (no torchvision ops)."""

from __future__ import annotations

import math

import numpy as np
import torch


def point_grid(n_per_side: int) -> np.ndarray:
    """``[n*n, 2]`` points (x, y) in [0, 1], cell centres of an n x n grid, row-major by y."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes ``[x0, y0, x1, y1]`` per layer: the whole image, then 2^i x 2^i overlapping crops."""
    h, w = image_hw
    short = min(h, w)
    boxes, layers = [[0, 0, w, h]], [0]
    for i in range(n_layers):
        per_side = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + w) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + h) / per_side))
        xs = [int((crop_w - overlap) * k) for k in range(per_side)]
        ys = [int((crop_h - overlap) * k) for k in range(per_side)]
        for x0 in xs:
            for y0 in ys:
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(i + 1)
    return boxes, layers


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` bool -> ``[N, 4]`` xyxy (inclusive max, as sam2); empty masks give zeros."""
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device, dtype=torch.long)
    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = (rows * ar_h).amax(dim=1)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    right = (cols * ar_w).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    empty = (right < left) | (bottom < top)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    return boxes * (~empty).unsqueeze(1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes ``[N, 4]`` x ``[M, 4]`` (area = (x1-x0)(y1-y0), as torchvision)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices kept, by decreasing score (torchvision ``nms`` semantics: drop IoU > threshold)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    n = order.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0) -> torch.Tensor:
    """Boxes (in crop coordinates) touching the crop edge where that edge is not the image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    b = boxes.float() + torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=boxes.device)
    near_crop = torch.isclose(b, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(b, image[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)
