"""Whole-image segmentation at a granularity, and across several granularities.

The semantics are those of sam2's ``SAM2AutomaticMaskGenerator`` as the authors use it (point
grid, predicted-IoU filter, stability score at ``mask_threshold +- offset`` on full-resolution
logits, box NMS per crop then across crops, optional M2M second pass, optional small-region
clean-up). What differs is only how much work is done:

* filters that need no pixels (predicted IoU) run before any upsampling;
* full-resolution logits exist only for a few candidates at a time (chunks), never for a whole
  batch; what survives is kept as 256x256 logits and upsampled again only if it survives NMS;
* RLE encoding happens once, for the final masks, in C (pycocotools);
* the decoder shares its first layer's image-side work across the prompt batch
  (:mod:`unsamv2_engine.model.two_way`), and one image embedding and one grid serve every
  granularity of a hierarchy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sam2.utils.amg import batched_mask_to_box, build_point_grid, generate_crop_boxes, is_box_near_crop_edge

from unsamv2_engine.automatic.settings import AutoSettings
from unsamv2_engine.devices import inference_context
from unsamv2_engine.errors import CancelledError, PromptError
from unsamv2_engine.model.decoding import clamp_low_res, decode, returned_iou
from unsamv2_engine.nms import greedy_nms
from unsamv2_engine.prompts import check_granularity
from unsamv2_engine.session import ImageSession

Progress = Callable[[int, int], None]
UPSAMPLE_CHUNK = 16


class Cancelled(CancelledError):
    """Raised when the caller's cancel check returns True between batches."""


@dataclass
class AutoMasks:
    """Instance masks found at one granularity, by decreasing score.

    masks bool ``[N, H, W]``; scores (predicted IoU), stability ``[N]``; boxes ``[N, 4]`` xyxy
    pixels (inclusive); points ``[N, 2]`` the grid point (x, y) that produced each mask.
    """

    granularity: float | None
    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    settings: AutoSettings = field(default_factory=AutoSettings)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).sum(axis=1) if len(self.masks) else np.zeros(0, np.int64)

    def label_image(self) -> np.ndarray:
        """Instance labels ``[H, W]`` (1..N in this object's order); larger masks are painted first,
        so a smaller mask lying on a larger one stays visible.
        """
        labels = np.zeros(self.masks.shape[1:], np.uint32 if len(self) > 65535 else np.uint16)
        for i in np.argsort(-self.areas, kind="stable"):
            labels[self.masks[i]] = i + 1
        return labels


@dataclass
class _Candidates:
    """Survivors of one crop: 256x256 logits and their measures, in crop coordinates."""

    logits: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    stability: list[torch.Tensor] = field(default_factory=list)
    boxes: list[torch.Tensor] = field(default_factory=list)
    points: list[torch.Tensor] = field(default_factory=list)

    def cat(self) -> dict[str, torch.Tensor]:
        if not self.scores:
            return {}
        return {"logits": torch.cat(self.logits), "scores": torch.cat(self.scores),
                "stability": torch.cat(self.stability), "boxes": torch.cat(self.boxes),
                "points": torch.cat(self.points)}


