"""Whole-image segmentation at a granularity, and label hierarchies across granularities.

Exports load lazily (:mod:`unsamv2_engine._lazy`): ``automatic.settings`` is torch-free, so the CLI's
``--server`` path (a client without torch) can build and check the settings it sends.
"""

from unsamv2_engine._lazy import lazy_exports

_EXPORTS = {"AutoMasks": "segmenter", "AutomaticSegmenter": "segmenter", "Cancelled": "segmenter",
            "AutoSettings": "settings"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
