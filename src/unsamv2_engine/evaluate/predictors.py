"""What the interaction loop needs from a model, and the adapter for :class:`~unsamv2_engine.session.ImageSession`.

A predictor embeds one image (:meth:`Predictor.set_image`) and decodes a mask from points at a
granularity, with the previous low-resolution logits as ``mask_input``. Two optional methods:

* ``candidates(points_xy, labels, mask_input)``: SAM's three multimask outputs (``sam-oracle3``);
* ``sweep(points_xy, labels, granularities)``: one mask per granularity for one prompt (the
  area-vs-g and nestedness analysis; falls back to one :meth:`Predictor.predict` per g).

This module imports numpy only; :class:`SessionPredictor` imports torch when it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from unsamv2_engine.model.build import UnSAMv2Model

__all__ = ["Predictor", "PredictorOutput", "SessionPredictor", "has_candidates", "sweep_masks"]


class PredictorOutput(NamedTuple):
    """One decoded mask: bool ``[H, W]``, low-res logits ``[256, 256]`` (or None), predicted score."""

    mask: np.ndarray
    low_res_logits: np.ndarray | None
    score: float


@runtime_checkable
class Predictor(Protocol):
    """The interface the evaluation drives (see the module docstring)."""

    def set_image(self, image: np.ndarray) -> None:
        """Embed one 2-D image (grey or RGB, any dtype)."""

    def predict(self, points_xy: np.ndarray, labels: np.ndarray, granularity: float | None,
                mask_input: np.ndarray | None) -> PredictorOutput:
        """Decode one mask.

        Parameters
        ----------
        points_xy : np.ndarray
            float ``[N, 2]`` (x, y) pixels.
        labels : np.ndarray
            int ``[N]``, 1 positive, 0 negative.
        granularity : float or None
            g in [0.1, 1]; None: the model's single-mask output without granularity.
        mask_input : np.ndarray or None
            The previous prediction's low-res logits.
        """


def has_candidates(predictor: object) -> bool:
    """Whether ``predictor`` offers SAM's multimask candidates (``candidates`` method)."""
    return callable(getattr(predictor, "candidates", None))


def sweep_masks(predictor: Predictor, points_xy: np.ndarray, labels: np.ndarray,
                granularities: Sequence[float]) -> np.ndarray:
    """Bool ``[G, H, W]``: the mask at each granularity for one prompt (no mask input).

    Uses ``predictor.sweep`` when it exists (one batched pass), else one ``predict`` per g.
    """
    sweep = getattr(predictor, "sweep", None)
    if callable(sweep):
        return np.asarray(sweep(points_xy, labels, list(granularities)), bool)
    return np.stack([np.asarray(predictor.predict(points_xy, labels, float(g), None)[0], bool)
                     for g in granularities])