class AutomaticSegmenter:
    """Segment a whole image at one or several granularities with an UnSAMv2 (or SAM 2.1) model.

    decode_batch: prompts per decoder call (None: 8 on CPU, where bigger batches fall out of
    cache, else ``settings.points_per_batch``).
    """

    def __init__(self, model, settings: AutoSettings | None = None, *, decode_batch: int | None = None) -> None:
        self.model = model
        self.settings = settings or AutoSettings.authors()
        self.settings.validate()
        device = model.device.type
        self.decode_batch = decode_batch or (8 if device == "cpu" else self.settings.points_per_batch)
        self.session = ImageSession(model, mask_threshold=self.settings.mask_threshold)

    # ------------------------------------------------------------------ public
    def generate(self, image: np.ndarray, granularity: float | None, *, progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None, contrast_limits=None, features=None) -> AutoMasks:
        """All objects of ``image`` at ``granularity`` (None: no granularity token)."""
        return self.generate_levels(image, [granularity], progress=progress, cancel=cancel,
                                    contrast_limits=contrast_limits, features=features)[0]

    def generate_levels(self, image: np.ndarray, granularities: Sequence[float | None], *,
                        progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                        contrast_limits=None, features=None) -> list[AutoMasks]:
        """One :class:`AutoMasks` per granularity; each crop is embedded once for all levels.

        ``features`` = (ImageFeatures, (H, W)) of the whole image, computed earlier with the same
        model (e.g. by an :class:`~unsamv2_engine.session.ImageSession`), skips that embedding.
        """
        from unsamv2_engine.intensity import to_uint8_rgb

        levels = [check_granularity(g) for g in granularities]
        if not levels:
            raise PromptError("give at least one granularity")
        rgb = to_uint8_rgb(np.asarray(image), contrast_limits=contrast_limits)
        h, w = rgb.shape[:2]
        s = self.settings
        boxes, layer_ids = generate_crop_boxes((h, w), s.crop_n_layers, s.crop_overlap_ratio)
        grids = [build_point_grid(int(s.points_per_side / (s.crop_n_points_downscale_factor ** i)))
                 for i in range(s.crop_n_layers + 1)]
        total = sum(len(grids[layer]) for layer in layer_ids) * len(levels)
        done = [0]

        def tick(n: int) -> None:
            if cancel is not None and cancel():
                raise Cancelled("whole-image segmentation was cancelled")
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        per_level: list[list[dict[str, torch.Tensor]]] = [[] for _ in levels]
        for crop, layer in zip(boxes, layer_ids):
            x0, y0, x1, y1 = crop
            if features is not None and crop == [0, 0, w, h] and tuple(features[1]) == (h, w):
                self.session.set_features(*features)
            else:
                self.session.set_image(rgb[y0:y1, x0:x1])
            points = torch.from_numpy(grids[layer] * np.array([x1 - x0, y1 - y0])).float()
            for li, g in enumerate(levels):
                found = self._crop_candidates(points, g, crop, (h, w), tick)
                if found:
                    per_level[li].append(found)
        return [self._finish(parts, g, (h, w), boxes) for parts, g in zip(per_level, levels)]

    # ------------------------------------------------------------------ one crop, one granularity
    def _crop_candidates(self, points: torch.Tensor, g: float | None, crop: list[int], image_hw: tuple[int, int],
                         tick: Callable[[int], None]) -> dict[str, torch.Tensor]:
        s = self.settings
        device = self.model.device
        crop_hw = (crop[3] - crop[1], crop[2] - crop[0])
        iou_t, stab_t = s.thresholds_for(g)
        kept = _Candidates()
        with inference_context(device):
            for start in range(0, len(points), self.decode_batch):
                pts = points[start:start + self.decode_batch].to(device)
                logits, scores, pts_rep = self._decode_points(pts, g, crop_hw)
                keep = scores > iou_t if iou_t > 0 else torch.ones_like(scores, dtype=torch.bool)
                logits, scores, pts_rep = logits[keep], scores[keep], pts_rep[keep]
                for c in range(0, len(scores), UPSAMPLE_CHUNK):
                    self._measure(logits[c:c + UPSAMPLE_CHUNK], scores[c:c + UPSAMPLE_CHUNK],
                                  pts_rep[c:c + UPSAMPLE_CHUNK], crop, crop_hw, image_hw, stab_t, kept)
                tick(len(pts))
        found = kept.cat()
        if not found:
            return {}
        keep = greedy_nms(found["boxes"].float(), found["scores"], s.box_nms_thresh)
        found = {k: v[keep] for k, v in found.items()}
        offset = torch.tensor([crop[0], crop[1], crop[0], crop[1]])
        found["boxes"] = found["boxes"] + offset
        found["points"] = found["points"] + offset[:2]
        found["crop"] = torch.tensor([crop] * len(keep))
        return found

    def _decode_points(self, pts: torch.Tensor, g: float | None, crop_hw: tuple[int, int]):
        """Candidates of a point batch: logits ``[C, 1, 256, 256]``, scores ``[C]``, points ``[C, 2]``."""
        s = self.settings
        sam = self.model.sam
        h, w = crop_hw
        coords = (pts * torch.tensor([self.model.image_size / w, self.model.image_size / h], device=pts.device))
        coords = coords[:, None, :]
        labels = torch.ones(len(pts), 1, dtype=torch.int32, device=pts.device)
        features = self.session.features
        if self.model.has_granularity:
            gra = None if g is None else torch.full((len(pts), 1), g, device=pts.device)
            out = decode(sam, features, coords, labels, gra)
            logits, scores, reps = out.low_res_logits, returned_iou(out.iou_all, s.multimask_output), 1
        else:
            gra = None
            out = decode(sam, features, coords, labels, None, return_sam_logits=True)
            picks = slice(1, 4) if s.multimask_output else slice(0, 1)
            logits = out.sam_logits[:, picks].flatten(0, 1).unsqueeze(1)
            scores = out.iou_all[:, picks].flatten()
            reps = logits.shape[0] // len(pts)
        coords, labels = coords.repeat_interleave(reps, 0), labels.repeat_interleave(reps, 0)
        if s.use_m2m:
            gra_rep = None if gra is None else gra.repeat_interleave(reps, 0)
            out = decode(sam, features, coords, labels, gra_rep, clamp_low_res(logits.float()),
                         return_sam_logits=not self.model.has_granularity)
            logits = out.low_res_logits
            scores = returned_iou(out.iou_all, False)
        return logits.float(), scores.float(), pts.repeat_interleave(reps, 0)

    def _measure(self, logits, scores, pts, crop, crop_hw, image_hw, stab_t, kept: _Candidates) -> None:
        """Full-resolution stability, boxes and the crop-edge filter for a few candidates."""
        s = self.settings
        full = F.interpolate(logits, crop_hw, mode="bilinear", align_corners=False)[:, 0]
        inter = (full > s.mask_threshold + s.stability_score_offset).flatten(1).sum(1)
        union = (full > s.mask_threshold - s.stability_score_offset).flatten(1).sum(1)
        stability = inter.float() / union.float()
        binary = full > s.mask_threshold
        keep = stability >= stab_t if stab_t > 0 else torch.ones_like(stability, dtype=torch.bool)
        boxes = batched_mask_to_box(binary)
        h, w = image_hw
        keep &= ~is_box_near_crop_edge(boxes, crop, [0, 0, w, h])
        if keep.any():
            kept.logits.append(clamp_low_res(logits[keep]).to(torch.float16 if logits.is_cuda else torch.float32).cpu())
            kept.scores.append(scores[keep].cpu())
            kept.stability.append(stability[keep].cpu())
            kept.boxes.append(boxes[keep].cpu())
            kept.points.append(pts[keep].cpu())

    # ------------------------------------------------------------------ across crops
    def _finish(self, parts: list[dict[str, torch.Tensor]], g: float | None, image_hw: tuple[int, int],
                boxes: list[list[int]]) -> AutoMasks:
        s = self.settings
        h, w = image_hw
        if not parts:
            return AutoMasks(g, np.zeros((0, h, w), bool), *(np.zeros(0, np.float32),) * 2,
                             np.zeros((0, 4), np.int64), np.zeros((0, 2), np.float32), s)
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if len(boxes) > 1:
            crop = data["crop"].float()
            crop_area = (crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1])
            keep = greedy_nms(data["boxes"].float(), 1.0 / crop_area, s.crop_nms_thresh)
            data = {k: v[keep] for k, v in data.items()}
        order = torch.argsort(data["scores"], descending=True, stable=True)
        data = {k: v[order] for k, v in data.items()}
        masks = np.zeros((len(order), h, w), bool)
        for i in range(len(order)):
            x0, y0, x1, y1 = data["crop"][i].tolist()
            full = F.interpolate(data["logits"][i:i + 1].float(), (y1 - y0, x1 - x0), mode="bilinear",
                                 align_corners=False)[0, 0]
            masks[i, y0:y1, x0:x1] = (full > s.mask_threshold).numpy()
        result = AutoMasks(g, masks, data["scores"].numpy(), data["stability"].numpy(), data["boxes"].numpy(),
                           data["points"].numpy(), s)
        if s.min_mask_region_area > 0:
            from unsamv2_engine.automatic.cleanup import remove_small_regions_all

            result = remove_small_regions_all(result, s.min_mask_region_area, s.box_nms_thresh)
        return result
