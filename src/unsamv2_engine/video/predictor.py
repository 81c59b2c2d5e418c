"""Upstream ``SAM2VideoPredictor`` with the UnSAMv2 granularity token on every frame.

What is upstream's and what is ours:

* **Upstream, unchanged**: the inference-state layout, ``add_new_points_or_box``,
  ``propagate_in_video_preflight``, ``_run_single_frame_inference``, ``track_step``, memory attention
  (``_prepare_memory_conditioned_features``), the memory encoder (``_encode_new_memory``), object
  pointers, occlusion handling (``NO_OBJ_SCORE``), and every weight.
* **Ours** (three overrides):
  1. ``_forward_sam_heads`` builds the prompt tokens and runs the decoder with
     :func:`unsamv2_engine.model.decoding.decode`, exactly as the image path does: sparse tokens
     ``[points..., pad, gra]`` on prompted frames and ``[not-a-point, pad, gra]`` on propagated ones
     (docs/model-reference.md §3.3); the returned mask is the gra mask and the **object pointer comes from the
     gra output token** (§1.3). Everything after the decoder (occlusion gating, upsampling, object
     pointer) is upstream's code path, restated in :meth:`_finish_heads`.
  2. ``_run_single_frame_inference`` finds which object it runs for (upstream runs one object at a
     time, batch 1, and passes that object's output dict) and makes that object's g current for the
     decoder. Upstream stores no granularity anywhere: the state's ``granularity_per_obj`` (object
     index -> g) is ours. It also keeps the predicted IoU in the frame's output (``"iou"``).
  3. ``_get_image_feature`` embeds frames lazily from a :class:`~unsamv2_engine.video.frames.StackFrames`
     (our preprocessing, no JPEG folder) and keeps the last ``max_cached_frames`` embeddings in an LRU
     cache (upstream keeps only the last frame). The position encoding is the same for every frame and
     is kept once.

The predictor is a **view** of the model's ``sam`` module (:meth:`GranularityVideoPredictor.view_of`):
a second Python object sharing the very same submodules and parameters (no copy of any weight), with
the video-only settings upstream's ``build_sam2_video_predictor`` applies:
``binarize_mask_from_pts_for_mem_enc=True`` (the memory of a prompted frame encodes the mask the user
saw), ``fill_hole_area=0`` (upstream's 8 needs sam2's compiled ``_C`` extension, which is missing on
CPU-only installs and in the authors' own notebook run, where it was skipped with a warning),
``non_overlap_masks=False`` (overlaps are resolved when the label volume is painted).

Models without a granularity module (plain SAM 2.1): upstream's heads run unchanged, except on
prompted frames when a g is given, where g picks one of SAM's three candidate masks by area exactly as
:func:`unsamv2_engine.session.sam_candidate_for_granularity` does for images (the object pointer then
comes from that candidate's token); propagated frames are plain SAM 2 tracking.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.sam2_video_predictor import SAM2VideoPredictor

from unsamv2_engine.model.build import UnSAMv2Model
from unsamv2_engine.model.decoding import ImageFeatures, decode
from unsamv2_engine.session import sam_candidate_for_granularity
from unsamv2_engine.video.frames import StackFrames

__all__ = ["GranularityVideoPredictor"]


@dataclass
class _HeadsCall:
    """What one ``_run_single_frame_inference`` call passes to, and gets back from, the SAM heads."""

    granularity: float | None
    iou: torch.Tensor | None = None  # [B] predicted IoU of the returned mask


class GranularityVideoPredictor(SAM2VideoPredictor):
    """See the module docstring. Build with :meth:`view_of`, start with :meth:`init_frames_state`."""

    granularity_head: bool
    candidate_threshold: float

    @classmethod
    def view_of(cls, model: UnSAMv2Model, *, candidate_threshold: float = 0.0) -> GranularityVideoPredictor:
        """A video predictor sharing ``model.sam``'s modules and parameters (nothing is copied).

        candidate_threshold: logit threshold used to rank plain SAM's candidates by area.
        """
        view = cls.__new__(cls)
        view.__dict__.update(model.sam.__dict__)  # the same _modules/_parameters/_buffers dicts
        view.training = False
        view.fill_hole_area = 0
        view.non_overlap_masks = False
        view.clear_non_cond_mem_around_input = False
        view.add_all_frames_to_correct_as_cond = False
        view.binarize_mask_from_pts_for_mem_enc = True
        view.granularity_head = model.has_granularity
        view.candidate_threshold = float(candidate_threshold)
        view._heads_call = None
        return view

    @property
    def memory_reach(self) -> int:
        """How many frames back (in the tracking direction) memory attention can look at a non-prompted
        frame: the spatial memories and the object pointers. Older outputs can be dropped.
        """
        stride = max(1, int(self.memory_temporal_stride_for_eval))
        return max(int(self.num_maskmem) * stride + 2, int(self.max_obj_ptrs_in_encoder) + 1)

    # ------------------------------------------------------------------ state
    def init_frames_state(self, frames: StackFrames, *, offload_state_to_cpu: bool,
                          max_cached_frames: int) -> dict:
        """Upstream ``init_state`` for frames taken straight from an array (same keys, plus ours).

        Nothing is embedded here. Ours: ``max_cached_frames`` (LRU size of frame embeddings),
        ``granularity_per_obj`` (object index -> g) and ``frames_embedded`` (a counter).
        """
        if max_cached_frames < 1:
            raise ValueError(f"max_cached_frames must be at least 1, got {max_cached_frames}")
        device = self.device
        height, width = frames.frame_hw
        return {
            "images": frames,
            "num_frames": frames.n_frames,
            "offload_video_to_cpu": True,  # frames stay in the caller's array until embedded
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": height,
            "video_width": width,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": OrderedDict(),
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            "max_cached_frames": int(max_cached_frames),
            "granularity_per_obj": {},
            "frames_embedded": 0,
        }

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        cache: OrderedDict = inference_state["cached_features"]
        constants = inference_state["constants"]
        fpn = cache.get(frame_idx)
        if fpn is None:
            frames: StackFrames = inference_state["images"]
            pixels = frames.pixels(frame_idx, self.image_size, inference_state["device"])
            backbone_out = self.forward_image(pixels)
            constants.setdefault("vision_pos_enc", backbone_out["vision_pos_enc"])
            fpn = backbone_out["backbone_fpn"]
            cache[frame_idx] = fpn
            inference_state["frames_embedded"] += 1
            while len(cache) > inference_state["max_cached_frames"]:
                cache.popitem(last=False)
        else:
            cache.move_to_end(frame_idx)
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in fpn],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in constants["vision_pos_enc"]],
        }
        # upstream returns the preprocessed image first; no caller uses it
        return (None,) + self._prepare_backbone_features(expanded)

    # ------------------------------------------------------------------ per-object granularity
    @staticmethod
    def _object_index(inference_state: dict, output_dict: dict) -> int:
        for obj_idx, obj_output_dict in inference_state["output_dict_per_obj"].items():
            if obj_output_dict is output_dict:
                return obj_idx
        raise RuntimeError("frame inference on an output dict that belongs to no object")

    def _run_single_frame_inference(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame,
                                    point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        obj_idx = self._object_index(inference_state, output_dict)
        call = _HeadsCall(inference_state["granularity_per_obj"].get(obj_idx))
        self._heads_call = call
        try:
            compact_out, pred_masks = super()._run_single_frame_inference(
                inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame, point_inputs, mask_inputs,
                reverse, run_mem_encoder, prev_sam_mask_logits)
        finally:
            self._heads_call = None
        compact_out["iou"] = call.iou
        return compact_out, pred_masks

    # ------------------------------------------------------------------ SAM heads
    def _forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None, high_res_features=None,
                           multimask_output=False):
        call = self._heads_call
        g = call.granularity if call is not None else None
        if not self.granularity_head and (g is None or point_inputs is None):
            outputs = super()._forward_sam_heads(backbone_features, point_inputs, mask_inputs, high_res_features,
                                                 multimask_output)
            if call is not None:
                ious = outputs[2]
                call.iou = ious.max(dim=1).values if multimask_output else ious[:, 0]
            return outputs

        batch = backbone_features.size(0)
        device = backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # a propagated frame: one not-a-point, as upstream (the prompt encoder adds the pad)
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        mask_prompt = self._mask_prompt(mask_inputs)

        if self.granularity_head:
            features = ImageFeatures(backbone_features, (high_res_features[0], high_res_features[1]))
            gra = None if g is None else torch.full((batch, 1), float(g), dtype=torch.float32, device=device)
            out = decode(self, features, coords, labels, gra, mask_prompt)
            low_res, iou, token = out.low_res_logits, out.iou_all[:, 0], out.token_out[:, 0]
            object_score_logits = out.object_score_logits
        else:
            low_res, iou, token, object_score_logits = self._plain_candidate(
                backbone_features, coords, labels, mask_prompt, high_res_features, g)
        if call is not None:
            call.iou = iou.float()
        return self._finish_heads(low_res, iou, token, object_score_logits)

    def _mask_prompt(self, mask_inputs: torch.Tensor | None) -> torch.Tensor | None:
        """Upstream's dense mask prompt: resized to the prompt encoder's mask input size if needed."""
        if mask_inputs is None or mask_inputs.shape[-2:] == self.sam_prompt_encoder.mask_input_size:
            return mask_inputs
        return F.interpolate(mask_inputs.float(), size=self.sam_prompt_encoder.mask_input_size,
                             align_corners=False, mode="bilinear", antialias=True)

    def _plain_candidate(self, backbone_features, coords, labels, mask_prompt, high_res_features, g):
        """Plain SAM on a prompted frame: the candidate that g selects by area (as ImageSession)."""
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        masks, ious, tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            repeat_image=False, high_res_features=high_res_features)
        areas = (masks.float() > self.candidate_threshold).flatten(2).sum(2)  # [B, 3]
        rank = sam_candidate_for_granularity(g)
        pick = torch.argsort(areas, dim=1, stable=True)[:, rank]  # [B]
        rows = torch.arange(masks.shape[0], device=masks.device)
        token = tokens[rows, pick] if tokens.shape[1] > 1 else tokens[:, 0]
        return masks[rows, pick].unsqueeze(1), ious[rows, pick], token, object_score_logits

    def _finish_heads(self, low_res, iou, token, object_score_logits):
        """Upstream ``_forward_sam_heads`` after its decoder call (single-mask case), unchanged in effect."""
        if self.pred_obj_scores:
            is_obj_appearing = object_score_logits > 0
            low_res = torch.where(is_obj_appearing[:, None, None], low_res, NO_OBJ_SCORE)
        low_res = low_res.float()
        high_res = F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        obj_ptr = self.obj_ptr_proj(token)
        if self.pred_obj_scores:
            if self.soft_no_obj_ptr:
                lambda_is_obj_appearing = object_score_logits.sigmoid()
            else:
                lambda_is_obj_appearing = is_obj_appearing.float()
            if self.fixed_no_obj_ptr:
                obj_ptr = lambda_is_obj_appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - lambda_is_obj_appearing) * self.no_obj_ptr
        ious = iou.float().unsqueeze(1)
        return low_res, high_res, ious, low_res, high_res, obj_ptr, object_score_logits