class SessionPredictor:
    """:class:`Predictor` on an UnSAMv2 or plain SAM 2.1 model through an ``ImageSession``.

    Parameters
    ----------
    model : UnSAMv2Model
        A loaded model (``unsamv2_engine.model``).
    mask_threshold : float
        Logits above it are foreground. The UnSAMv2 evaluation uses -1 (its
        ``SAM2ImagePredictor(mask_threshold=-1)``); GraCo's SAM path and the interactive tools use 0.
        Record it: it moves NoC.

    Notes
    -----
    * With a granularity, :meth:`predict` is ``ImageSession.predict`` (a plain SAM 2.1 model
      then picks one of its three candidates by area, see ``session.sam_candidate_for_granularity``).
    * With ``granularity=None`` on a plain SAM 2.1 model, :meth:`predict` returns SAM's
      single-mask output (mask token 0, ``multimask_output=False``), the ``sam-single`` baseline.
    * :meth:`candidates` (plain SAM 2.1 only) returns mask tokens 1-3, SAM's multimask outputs.
    """

    def __init__(self, model: UnSAMv2Model, *, mask_threshold: float = -1.0) -> None:
        from unsamv2_engine.session import ImageSession

        self.model = model
        self.mask_threshold = float(mask_threshold)
        self.session = ImageSession(model, mask_threshold=self.mask_threshold)

    @property
    def has_granularity(self) -> bool:
        return bool(self.model.has_granularity)

    def describe(self) -> dict[str, Any]:
        """What to record with the results."""
        info = self.model.info
        return {"predictor": "SessionPredictor", "model": info.label, "model_family": info.family,
                "model_size": info.size, "has_granularity": self.has_granularity,
                "mask_threshold": self.mask_threshold, "device": str(self.model.device)}

    def set_image(self, image: np.ndarray) -> None:
        self.session.set_image(image)

    def predict(self, points_xy: np.ndarray, labels: np.ndarray, granularity: float | None,
                mask_input: np.ndarray | None) -> PredictorOutput:
        if granularity is None and not self.has_granularity:
            return self._sam_outputs(points_xy, labels, mask_input, single=True)[0]
        pred = self.session.predict(points_xy, labels, granularity, mask_input=mask_input)
        return PredictorOutput(pred.mask, pred.low_res_logits, pred.score)

    def candidates(self, points_xy: np.ndarray, labels: np.ndarray,
                   mask_input: np.ndarray | None) -> list[PredictorOutput]:
        """SAM's three multimask outputs (tokens 1-3), in token order; plain SAM 2.1 models only."""
        if self.has_granularity:
            raise ValueError("SAM's multimask candidates need a plain SAM 2.1 model; this model has a granularity "
                             "module (its LoRA changes SAM's own outputs). Evaluate the sam-* modes with the SAM 2.1 "
                             "base checkpoint.")
        return self._sam_outputs(points_xy, labels, mask_input, single=False)

    def sweep(self, points_xy: np.ndarray, labels: np.ndarray, granularities: Sequence[float]) -> np.ndarray:
        """Bool ``[G, H, W]`` masks of one prompt at several granularities (one batched pass)."""
        return self.session.sweep(points_xy, labels, list(granularities)).masks

    def _sam_outputs(self, points_xy: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None, *,
                     single: bool) -> list[PredictorOutput]:
        """SAM's mask token 0 (``single``) or tokens 1-3, decoded with ``decode(..., return_sam_logits=True)``."""
        import torch

        from unsamv2_engine.devices import inference_context
        from unsamv2_engine.model.decoding import clamp_low_res, decode, upsample_logits
        from unsamv2_engine.prompts import check_points

        session = self.session
        if session.features is None or session.image_hw is None:
            raise RuntimeError("no image set: call set_image(image) first")
        h, w = session.image_hw
        pts, lab = check_points(points_xy, labels, (h, w))
        size = self.model.image_size
        device = self.model.device
        coords = torch.from_numpy(pts * np.array([size / w, size / h], np.float32)).to(device)[None]
        lab_t = torch.from_numpy(lab).to(device)[None]
        mask_t = None
        if mask_input is not None:
            side = self.model.low_res_size  # 256 at 1024 px
            mask_t = torch.from_numpy(np.asarray(mask_input, np.float32).reshape(1, 1, side, side)).to(device)
        with inference_context(device):
            out = decode(self.model.sam, session.features, coords, lab_t, None, mask_t, return_sam_logits=True)
            tokens = [0] if single else [1, 2, 3]
            logits = out.sam_logits[0, tokens].float().unsqueeze(1)  # [T, 1, 256, 256]
            masks = (upsample_logits(logits, (h, w))[:, 0] > self.mask_threshold).cpu().numpy()
            low_res = clamp_low_res(logits)[:, 0].cpu().numpy()
            ious = out.iou_all[0, tokens].float().cpu().numpy()
        return [PredictorOutput(masks[i], low_res[i], float(ious[i])) for i in range(len(tokens))]
