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

from unsamv2_engine.nms import greedy_nms

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


def upstream_image_predictor(model: UnSAMv2Model, **kw: Any) -> SAM2ImagePredictor:
    """Upstream ``SAM2ImagePredictor`` on ``model.sam`` (keyword arguments passed through).

    For comparisons and benchmarks: on a plain SAM 2.1 model it is the authors' reference
    predictor. On an UnSAMv2 model it ignores the granularity module (it decodes SAM's own
    mask tokens, with the LoRA-adapted transformer).
    """
    ensure_torchvision_importable()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model.sam, **kw)
