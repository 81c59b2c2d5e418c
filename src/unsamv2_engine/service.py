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

EMBEDDING_CACHE_SIZE = 4
Emit = Callable[[p.Reply], None]


class EngineStateError(RuntimeError):
    """A request that needs state the engine does not have yet (a model, an embedded image)."""


class EngineService:
    """Handle requests one at a time; ``handle`` returns the final reply (and may emit progress)."""

    def __init__(self, model=None, *, cache_size: int = EMBEDDING_CACHE_SIZE) -> None:
        self.model = model
        self.cache_size = cache_size
        self._embeddings: OrderedDict[str, tuple[object, tuple[int, int]]] = OrderedDict()
        self._session = None
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
            if isinstance(request, p.Shutdown):
                return p.Stopped(request.request_id)
            raise TypeError(f"unknown request {type(request).__name__}")
        except Exception as exc:  # every failure becomes a reply; the engine keeps serving
            return p.Failure(getattr(request, "request_id", -1), type(exc).__name__, str(exc), _is_user_error(exc))

    # ------------------------------------------------------------------ handlers
    def _use_model(self, model) -> None:
        from unsamv2_engine.session import ImageSession

        self.model = model
        self._session = ImageSession(model)
        self._embeddings.clear()

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
        session = self._require_session()
        if request.image_key in self._embeddings:
            self._embeddings.move_to_end(request.image_key)
            _, hw = self._embeddings[request.image_key]
            return p.ImageEmbedded(request.request_id, request.image_key, hw, 0.0, True)
        start = time.perf_counter()
        session.set_image(request.image, contrast_limits=request.contrast_limits, rgb=request.rgb)
        self._embeddings[request.image_key] = (session.features, session.image_hw)
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return p.ImageEmbedded(request.request_id, request.image_key, session.image_hw,
                               time.perf_counter() - start, False)

    def _activate(self, image_key: str):
        session = self._require_session()
        if image_key not in self._embeddings:
            raise EngineStateError(f"image {image_key!r} is not embedded (send SetImage first)")
        self._embeddings.move_to_end(image_key)
        session.set_features(*self._embeddings[image_key])
        return session

    def _predict(self, request: p.Predict) -> p.Decoded:
        session = self._activate(request.image_key)
        start = time.perf_counter()
        pred = session.predict(request.points_xy, request.labels, request.granularity, m2m=request.m2m,
                               mask_input=request.mask_input, mask_threshold=request.mask_threshold)
        return p.Decoded(request.request_id, request.image_key, pred.mask, pred.low_res_logits, pred.score,
                         pred.granularity, time.perf_counter() - start)

    def _sweep(self, request: p.SweepRequest) -> p.SweepDecoded:
        session = self._activate(request.image_key)
        start = time.perf_counter()
        sweep = session.sweep(request.points_xy, request.labels, request.granularities, m2m=request.m2m,
                              mask_threshold=request.mask_threshold)
        return p.SweepDecoded(request.request_id, request.image_key, [float(g) for g in sweep.granularities],
                              sweep.masks, sweep.scores, np.asarray(sweep.areas), time.perf_counter() - start)

    # ------------------------------------------------------------------ helpers
    def _require_model(self):
        if self.model is None:
            raise EngineStateError("no model loaded: choose a model or a checkpoint first")
        return self.model

    def _require_session(self):
        self._require_model()
        return self._session


def _is_user_error(exc: BaseException) -> bool:
    from unsamv2_engine.model.checkpoint import CheckpointError
    from unsamv2_engine.weights import WeightsError

    return isinstance(exc, (ValueError, FileNotFoundError, CheckpointError, WeightsError, EngineStateError))
