"""Seeded, reproducible synthetic microscopy with an exact part/whole hierarchy (docs/synthetic.md).

Levels, coarse to fine: tissue -> cluster -> cell -> nucleus -> nucleolus, one instance label image
per level with ids unique across levels, child ⊂ parent guaranteed. Modalities: fluorescence
(uint16), brightfield (uint8 grey) and H&E-like RGB (uint8); 2D, 3D stacks and 2D time-lapse.
Granularity targets follow UnSAMv2's sqrt-area rule within each tissue tree. See
``docs/synthetic.md``.

Its modules import numpy, scipy, scikit-image, tifffile, Pillow and pycocotools; never torch.

>>> from unsamv2_engine.synth import generate_sample, write_dataset
>>> sample = generate_sample(0, modality="fluorescence", ndim="2", shape=(128, 128))
>>> sample.image.shape, sorted(sample.labels)[:2]
((128, 128), ['cell', 'cluster'])
"""

from __future__ import annotations

from unsamv2_engine.synth.config import DEFAULT_SHAPES, DIFFICULTIES, LEVELS, MODALITIES, NDIMS, SynthConfig
from unsamv2_engine.synth.dataset import (
                                          iter_dataset,
                                          load_sample,
                                          sample_seeds,
                                          verify_manifest,
                                          write_dataset,
                                          write_sample,
)
from unsamv2_engine.synth.generate import GENERATOR_VERSION, Sample, generate_sample
from unsamv2_engine.synth.scene import ObjectRecord

__all__ = [
    "DEFAULT_SHAPES",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "LEVELS",
    "MODALITIES",
    "NDIMS",
    "ObjectRecord",
    "Sample",
    "SynthConfig",
    "generate_sample",
    "iter_dataset",
    "load_sample",
    "sample_seeds",
    "verify_manifest",
    "write_dataset",
    "write_sample",
]
