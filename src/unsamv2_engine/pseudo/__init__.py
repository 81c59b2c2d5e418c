"""Divide-and-conquer pseudo-labels, clean-room from docs/model-reference.md §5 (see ``docs/pseudo-labels.md``).

* :mod:`.backbones` -- patch-feature backbones behind one interface (classical, SAM 2, DINO) and
  :func:`make_backbone`.
* :mod:`.divide` -- MaskCut-style normalized cuts, the model's whole-image masks, the §5.2
  instance/part rules.
* :mod:`.conquer` -- parts of one instance by iterative merging (§5.3).
* :mod:`.merging` -- conquer-stage iterative merging of patch features (§5.3-4), coverage filter
  and patch-to-pixel mask upsampling (§5.3-5).
* :mod:`.nms` -- the authors' windowed mask NMS and protected NMS (§5.3-6/7).
* :mod:`.pipeline` -- :func:`pseudo_label_image`, :func:`pseudo_label_folder` and their settings.
* :mod:`.overlay` -- the overlay PNG. The command is :mod:`unsamv2_engine.cli.pseudo_label`.

The granularity score of §5.5 lives in :mod:`unsamv2_engine.granularity_scores`.
"""

from __future__ import annotations

from unsamv2_engine.pseudo.backbones import BACKBONES, Backbone, ClassicalBackbone, Sam2Backbone, make_backbone
from unsamv2_engine.pseudo.conquer import conquer_instance
from unsamv2_engine.pseudo.divide import DividedInstance, maskcut, normalized_cut, split_instances
from unsamv2_engine.pseudo.merging import coverage, iterative_merge, upsample_mask
from unsamv2_engine.pseudo.nms import mask_iou, protected_nms, windowed_mask_nms
from unsamv2_engine.pseudo.pipeline import (
                                            PseudoLabelSettings,
                                            PseudoLabelSummary,
                                            pseudo_label_folder,
                                            pseudo_label_image,
)

__all__ = [
    "BACKBONES", "Backbone", "ClassicalBackbone", "DividedInstance", "PseudoLabelSettings",
    "PseudoLabelSummary", "Sam2Backbone", "conquer_instance", "coverage", "iterative_merge", "make_backbone",
    "mask_iou", "maskcut", "normalized_cut", "protected_nms", "pseudo_label_folder", "pseudo_label_image",
    "split_instances", "upsample_mask", "windowed_mask_nms",
]
