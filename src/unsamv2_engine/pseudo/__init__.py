"""Pseudo-label (divide-and-conquer) helpers, clean-room from UNSAMV2_FACTS §5.3.

* :mod:`.merging` -- conquer-stage iterative merging of patch features (§5.3-4),
  coverage filter and patch-to-pixel mask upsampling (§5.3-5).
* :mod:`.nms` -- the authors' windowed mask NMS and protected NMS (§5.3-6/7).

The granularity score of §5.5 lives in :mod:`unsamv2_engine.granularity_scores`.
"""

from .merging import coverage, iterative_merge, upsample_mask
from .nms import mask_iou, protected_nms, windowed_mask_nms

__all__ = [
    "coverage",
    "iterative_merge",
    "mask_iou",
    "protected_nms",
    "upsample_mask",
    "windowed_mask_nms",
]
