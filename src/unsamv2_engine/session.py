"""One image, one cached embedding, any number of prompts and granularities.

>>> session = ImageSession(model)
>>> session.set_image(image)                      # [H, W], [H, W, 3|4]; uint8, uint16, float ...
>>> pred = session.predict([[120, 80]], [1], 0.4)  # (x, y) pixels; 1 = positive
>>> pred.mask.shape == image.shape[:2]
>>> sweep = session.sweep([[120, 80]], [1], [0.1, 0.4, 0.7, 1.0])  # one batched decoder pass

Plain SAM 2.1 models (no granularity module) are served too: the granularity then picks one of
SAM's three candidate masks ordered by area (:func:`sam_candidate_for_granularity`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unsamv2_engine.devices import inference_context
from unsamv2_engine.errors import EngineError, ImageError
from unsamv2_engine.intensity import to_uint8_rgb
from unsamv2_engine.model.build import UnSAMv2Model
from unsamv2_engine.model.decoding import (
    DecoderOutput,
    ImageFeatures,
    clamp_low_res,
    decode,
    encode_image,
    returned_iou,
    upsampled_masks,
)
from unsamv2_engine.preprocess import preprocess_image
from unsamv2_engine.prompts import (
    PromptError,
    check_granularities,
    check_granularity,
    check_mask_threshold,
    check_points,
)

# Prompts per decoder call. The image side of the decoder's first layer is shared by the whole
# call (model/two_way.py); past that, on CPU, activations of more than two prompts fall out of
# cache. Measured on 2 cores, a 10-g sweep: batch 2 -> 1.55x faster than 10 calls, 5 -> 1.31x, 10 -> 1.00x.
DEFAULT_DECODE_BATCH = {"cpu": 2, "mps": 8, "cuda": 32}

# Plain SAM: g < 0.4 -> smallest of the three candidates, g < 0.7 -> middle, else largest.
SAM_CANDIDATE_EDGES = (0.4, 0.7)


@dataclass
class Prediction:
    """One decoded object.

    mask: bool ``[H, W]`` at the original resolution; low_res_logits: float32 ``[256, 256]``
    (clamped to +-32, feed back as ``mask_input``); score: the model's predicted IoU;
    object_score: objectness logit; granularity: the g used (None: no granularity token).
    """

    mask: np.ndarray
    low_res_logits: np.ndarray
    score: float
    object_score: float
    granularity: float | None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Sweep:
    """Masks of one prompt at several granularities: masks bool ``[G, H, W]``, logits ``[G, 256, 256]``,
    scores / object_scores / granularities ``[G]``, in the order requested.
    """

    granularities: np.ndarray
    masks: np.ndarray
    low_res_logits: np.ndarray
    scores: np.ndarray
    object_scores: np.ndarray

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).sum(axis=1)

    def __len__(self) -> int:
        return len(self.granularities)

    def __getitem__(self, i: int) -> Prediction:
        return Prediction(self.masks[i], self.low_res_logits[i], float(self.scores[i]), float(self.object_scores[i]),
                          float(self.granularities[i]))


def sam_candidate_for_granularity(g: float | None) -> int | None:
    """Index (0 smallest .. 2 largest by area) of the SAM candidate a granularity selects; None = best IoU."""
    if g is None:
        return None
    return int(np.searchsorted(SAM_CANDIDATE_EDGES, g, side="right"))


class ImageSession:
    """Interactive decoding on one image with a cached image embedding.

    mask_threshold: logits above it are foreground (0.0 as the authors' predictor; their
    evaluation uses -1.0). decode_batch_size: prompts per decoder call in a sweep (None: a
    per-device default, :data:`DEFAULT_DECODE_BATCH`). Opening a session folds LoRA into the
    decoder weights (exact in eval mode; ``model.sam.train()`` unfolds it).
    """

    def __init__(self, model: UnSAMv2Model, *, mask_threshold: float = 0.0,
                 decode_batch_size: int | None = None) -> None:
        self.model = model
        self.mask_threshold = check_mask_threshold(mask_threshold)
        if decode_batch_size is not None and decode_batch_size < 1:
            raise ValueError("decode_batch_size must be at least 1")
        self.decode_batch_size = decode_batch_size or DEFAULT_DECODE_BATCH.get(model.device.type, 8)
        if model.has_lora:
            model.merge_lora()
        self.features: ImageFeatures | None = None
        self.image_hw: tuple[int, int] | None = None

    # ------------------------------------------------------------------ image
    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    def set_image(self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None,
                  rgb: bool | None = None) -> None:
        """Embed a 2D image (grey, RGB or RGBA; any dtype, see :mod:`unsamv2_engine.intensity`).

        Singleton axes are dropped as the file reader does (``[H, W, 1]`` and ``[1, H, W]`` are 2D
        images). The previous embedding is forgotten first: if this call fails, the session has no
        image (and ``predict`` says so) rather than answering for the previous one.
        """
        self.reset()
        if isinstance(image, (str, bytes, os.PathLike)):
            raise ImageError(f"set_image takes the image's pixels (a numpy array), got the path {image!r}; read it "
                             "first: unsamv2_engine.io.read_image(path)")
        data = np.asarray(image)
        if data.dtype == object or data.ndim == 0:
            raise ImageError(f"set_image takes a 2D image array [H, W], [H, W, 3] or [H, W, 4], got "
                             f"{type(image).__name__}" + (f" of shape {data.shape}" if data.ndim else ""))
        if data.ndim == 3 and rgb is not True and (data.shape[0] == 1 or data.shape[-1] == 1):
            data = data[0] if data.shape[0] == 1 else data[..., 0]
        rgb8 = to_uint8_rgb(data, contrast_limits=contrast_limits, rgb=rgb)
        if min(rgb8.shape[:2]) < 2:
            raise ImageError(f"image of {rgb8.shape[1]}x{rgb8.shape[0]} pixels is too small to segment")
        device = self.model.device
        pixels = preprocess_image(rgb8, self.model.image_size, device)
        with inference_context(device):
            features = encode_image(self.model.sam, pixels)
        self.set_features(features, rgb8.shape[:2])

    def set_features(self, features: ImageFeatures, image_hw: tuple[int, int]) -> None:
        """Reuse an embedding computed earlier for an image of ``image_hw`` = (H, W)."""
        self.features = features
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))

    def reset(self) -> None:
        self.features = None
        self.image_hw = None

    # ------------------------------------------------------------------ decoding
    def predict(self, points: object, labels: object, granularity: float | None, *,
                mask_input: np.ndarray | None = None, multimask_output: bool = False, m2m: bool = False,
                mask_threshold: float | None = None) -> Prediction:
        """Decode one object.

        points ``[N, 2]`` (x, y) pixels of the original image; labels ``[N]`` 1/0;
        granularity in [0.1, 1] (None: no granularity token, the model's unconditioned mask);
        mask_input ``[256, 256]`` low-res logits of a previous prediction; multimask_output
        selects the returned score as the authors do (``max(iou[1:4])`` instead of ``iou[0]``);
        m2m runs the authors' second pass with the first pass's logits as mask input.
        """
        g = check_granularity(granularity)
        sweep = self._decode([g], points, labels, mask_input, multimask_output, m2m, mask_threshold)
        return sweep[0] if g is not None else Prediction(sweep.masks[0], sweep.low_res_logits[0],
                                                         float(sweep.scores[0]), float(sweep.object_scores[0]), None)

    def sweep(self, points: object, labels: object, granularities: Sequence[float], *, m2m: bool = False,
              mask_threshold: float | None = None) -> Sweep:
        """One mask per granularity for the same prompt, from one batched decoder pass."""
        return self._decode(check_granularities(granularities), points, labels, None, False, m2m, mask_threshold)

    # ------------------------------------------------------------------ internals
    def _require_image(self) -> tuple[ImageFeatures, tuple[int, int]]:
        if self.features is None or self.image_hw is None:
            raise EngineError("no image set: call set_image(image) first")
        return self.features, self.image_hw

    def _prompt_tensors(self, points: object, labels: object, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, (h, w) = self._require_image()
        pts, lab = check_points(points, labels, (h, w))
        scale = np.array([self.model.image_size / w, self.model.image_size / h], np.float32)
        device = self.model.device
        coords = torch.from_numpy(pts * scale).to(device).unsqueeze(0).expand(batch, -1, -1)
        return coords, torch.from_numpy(lab).to(device).unsqueeze(0).expand(batch, -1)

    def _mask_input_tensor(self, mask_input: np.ndarray | None, batch: int) -> torch.Tensor | None:
        if mask_input is None:
            return None
        m = np.asarray(mask_input, np.float32)
        side = self.model.low_res_size  # 256 at the usual 1024 px input
        if m.shape[-2:] != (side, side) or m.size != side * side:
            raise PromptError(f"mask_input must be the [{side}, {side}] low_res_logits of a prediction, got shape "
                              f"{m.shape}")
        t = torch.from_numpy(m.reshape(1, 1, side, side)).to(self.model.device)
        return t.expand(batch, -1, -1, -1)

    def _decode(self, granularities: list[float | None], points: object, labels: object,
                mask_input: np.ndarray | None, multimask_output: bool, m2m: bool,
                mask_threshold: float | None) -> Sweep:
        features, hw = self._require_image()
        threshold = self.mask_threshold if mask_threshold is None else check_mask_threshold(mask_threshold)
        device = self.model.device
        with inference_context(device):
            if self.model.has_granularity:
                step = self.decode_batch_size
                parts = [self._decode_granularity(features, granularities[i:i + step], points, labels, mask_input,
                                                  multimask_output, m2m) for i in range(0, len(granularities), step)]
                logits, scores, obj = (torch.cat(t) for t in zip(*parts))
            else:
                logits, scores, obj = self._decode_plain_sam(features, granularities, points, labels, mask_input,
                                                             threshold, m2m)
            masks = upsampled_masks(logits, hw, threshold)
            low_res = clamp_low_res(logits)[:, 0]
        gs = np.array([np.nan if g is None else g for g in granularities], np.float64)
        return Sweep(gs, masks.cpu().numpy(), low_res.float().cpu().numpy(), scores.float().cpu().numpy(),
                     obj.float().cpu().numpy())

    def _decode_granularity(self, features, granularities, points, labels, mask_input, multimask_output, m2m):
        batch = len(granularities)
        coords, lab = self._prompt_tensors(points, labels, batch)
        gra = None
        if granularities[0] is not None:
            gra = torch.tensor(granularities, dtype=torch.float32, device=coords.device).unsqueeze(1)
        out = decode(self.model.sam, features, coords, lab, gra, self._mask_input_tensor(mask_input, batch))
        if m2m:
            out = decode(self.model.sam, features, coords, lab, gra, clamp_low_res(out.low_res_logits).float())
            multimask_output = False
        logits = out.low_res_logits.float()
        return logits, returned_iou(out.iou_all.float(), multimask_output), out.object_score_logits[:, 0].float()

    def _decode_plain_sam(self, features, granularities, points, labels, mask_input, threshold, m2m):
        coords, lab = self._prompt_tensors(points, labels, 1)
        out: DecoderOutput = decode(self.model.sam, features, coords, lab, None,
                                    self._mask_input_tensor(mask_input, 1), return_sam_logits=True)
        candidates = out.sam_logits[0, 1:].float()  # [3, 256, 256]
        ious = out.iou_all[0, 1:].float()
        by_area = torch.argsort((candidates > threshold).flatten(1).sum(1), stable=True)
        picks = [int(torch.argmax(ious)) if g is None else int(by_area[sam_candidate_for_granularity(g)])
                 for g in granularities]
        logits = candidates[picks].unsqueeze(1)
        scores = ious[picks]
        if m2m:
            refined = decode(self.model.sam, features, coords.expand(len(picks), -1, -1), lab.expand(len(picks), -1),
                             None, clamp_low_res(logits), return_sam_logits=True)
            logits, scores = refined.sam_logits[:, :1].float(), refined.iou_all[:, 0].float()
        obj = out.object_score_logits[0, 0].float().expand(len(picks))
        return logits, scores, obj
