"""Settings of whole-image segmentation, with the authors' defaults and a CPU preset."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from unsamv2_engine.errors import InputError


@dataclass(frozen=True)
class AutoSettings:
    """Point grid, decoding and filtering (names and meanings as in sam2's automatic mask generator).

    ``pred_iou_thresh`` / ``stability_score_thresh`` of None follow the authors' per-granularity
    rule (docs/model-reference.md §3.2): g < 0.5 -> (0.65, 0.7), else (0.5, 0.7). A threshold of 0 keeps
    everything.
    """

    points_per_side: int = 64
    points_per_batch: int = 128
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_score_offset: float = 0.7
    mask_threshold: float = -1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_m2m: bool = True
    multimask_output: bool = True

    @classmethod
    def authors(cls) -> AutoSettings:
        """The UnSAMv2 whole-image evaluation settings (64x64 points, threshold -1, M2M, per-g filters)."""
        return cls()

    @classmethod
    def cpu(cls) -> AutoSettings:
        """A faster preset for CPU: 16x16 points, no M2M second pass, same filters (32x less decoder work)."""
        return cls(points_per_side=16, points_per_batch=32, use_m2m=False)

    @classmethod
    def preset(cls, name: str) -> AutoSettings:
        presets = {"authors": cls.authors, "cpu": cls.cpu}
        if name not in presets:
            raise InputError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    def with_(self, **changes) -> AutoSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def thresholds_for(self, granularity: float | None) -> tuple[float, float]:
        """(pred_iou_thresh, stability_score_thresh) used at this granularity."""
        per_g = (0.65, 0.7) if granularity is not None and granularity < 0.5 else (0.5, 0.7)
        iou = self.pred_iou_thresh if self.pred_iou_thresh is not None else per_g[0]
        stability = self.stability_score_thresh if self.stability_score_thresh is not None else per_g[1]
        return iou, stability

    def validate(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise InputError("points_per_side and points_per_batch must be at least 1")
        if self.crop_n_layers < 0:
            raise InputError("crop_n_layers must be >= 0")
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in (0, 1]")
        if not math.isfinite(self.mask_threshold):
            raise InputError(f"mask_threshold must be a finite number, got {self.mask_threshold!r}")
