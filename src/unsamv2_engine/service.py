"""The engine behind the protocol: answers :mod:`unsamv2_engine.protocol` requests.

One loaded model, and a small LRU cache of image embeddings keyed by the front end's image key
(napari: layer and slice), so moving the dial or re-visiting a slice never re-embeds. The service
is synchronous and transport-free: :mod:`unsamv2_engine.client` runs it in a thread or in a
separate engine process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from unsamv2_engine import protocol as p
from unsamv2_engine.errors import EngineError, is_user_error
from unsamv2_engine.tiled_service import TiledImage

EMBEDDING_CACHE_SIZE = 4
#: Large images kept as tiled sessions (each holds a few view embeddings and a lazy view of its image).
TILED_CACHE_SIZE = 2
#: Stacks kept with their propagation session (each holds up to its cap of frame embeddings).
VIDEO_SESSION_CACHE_SIZE = 1
Emit = Callable[[p.Reply], None]


class EngineStateError(EngineError):
    """A request that needs state the engine does not have yet (a model, an embedded image)."""


class EngineService:
    """Handle requests one at a time; ``handle`` returns the final reply (and may emit progress).

    ``cancel_event`` (threading or multiprocessing Event, shared with the client) stops a long job
    (whole-image segmentation, hierarchy) between batches; it is cleared when such a job starts.
    """

    def __init__(self, model=None, *, cache_size: int = EMBEDDING_CACHE_SIZE, cancel_event=None,
                 allow_paths: bool = True) -> None:
        import threading

        self.model = model
        self.cache_size = cache_size
        # SetImage(image=None, image_path=...): read the plane from a file of this computer (False on a server:
        # the path names a file of the client)
        self.allow_paths = allow_paths
        # image key -> TiledImage: large images, decoded tile by tile (tiling/interactive.py)
        self._tiled: OrderedDict[str, TiledImage] = OrderedDict()
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        # image key -> (features, (H, W), the 2D image, its contrast limits)
        self._embeddings: OrderedDict[str, tuple[object, tuple[int, int], np.ndarray, object]] = OrderedDict()
        self._session = None
        # stack key -> (VideoSession, its (axis, channel_axis, contrast_limits))
        self._videos: OrderedDict[str, tuple[object, tuple]] = OrderedDict()
        if model is not None:
            self._use_model(model)

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: p.Request, emit: Emit | None = None) -> p.Reply:
        emit = emit or (lambda reply: None)
        try:
            if isinstance(request, p.LoadModel):
                return self._load(request, emit)
            if isinstance(request, p.SetImage):
                return self._set_image(request)
            if isinstance(request, p.Predict):
                return self._predict(request)
            if isinstance(request, p.SweepRequest):
                return self._sweep(request)
            if isinstance(request, (p.SegmentAll, p.BuildHierarchy)):
                return self._whole_image(request, emit)
            if isinstance(request, p.Propagate):
                return self._propagate(request, emit)
            if isinstance(request, p.Shutdown):
                return p.Stopped(request.request_id)
            if isinstance(request, p.FineTune):
                raise EngineStateError("fine-tuning requests are run by an 'unsamv2 serve' server started with "
                                       "--data-root; on this computer run 'unsamv2 finetune' (or the widget's "
                                       "panel with the local engine)")
            raise TypeError(f"unknown request {type(request).__name__}")
        except Exception as exc:  # every failure becomes a reply; the engine keeps serving
            return failure_reply(getattr(request, "request_id", -1), exc)

    # ------------------------------------------------------------------ handlers
    def _use_model(self, model) -> None:
        from unsamv2_engine.session import ImageSession

        self.model = model
        self._session = ImageSession(model)
        self._embeddings.clear()
        self._tiled.clear()
        self._videos.clear()

    def _load(self, request: p.LoadModel, emit: Emit) -> p.ModelLoaded:
        from unsamv2_engine.devices import resolve_device
        from unsamv2_engine.model.checkpoint import load_checkpoint
        from unsamv2_engine.weights import resolve_checkpoint

        target = request.checkpoint or request.model_name
        if not target:
            raise ValueError("give a checkpoint path or a model name")

        def on_bytes(done: int, total: int | None) -> None:
            emit(p.Progress(request.request_id, "download", done, total))

        path = resolve_checkpoint(target, download_missing=request.download, progress=False,
                                  progress_callback=on_bytes)
        emit(p.Progress(request.request_id, "load", 0, 1))
        model = load_checkpoint(path, device=resolve_device(request.device), adapter=request.adapter,
                                allow_base_mismatch=request.allow_base_mismatch, source=target)
        self._use_model(model)
        return self.model_info(request.request_id)

    def model_info(self, request_id: int = 0) -> p.ModelLoaded:
        m = self._require_model()
        return p.ModelLoaded(request_id, m.info.label, m.info.family, m.info.size, m.has_granularity, str(m.device))

    def _set_image(self, request: p.SetImage) -> p.ImageEmbedded:
        from unsamv2_engine.tiling.grid import wants_tiles

        session = self._require_session()
        if request.image_key in self._embeddings:
            self._embeddings.move_to_end(request.image_key)
            hw = self._embeddings[request.image_key][1]
            return p.ImageEmbedded(request.request_id, request.image_key, hw, 0.0, True)
        if request.image_key in self._tiled:
            self._tiled.move_to_end(request.image_key)
            return self._tiled[request.image_key].reply(request.request_id, request.image_key, 0.0, True)
        start = time.perf_counter()
        image = request.image if request.image is not None else self._read_path(request)
        hw = tuple(int(s) for s in image.shape[:2])
        if request.tiled or (request.tiled is None and wants_tiles(hw)):
            tiled = TiledImage.open(self.model, image, request)
            self._tiled[request.image_key] = tiled
            while len(self._tiled) > TILED_CACHE_SIZE:
                self._tiled.popitem(last=False)
            return tiled.reply(request.request_id, request.image_key, time.perf_counter() - start, False)
        image = np.asarray(image)
        session.set_image(image, contrast_limits=request.contrast_limits, rgb=request.rgb)
        self._embeddings[request.image_key] = (session.features, session.image_hw, image, request.contrast_limits)
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return p.ImageEmbedded(request.request_id, request.image_key, session.image_hw,
                               time.perf_counter() - start, False)

    def _read_path(self, request: p.SetImage):
        """The plane of ``request.image_path`` as a lazy array-like (read window by window when tiled)."""
        from unsamv2_engine.io.omezarr import open_lazy_image

        if not request.image_path:
            raise ValueError(f"SetImage {request.image_key!r} has neither an image nor an image_path")
        if not self.allow_paths:
            raise EngineStateError("this engine server cannot read files of the client's computer: send the "
                                   "image's pixels (SetImage.image)")
        return open_lazy_image(request.image_path, frame=request.frame)

    def _activate(self, image_key: str):
        session = self._require_session()
        if image_key not in self._embeddings:
            raise EngineStateError(f"image {image_key!r} is not embedded (send SetImage first)")
        self._embeddings.move_to_end(image_key)
        features, hw, _, _ = self._embeddings[image_key]
        session.set_features(features, hw)
        return session

    def _predict(self, request: p.Predict) -> p.Decoded:
        if request.image_key in self._tiled:
            self._tiled.move_to_end(request.image_key)
            return self._tiled[request.image_key].predict(request)
        session = self._activate(request.image_key)
        start = time.perf_counter()
        pred = session.predict(request.points_xy, request.labels, request.granularity, m2m=request.m2m,
                               mask_input=request.mask_input, mask_threshold=request.mask_threshold)
        logits = pred.low_res_logits if request.want_logits else None
        return p.Decoded(request.request_id, request.image_key, pred.mask, logits, pred.score,
                         pred.granularity, time.perf_counter() - start)

    def _sweep(self, request: p.SweepRequest) -> p.SweepDecoded:
        if request.image_key in self._tiled:
            self._tiled.move_to_end(request.image_key)
            return self._tiled[request.image_key].sweep(request)
        session = self._activate(request.image_key)
        start = time.perf_counter()
        sweep = session.sweep(request.points_xy, request.labels, request.granularities, m2m=request.m2m,
                              mask_threshold=request.mask_threshold)
        labels = table = None
        if request.nest:
            from unsamv2_engine.hierarchy import sweep_hierarchy

            nested = sweep_hierarchy(sweep.masks, sweep.granularities, sweep.scores)
            labels, table = nested.labels, nested.table
        return p.SweepDecoded(request.request_id, request.image_key, [float(g) for g in sweep.granularities],
                              sweep.masks, sweep.scores, np.asarray(sweep.areas), time.perf_counter() - start,
                              labels=labels, table=table)

    def _whole_image(self, request, emit: Emit):
        from unsamv2_engine.automatic import AutomaticSegmenter, AutoSettings
        from unsamv2_engine.automatic.hierarchy import levels_to_hierarchy

        extra = {"preset", "decode_batch"}
        settings = AutoSettings.preset(request.settings.get("preset", "cpu")).with_(
            **{k: v for k, v in request.settings.items() if k not in extra})
        segmenter = AutomaticSegmenter(self.model, settings, decode_batch=request.settings.get("decode_batch"))
        if request.image_key in self._tiled:
            self._require_model()
            self.cancel_event.clear()
            return self._tiled[request.image_key].whole_image(request, segmenter, emit, self.cancel_event.is_set)
        self._activate(request.image_key)
        features, hw, image, contrast = self._embeddings[request.image_key]
        stage = "segment" if isinstance(request, p.SegmentAll) else "hierarchy"
        self.cancel_event.clear()
        start = time.perf_counter()
        levels = segmenter.generate_levels(
            image, [request.granularity] if isinstance(request, p.SegmentAll) else request.granularities,
            progress=lambda done, total: emit(p.Progress(request.request_id, stage, done, total)),
            cancel=self.cancel_event.is_set, contrast_limits=contrast, features=(features, hw))
        if isinstance(request, p.SegmentAll):
            level = levels[0]
            masks = (level.masks, level.points) if request.want_masks else (None, None)
            return p.Segmented(request.request_id, request.image_key, level.granularity, level.label_image(),
                               level.scores, level.areas, time.perf_counter() - start, stability=level.stability,
                               masks=masks[0], points=masks[1])
        hierarchy = levels_to_hierarchy(levels, containment=request.containment)
        return p.HierarchyBuilt(request.request_id, request.image_key, list(hierarchy.granularities), hierarchy.labels,
                                hierarchy.table, time.perf_counter() - start,
                                masks_per_level=[len(level) for level in levels])

    def _propagate(self, request: p.Propagate, emit: Emit) -> p.Propagated:
        from unsamv2_engine.video.session import VideoSession

        model = self._require_model()
        layout = (request.axis, request.channel_axis,
                  None if request.contrast_limits is None else tuple(request.contrast_limits))
        cached = self._videos.get(request.stack_key)
        if request.stack is None and cached is None:
            raise EngineStateError(f"stack {request.stack_key!r} is not loaded: send it once with Propagate(stack=...)")
        if request.stack is not None or cached[1] != layout:
            stack = request.stack if request.stack is not None else cached[0].frames.stack
            self._videos.pop(request.stack_key, None)  # free its embeddings before making new ones
            session = VideoSession(model, stack, axis=request.axis, channel_axis=request.channel_axis,
                                   contrast_limits=request.contrast_limits, mask_threshold=request.mask_threshold)
            self._videos[request.stack_key] = (session, layout)
            while len(self._videos) > VIDEO_SESSION_CACHE_SIZE:
                self._videos.popitem(last=False)
        self._videos.move_to_end(request.stack_key)
        session = self._videos[request.stack_key][0]
        session.mask_threshold = request.mask_threshold
        session.clear()
        session.add_prompts(request.prompts)
        self.cancel_event.clear()
        result = session.propagate(request.direction, cancel=self.cancel_event,
                                   progress=lambda done, total: emit(p.Progress(request.request_id, "propagate", done,
                                                                                total)))
        return p.Propagated(request.request_id, request.stack_key, result.labels, result.scores, result.object_scores,
                            result.object_ids, result.frames_done, result.axis, result.cancelled, result.seconds)

    # ------------------------------------------------------------------ helpers
    def _require_model(self):
        if self.model is None:
            raise EngineStateError("no model loaded: choose a model or a checkpoint first")
        return self.model

    def _require_session(self):
        self._require_model()
        return self._session


def failure_reply(request_id: int, exc: BaseException) -> p.Failure:
    """The :class:`~unsamv2_engine.protocol.Failure` for ``exc``: a user error (an
    :class:`~unsamv2_engine.errors.UnSAMv2Error`, or an OS error about a named file) carries its message;
    anything else is a bug and also carries its traceback text, so the front end can show it.
    """
    import traceback

    user = is_user_error(exc)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and user and exc.filename is not None:
        message = f"{exc.strerror}: {exc.filename}"
    trace = "" if user else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return p.Failure(request_id, type(exc).__name__, message, user, trace)
