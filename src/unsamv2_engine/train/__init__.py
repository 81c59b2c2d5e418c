"""Training utilities for UnSAMv2: SAM 2 style losses and click simulation (FACTS §4.3, §4.5).

Named ``train`` (never ``training``: sam2 installs a top-level package of that name).
"""

from __future__ import annotations

from .clicks import (batch_correction_clicks, batch_initial_clicks, sample_correction_click,
                     sample_point_in_mask)
from .losses import (LOSS_WEIGHTS, dice_loss, iou_l1_loss, objectness_loss, sigmoid_focal_loss,
                     unsamv2_loss)

__all__ = [
    "LOSS_WEIGHTS", "sigmoid_focal_loss", "dice_loss", "iou_l1_loss", "objectness_loss", "unsamv2_loss",
    "sample_point_in_mask", "sample_correction_click", "batch_initial_clicks", "batch_correction_clicks",
]
