"""Plain data of propagation: what the caller prompts and what comes back (numpy only, no torch).

The protocol (:mod:`unsamv2_engine.protocol`) carries these objects unchanged between a front end and
the engine, so this module must stay importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unsamv2_engine.errors import PromptError

__all__ = ["DEFAULT_MASK_THRESHOLD", "DIRECTIONS", "ObjectPrompt", "Propagation", "check_direction"]

#: "both": forward from each object's first prompted slice to the end, then backward from that slice
#: to slice 0; "forward": only the first part; "backward": from each object's last prompted slice to 0.
DIRECTIONS = ("both", "forward", "backward")

#: Logits above this are foreground on every slice. The authors' video notebook binarises at -1.0
#: (their image predictor at 0.0); -1.0 gives slightly larger masks than 0.0.
DEFAULT_MASK_THRESHOLD = -1.0


def check_direction(direction: object) -> str:
    """One of :data:`DIRECTIONS` (case-insensitive), else a ValueError naming them."""
    text = str(direction).strip().lower()
    if text not in DIRECTIONS:
        raise PromptError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return text


@dataclass
class ObjectPrompt:
    """Points on one slice for one object.

    object_id: >= 1, becomes the label value; frame: index along the propagation axis;
    points_xy: ``[N, 2]`` float (x = column, y = row) in frame pixels; labels: ``[N]`` int, 1 positive /
    0 negative; granularity: in [0.1, 1] (None only for plain SAM 2.1 models, or to let a model with a
    granularity module run without its granularity token). Every prompt of an object must carry the
    same granularity: one g per object.
    """

    object_id: int
    frame: int
    points_xy: np.ndarray
    labels: np.ndarray
    granularity: float | None


@dataclass
class Propagation:
    """The result of propagating every object through the stack.

    labels: the stack's shape without its channel axis (axis order kept), uint16 (uint32 above 65535),
    0 = background, each object painted with its id where its logit is above the threshold and the
    highest of all objects. scores: float32 ``[n_frames, n_objects]`` the predicted IoU of each object on
    each slice (NaN where the object was not computed); object_scores: the objectness logits, same shape
    (<= 0: the model says the object is absent and its mask is empty). object_ids: the column order of
    the scores. frames_done: bool ``[n_frames]``, True where the slice is final (computed for every object
    whose range covers it, or covered by none); False only after a cancel. axis: the propagation axis of
    ``labels``. prompted_frames: object id -> the slices it was prompted on.
    """

    labels: np.ndarray
    scores: np.ndarray
    object_scores: np.ndarray
    object_ids: list[int]
    frames_done: np.ndarray
    axis: int
    direction: str
    mask_threshold: float
    granularities: dict[int, float | None] = field(default_factory=dict)
    prompted_frames: dict[int, list[int]] = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0
    frames_embedded: int = 0

    @property
    def complete(self) -> bool:
        return bool(self.frames_done.all())

    def frame_labels(self, index: int) -> np.ndarray:
        """The 2D labels of slice ``index`` along the propagation axis."""
        return np.take(self.labels, index, axis=self.axis)
