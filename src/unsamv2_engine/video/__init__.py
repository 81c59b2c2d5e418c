"""Propagation of granularity-conditioned objects through z-stacks and time-lapses.

Built on upstream ``sam2``'s video machinery (memory attention, memory encoder, object pointers) with
the UnSAMv2 granularity token passed on every frame; see :mod:`unsamv2_engine.video.predictor` for
what is upstream's and what is ours, :mod:`unsamv2_engine.video.session` for the public API and its
rules, :mod:`unsamv2_engine.video.frames` for axis/channel/intensity rules, and
``docs/propagation.md`` for the user guide.

>>> from unsamv2_engine.video import ObjectPrompt, propagate
>>> result = propagate(model, stack, [ObjectPrompt(1, 4, [[40, 52]], [1], 0.6)], direction="both")
>>> result.labels.shape == stack.shape
"""

from unsamv2_engine._lazy import lazy_exports

# Loaded on first use: the protocol (which must import without torch) imports ``video.data``, which
# would otherwise load the session, predictor and torch with this package.
_EXPORTS = {
    "DEFAULT_MASK_THRESHOLD": "data", "DIRECTIONS": "data", "ObjectPrompt": "data", "Propagation": "data",
    "check_direction": "data",
    "StackFrames": "frames", "StackLayout": "layout", "stack_layout": "layout",
    "GranularityVideoPredictor": "predictor",
    "DEFAULT_MAX_CACHED_FRAMES": "session", "VideoSession": "session", "propagate": "session",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
