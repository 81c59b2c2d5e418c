"""Access to the upstream ``sam2`` predictor classes, for comparisons and benchmarks only.

The engine never needs this module: it encodes and decodes with :mod:`unsamv2_engine.model`
and never imports torchvision. The equivalence tests and ``benchmarks/bench_interactive.py``
however compare against upstream ``SAM2ImagePredictor`` / ``SAM2AutomaticMaskGenerator``,
whose modules import torchvision (through ``sam2.utils.transforms``).

Where the installed torchvision wheel does not match the installed torch (a CUDA torchvision
beside a CPU torch, say), its compiled ops library fails to load and ``import torchvision``
dies with ``RuntimeError: operator torchvision::nms does not exist``: torchvision registers
fake (meta) kernels for ``nms`` and ``qnms`` unconditionally at import.
:func:`ensure_torchvision_importable` then defines those two operator schemas with
``torch.library`` (``nms`` with a pure-torch greedy implementation, so that
``torchvision.ops.nms`` / ``batched_nms`` work) before importing torchvision again.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from unsamv2_engine.model.build import UnSAMv2Model

# torchvision's own schemas: torchvision::nms(...) and torchvision::qnms(...) -> Tensor.
NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# Quantized NMS: only its schema is needed for torchvision's import (it registers a fake kernel
# for it); no kernel is provided, so calling it on quantized boxes raises.
QNMS_SCHEMA = NMS_SCHEMA
# Backends for which the pure-torch NMS is registered (it is device-agnostic).
NMS_DISPATCH_KEYS = ("CPU", "CUDA")

_fallback_installed = False


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


def _has_schema(name: str) -> bool:
    """Whether the operator ``torchvision::<name>`` is defined (by torchvision or by us)."""
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _install_nms_fallback() -> None:
    """Define ``torchvision::nms`` (pure torch, CPU/CUDA) and the ``torchvision::qnms`` schema."""
    global _fallback_installed
    if _fallback_installed:
        return
    if not _has_schema("nms"):
        torch.library.define("torchvision::nms", NMS_SCHEMA)
        for key in NMS_DISPATCH_KEYS:
            torch.library.impl("torchvision::nms", key)(greedy_nms)
    if not _has_schema("qnms"):
        torch.library.define("torchvision::qnms", QNMS_SCHEMA)
    _fallback_installed = True


def _forget_torchvision_modules() -> None:
    """Drop the half-imported torchvision submodules left in ``sys.modules`` by a failed import."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _allow_boxes_ops() -> None:
    """Let ``torchvision.ops.boxes`` call the fallback ``nms``.

    Its functions first assert that torchvision's compiled library loaded, which it did not;
    the check is replaced in that one module only (other torchvision ops keep refusing, and
    ``roi_align`` keeps its pure-python path).
    """
    import torchvision.ops.boxes as boxes

    boxes._assert_has_ops = lambda: None


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` (and so the upstream sam2 predictors) work; no-op if it already does.

    Only for comparisons with upstream; the engine itself never imports torchvision.
    """
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _forget_torchvision_modules()
    _install_nms_fallback()
    import torchvision  # noqa: F401,F811

    _allow_boxes_ops()


def upstream_image_predictor(model: "UnSAMv2Model", **kw: Any) -> "SAM2ImagePredictor":
    """Upstream ``SAM2ImagePredictor`` on ``model.sam`` (keyword arguments passed through).

    For comparisons and benchmarks: on a plain SAM 2.1 model it is the authors' reference
    predictor. On an UnSAMv2 model it ignores the granularity module (it decodes SAM's own
    mask tokens, with the LoRA-adapted transformer).
    """
    ensure_torchvision_importable()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model.sam, **kw)
