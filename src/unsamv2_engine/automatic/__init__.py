"""Whole-image segmentation at a granularity, and label hierarchies across granularities."""

from unsamv2_engine.automatic.segmenter import AutoMasks, AutomaticSegmenter, Cancelled
from unsamv2_engine.automatic.settings import AutoSettings

__all__ = ["AutoMasks", "AutoSettings", "AutomaticSegmenter", "Cancelled"]
