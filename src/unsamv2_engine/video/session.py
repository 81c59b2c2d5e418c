"""Propagate objects prompted on a few slices through a z-stack or time-lapse, at a fixed granularity.

>>> session = VideoSession(model, stack)                      # [Z, H, W]; nothing embedded yet
>>> session.add_prompts([ObjectPrompt(1, 3, [[40, 52]], [1], 0.6),
...                      ObjectPrompt(2, 3, [[90, 20]], [1], 1.0)])
>>> result = session.propagate("both", progress=print)       # labels of the stack's shape
>>> session.add_prompts([ObjectPrompt(1, 7, [[44, 50]], [1], 0.6)])   # correct object 1 on slice 7
>>> result = session.propagate()                               # cached embeddings are reused

Semantics (see ``docs/propagation.md``):

* Every prompted slice is a *conditioning* slice: its mask comes from its points and the object's g
  alone, exactly as the image path (``ImageSession.predict``) would give, and it enters the memory of
  every other slice. Re-prompting another slice of an object adds a conditioning slice; prompting a
  slice again replaces that slice's points. Each :meth:`VideoSession.propagate` starts tracking afresh
  from the current prompts (upstream state reset; frame embeddings kept in the LRU cache).
* One g per object, carried on every frame as the granularity token (docs/model-reference.md §3.3).
* Directions, per object: ``forward`` covers its first prompted slice to the last slice of the stack;
  ``backward`` its last prompted slice down to slice 0; ``both`` = ``forward``, then backward from the
  first prompted slice down to 0 (each slice computed once). Objects are tracked independently (batch 1
  per object, as upstream), so one object's g never changes another object's masks.
* Overlaps: a pixel goes to the object with the highest logit among those above ``mask_threshold``.
* Memory stays bounded on long stacks: at most ``max_cached_frames`` frame embeddings are kept (LRU;
  about 16 MiB each at 1024 px in float32), and per object only the outputs memory attention can still
  reach (:attr:`GranularityVideoPredictor.memory_reach` frames) plus the prompted slices are kept;
  ``offload_state_to_cpu`` (default on GPUs) keeps those on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unsamv2_engine.devices import inference_context
from unsamv2_engine.model.build import UnSAMv2Model
from unsamv2_engine.model.decoding import upsample_logits
from unsamv2_engine.prompts import PromptError, check_granularity, check_points
from unsamv2_engine.video.data import DEFAULT_MASK_THRESHOLD, ObjectPrompt, Propagation, check_direction
from unsamv2_engine.video.frames import StackFrames
from unsamv2_engine.video.predictor import GranularityVideoPredictor

__all__ = ["DEFAULT_MAX_CACHED_FRAMES", "VideoSession", "propagate"]

#: Frame embeddings kept on the device (LRU). Prompted slices are embedded twice if the cap is below
#: their number plus one; propagation itself needs one at a time.
DEFAULT_MAX_CACHED_FRAMES = 8

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass
class _Plan:
    """Which frames each object covers: ``forward[k]`` / ``backward[k]`` are (start, stop) inclusive
    ranges for object index k (None: no pass), backward running from start down to stop.
    """

    forward: list[tuple[int, int] | None]
    backward: list[tuple[int, int] | None]

    def covers(self, n_frames: int) -> np.ndarray:
        """Bool ``[n_objects, n_frames]``: which object is computed on which frame."""
        cover = np.zeros((len(self.forward), n_frames), bool)
        for k, (fwd, bwd) in enumerate(zip(self.forward, self.backward)):
            if fwd is not None:
                cover[k, fwd[0]:fwd[1] + 1] = True
            if bwd is not None:
                cover[k, bwd[1]:bwd[0] + 1] = True
        return cover


def _cancel_check(cancel: object) -> Cancel:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set  # threading / multiprocessing Event
    if callable(cancel):
        return cancel  # type: ignore[return-value]
    raise TypeError(f"cancel must be an Event or a callable returning bool, got {type(cancel).__name__}")


class VideoSession:
    """Prompts and propagation on one stack, with frame embeddings cached across propagations.

    stack: ``[N0, N1, N2]`` or 4D with a channel axis (see :mod:`unsamv2_engine.video.frames` for
    ``axis``, ``channel_axis`` and ``contrast_limits``); mask_threshold: logits above it are foreground
    (default :data:`~unsamv2_engine.video.data.DEFAULT_MASK_THRESHOLD` = -1.0, the authors' video value);
    max_cached_frames: frame embeddings kept; offload_state_to_cpu: keep tracking memories on the CPU
    (default: True on GPUs). Opening a session folds LoRA into the decoder weights, as ImageSession does.
    """

    def __init__(self, model: UnSAMv2Model, stack: object, *, axis: int = 0, channel_axis: int | None = None,
                 contrast_limits: tuple[float, float] | None = None,
                 mask_threshold: float = DEFAULT_MASK_THRESHOLD,
                 max_cached_frames: int = DEFAULT_MAX_CACHED_FRAMES,
                 offload_state_to_cpu: bool | None = None) -> None:
        if isinstance(max_cached_frames, bool) or int(max_cached_frames) < 1:
            raise ValueError(f"max_cached_frames must be at least 1, got {max_cached_frames!r}")
        self.model = model
        self.frames = StackFrames(stack, axis=axis, channel_axis=channel_axis, contrast_limits=contrast_limits)
        if model.has_lora:
            model.merge_lora()
        if offload_state_to_cpu is None:
            offload_state_to_cpu = model.device.type != "cpu"
        self.predictor = GranularityVideoPredictor.view_of(model)
        self.mask_threshold = mask_threshold
        self.state = self.predictor.init_frames_state(self.frames, offload_state_to_cpu=bool(offload_state_to_cpu),
                                                      max_cached_frames=int(max_cached_frames))
        self._points: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # id -> frame -> (xy, labels)
        self._granularity: dict[int, float | None] = {}

    @property
    def mask_threshold(self) -> float:
        """Logits above it are foreground (also ranks plain SAM's candidates by area); settable."""
        return self._mask_threshold

    @mask_threshold.setter
    def mask_threshold(self, value: float) -> None:
        threshold = float(value)
        if not np.isfinite(threshold):
            raise ValueError(f"mask_threshold must be a finite number, got {value!r}")
        self._mask_threshold = threshold
        self.predictor.candidate_threshold = threshold

    # ------------------------------------------------------------------ prompts
    @property
    def n_frames(self) -> int:
        return self.frames.n_frames

    @property
    def frame_hw(self) -> tuple[int, int]:
        return self.frames.frame_hw

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._points)

    def prompted_frames(self, object_id: int) -> list[int]:
        return sorted(self._points.get(object_id, {}))

    def granularity(self, object_id: int) -> float | None:
        return self._granularity[object_id]

    def add_prompts(self, prompts: Sequence[ObjectPrompt]) -> None:
        """Add points for objects on slices (all validated before anything changes).

        Prompts of the same object and slice in one call are joined; a slice prompted again for an
        object in a later call replaces that slice's points. The granularity given becomes the
        object's g for every slice (one g per object; two different values in one call are refused).
        """
        joined: dict[tuple[int, int], tuple[list[np.ndarray], list[np.ndarray]]] = {}
        granularity: dict[int, float | None] = {}
        for prompt in prompts:
            object_id, frame, g, pts, labs = self._check_prompt(prompt)
            if object_id in granularity and granularity[object_id] != g:
                raise PromptError(f"object {object_id} was given two granularities ({granularity[object_id]} and "
                                  f"{g}): an object keeps one g on every slice")
            granularity[object_id] = g
            group = joined.setdefault((object_id, frame), ([], []))
            group[0].append(pts)
            group[1].append(labs)
        if not joined:
            raise PromptError("no prompts given: add points for at least one object on one slice")
        for (object_id, frame), (pts, labs) in joined.items():
            self._points.setdefault(object_id, {})[frame] = (np.concatenate(pts), np.concatenate(labs))
        self._granularity.update(granularity)

    def set_granularity(self, object_id: int, granularity: float | None) -> None:
        """Change an object's g (applies to all its slices at the next :meth:`propagate`)."""
        if object_id not in self._points:
            raise PromptError(f"object {object_id} has no prompts; known objects: {self.object_ids}")
        self._granularity[object_id] = self._check_granularity(object_id, granularity)

    def clear(self, object_id: int | None = None, frame: int | None = None) -> None:
        """Forget prompts: all, one object's, or one object's on one slice (``frame`` needs ``object_id``)."""
        if object_id is None:
            if frame is not None:
                raise ValueError("clear(frame=...) needs the object_id too")
            self._points.clear()
            self._granularity.clear()
            return
        frames = self._points.get(object_id)
        if frames is None:
            return
        if frame is None:
            frames.clear()
        else:
            frames.pop(frame, None)
        if not frames:
            del self._points[object_id]
            self._granularity.pop(object_id, None)

    def _check_granularity(self, object_id: int, granularity: float | None) -> float | None:
        g = check_granularity(granularity)
        if g is None and self.model.has_granularity:
            raise PromptError(f"object {object_id} has no granularity: give a g in [0.1, 1.0] (0.1 = smallest parts, "
                              f"1.0 = whole objects)")
        return g

    def _check_prompt(self, prompt: ObjectPrompt) -> tuple[int, int, float | None, np.ndarray, np.ndarray]:
        object_id, frame = prompt.object_id, prompt.frame
        if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)) or object_id < 1:
            raise PromptError(f"object ids must be integers >= 1 (they become label values), got {object_id!r}")
        if object_id > np.iinfo(np.uint32).max:
            raise PromptError(f"object id {object_id} does not fit a uint32 label image")
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise PromptError(f"the slice of a prompt must be an integer index, got {frame!r}")
        axis = self.frames.layout.axis
        if not 0 <= frame < self.n_frames:
            raise PromptError(f"slice {frame} of object {object_id} is outside the stack: it has {self.n_frames} "
                              f"slices along axis {axis} (0 .. {self.n_frames - 1})")
        g = self._check_granularity(int(object_id), prompt.granularity)
        try:
            pts, labs = check_points(prompt.points_xy, prompt.labels, self.frame_hw)
        except PromptError as exc:
            raise PromptError(f"object {object_id}, slice {frame}: {exc}") from None
        return int(object_id), int(frame), g, pts, labs

    # ------------------------------------------------------------------ propagation
    def propagate(self, direction: str = "both", *, progress: Progress | None = None,
                  cancel: object = None) -> Propagation:
        """Track every object from its prompted slices; see the module docstring for the rules.

        progress(done, total) is called after every slice step (total = slices to visit, the two
        passes together); cancel (an Event or a callable returning True) stops before the next slice:
        the result then has ``cancelled=True`` and ``frames_done`` False where slices are missing.
        """
        direction = check_direction(direction)
        if not self._points:
            raise PromptError("no prompts: add points for at least one object on one slice first")
        should_stop = _cancel_check(cancel)
        start = time.perf_counter()
        embedded_before = self.state["frames_embedded"]
        ids = self.object_ids
        n = self.n_frames
        plan = self._plan(ids, direction)
        cover = plan.covers(n)
        painter = _Painter(self.frames, ids, cover, self.mask_threshold)
        total = sum(0 if r is None else abs(r[0] - r[1]) + 1 for r in
                    (_union(plan.forward), _union(plan.backward, reverse=True)))
        done = 0
        cancelled = False
        device = self.model.device
        with inference_context(device):
            self._start_tracking(ids)
            for reverse, ranges in ((False, plan.forward), (True, plan.backward)):
                span = _union(ranges, reverse)
                if span is None:
                    continue
                step = -1 if reverse else 1
                for frame in range(span[0], span[1] + step, step):
                    if should_stop():
                        cancelled = True
                        break
                    for k in range(len(ids)):
                        rng = ranges[k]
                        if rng is not None and _inside(frame, rng, reverse):
                            out = self._track(k, frame, reverse, protect=self._protected(plan, k, reverse))
                            painter.add(frame, k, out)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                if cancelled:
                    break
        return Propagation(
            labels=painter.labels, scores=painter.scores, object_scores=painter.object_scores, object_ids=ids,
            frames_done=painter.frames_done, axis=self.frames.layout.labels_axis, direction=direction,
            mask_threshold=self.mask_threshold, granularities={i: self._granularity[i] for i in ids},
            prompted_frames={i: self.prompted_frames(i) for i in ids}, cancelled=cancelled,
            seconds=time.perf_counter() - start, frames_embedded=self.state["frames_embedded"] - embedded_before)

    def _plan(self, ids: list[int], direction: str) -> _Plan:
        last_frame = self.n_frames - 1
        forward: list[tuple[int, int] | None] = []
        backward: list[tuple[int, int] | None] = []
        for obj_id in ids:
            first, last = min(self._points[obj_id]), max(self._points[obj_id])
            forward.append((first, last_frame) if direction in ("forward", "both") else None)
            if direction == "backward":
                backward.append((last, 0))
            elif direction == "both" and first > 0:
                backward.append((first - 1, 0))
            else:
                backward.append(None)
        return _Plan(forward, backward)

    def _protected(self, plan: _Plan, k: int, reverse: bool) -> range | None:
        """Outputs the later backward pass of object k will read (only while running forward)."""
        bwd = plan.backward[k]
        if reverse or bwd is None or plan.forward[k] is None:
            return None
        return range(bwd[0] + 1, bwd[0] + 2 + self.predictor.memory_reach)

    def _start_tracking(self, ids: list[int]) -> None:
        """Reset upstream's tracking state and run every prompted slice as a conditioning frame."""
        pred, state = self.predictor, self.state
        pred.reset_state(state)
        state["granularity_per_obj"].clear()
        for obj_id in ids:
            obj_idx = pred._obj_id_to_idx(state, obj_id)
            state["granularity_per_obj"][obj_idx] = self._granularity[obj_id]
            for frame, (pts, labs) in sorted(self._points[obj_id].items()):
                pred.add_new_points_or_box(state, frame, obj_id, points=torch.from_numpy(pts),
                                           labels=torch.from_numpy(labs), clear_old_points=True, normalize_coords=True)
        pred.propagate_in_video_preflight(state)

    def _track(self, obj_idx: int, frame: int, reverse: bool, protect: range | None) -> dict:
        """One object on one frame (upstream's propagation step); returns the frame's compact output."""
        pred, state = self.predictor, self.state
        outputs = state["output_dict_per_obj"][obj_idx]
        if frame in outputs["cond_frame_outputs"]:
            out = outputs["cond_frame_outputs"][frame]
        else:
            out, _ = pred._run_single_frame_inference(
                inference_state=state, output_dict=outputs, frame_idx=frame, batch_size=1, is_init_cond_frame=False,
                point_inputs=None, mask_inputs=None, reverse=reverse, run_mem_encoder=True)
            outputs["non_cond_frame_outputs"][frame] = out
        state["frames_tracked_per_obj"][obj_idx][frame] = {"reverse": reverse}
        self._drop_unreachable(outputs["non_cond_frame_outputs"], frame, reverse, protect)
        return out

    def _drop_unreachable(self, outputs: dict, frame: int, reverse: bool, protect: range | None) -> None:
        reach = self.predictor.memory_reach
        for t in [t for t in outputs if (t > frame + reach if reverse else t < frame - reach)]:
            if protect is None or t not in protect:
                del outputs[t]


