"""Whole-image segmentation at a granularity, and label hierarchies across granularities."""

from unsamv2_engine._lazy import lazy_exports

# Loaded on first use, so that ``unsamv2 --help`` (which imports ``automatic.cli``) stays light.
_EXPORTS = {"AutoMasks": "segmenter", "AutomaticSegmenter": "segmenter", "Cancelled": "segmenter",
            "AutoSettings": "settings"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = ["AutoMasks", "AutoSettings", "AutomaticSegmenter", "Cancelled"]
