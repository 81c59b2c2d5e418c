"""Fine-tuning of UnSAMv2 on pseudo-labels (docs/model-reference.md §4; see ``docs/fine-tuning.md``).

Modules, one concept each:

* :mod:`.losses`: SAM 2 style multi-step loss (focal x20 + dice + IoU-L1 + objectness);
* :mod:`.clicks`: seeded click simulation (uniform first click, correction clicks from the error);
* :mod:`.augment`: flips, 90 degree rotations, mild affine, intensity jitter;
* :mod:`.dataset`: images + pseudo-label JSONs -> deterministic training samples;
* :mod:`.trainer`: the training loop (``finetune``), checkpoints, resume, validation, adapter output;
* :mod:`.distributed`: DDP under ``torchrun``;
* :mod:`.cli`: the ``unsamv2 finetune`` command.

Named ``train`` (never ``training``: sam2 installs a top-level package of that name). Importing this
package imports nothing heavy (``unsamv2 finetune --help`` stays free of torch): names load on first use.
"""

from __future__ import annotations

from unsamv2_engine._lazy import lazy_exports

_EXPORTS = {
    "LOSS_WEIGHTS": "losses", "sigmoid_focal_loss": "losses", "dice_loss": "losses", "iou_l1_loss": "losses",
    "objectness_loss": "losses", "unsamv2_loss": "losses",
    "sample_point_in_mask": "clicks", "sample_correction_click": "clicks", "batch_initial_clicks": "clicks",
    "batch_correction_clicks": "clicks",
    "AugmentConfig": "augment", "augment_sample": "augment",
    "PseudoLabelDataset": "dataset", "TrainSample": "dataset",
    "FinetuneConfig": "trainer", "FinetuneResult": "trainer", "finetune": "trainer", "select_trainable": "trainer",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