def _union(ranges: list[tuple[int, int] | None], reverse: bool = False) -> tuple[int, int] | None:
    """The smallest (start, stop) span, in the pass's direction, covering every object's range."""
    present = [r for r in ranges if r is not None]
    if not present:
        return None
    if reverse:
        return max(r[0] for r in present), min(r[1] for r in present)
    return min(r[0] for r in present), max(r[1] for r in present)


def _inside(frame: int, rng: tuple[int, int], reverse: bool) -> bool:
    return rng[1] <= frame <= rng[0] if reverse else rng[0] <= frame <= rng[1]


class _Painter:
    """Builds the label volume slice by slice as object results arrive (possibly from two passes).

    A slice is written once every object covering it has reported; until then it is held as a
    (best logit, label) pair, so only slices between passes are ever pending.
    """

    def __init__(self, frames: StackFrames, ids: list[int], cover: np.ndarray, threshold: float) -> None:
        layout = frames.layout
        self.frames = frames
        self.ids = ids
        self.threshold = threshold
        self.axis = layout.labels_axis
        dtype = np.uint16 if max(ids) <= np.iinfo(np.uint16).max else np.uint32
        self.labels = np.zeros(layout.labels_shape, dtype)
        n = frames.n_frames
        self.scores = np.full((n, len(ids)), np.nan, np.float32)
        self.object_scores = np.full((n, len(ids)), np.nan, np.float32)
        self.missing = cover.sum(axis=0)  # objects still to report, per frame
        self.frames_done = self.missing == 0
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, frame: int, obj_idx: int, out: dict) -> None:
        device = out["pred_masks"].device
        logits = upsample_logits(out["pred_masks"].float(), self.frames.frame_hw)[0, 0]
        best, label = self._pending.get(frame) or (torch.full_like(logits, -torch.inf),
                                                   torch.zeros(logits.shape, dtype=torch.int64, device=device))
        wins = (logits > self.threshold) & (logits > best)
        best = torch.where(wins, logits, best)
        label = torch.where(wins, torch.as_tensor(self.ids[obj_idx], device=device), label)
        self.scores[frame, obj_idx] = float(out["iou"].reshape(-1)[0]) if out.get("iou") is not None else np.nan
        self.object_scores[frame, obj_idx] = float(out["object_score_logits"].reshape(-1)[0])
        self.missing[frame] -= 1
        if self.missing[frame] > 0:
            self._pending[frame] = (best, label)
            return
        self._pending.pop(frame, None)
        index = tuple(frame if i == self.axis else slice(None) for i in range(self.labels.ndim))
        self.labels[index] = label.cpu().numpy().astype(self.labels.dtype)
        self.frames_done[frame] = True


def propagate(model: UnSAMv2Model, stack: object, prompts: Sequence[ObjectPrompt], *, axis: int = 0,
              channel_axis: int | None = None, direction: str = "both",
              mask_threshold: float = DEFAULT_MASK_THRESHOLD, contrast_limits: tuple[float, float] | None = None,
              max_cached_frames: int = DEFAULT_MAX_CACHED_FRAMES, offload_state_to_cpu: bool | None = None,
              progress: Progress | None = None, cancel: object = None) -> Propagation:
    """One-shot propagation: a :class:`VideoSession`, the prompts, one :meth:`VideoSession.propagate`.

    Everything is validated (stack layout, direction, prompts) before any frame is embedded.
    """
    direction = check_direction(direction)
    session = VideoSession(model, stack, axis=axis, channel_axis=channel_axis, contrast_limits=contrast_limits,
                           mask_threshold=mask_threshold, max_cached_frames=max_cached_frames,
                           offload_state_to_cpu=offload_state_to_cpu)
    session.add_prompts(prompts)
    return session.propagate(direction, progress=progress, cancel=cancel)
