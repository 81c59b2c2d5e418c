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
* :mod:`.overlay` -- the overlay PNG; :mod:`.cli` -- ``unsamv2 pseudo-label``.

The granularity score of §5.5 lives in :mod:`unsamv2_engine.granularity_scores`. Names load on
first use, so ``unsamv2 --help`` (which imports :mod:`.cli`) stays standard-library only.
"""

from __future__ import annotations

from unsamv2_engine._lazy import lazy_exports

_EXPORTS = {
    "coverage": "merging", "iterative_merge": "merging", "upsample_mask": "merging",
    "mask_iou": "nms", "protected_nms": "nms", "windowed_mask_nms": "nms",
    "BACKBONES": "backbones", "Backbone": "backbones", "ClassicalBackbone": "backbones",
    "Sam2Backbone": "backbones", "make_backbone": "backbones",
    "DividedInstance": "divide", "maskcut": "divide", "normalized_cut": "divide", "split_instances": "divide",
    "conquer_instance": "conquer",
    "PseudoLabelSettings": "pipeline", "PseudoLabelSummary": "pipeline", "pseudo_label_folder": "pipeline",
    "pseudo_label_image": "pipeline",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
