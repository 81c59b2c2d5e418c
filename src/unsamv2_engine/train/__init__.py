"""Fine-tuning of UnSAMv2 on pseudo-labels (docs/model-reference.md §4; see ``docs/fine-tuning.md``).

Modules, one concept each:

* :mod:`.losses`: SAM 2 style multi-step loss (focal x20 + dice + IoU-L1 + objectness);
* :mod:`.clicks`: seeded click simulation (uniform first click, correction clicks from the error);
* :mod:`.augment`: flips, 90 degree rotations, mild affine, intensity jitter;
* :mod:`.dataset`: images + pseudo-label JSONs -> deterministic training samples;
* :mod:`.trainer`: the training loop (``finetune``), checkpoints, resume, validation, adapter output;
* :mod:`.folder_run`: a run from folders (base, pseudo-labels, dataset, training), shared by
  ``unsamv2 finetune`` and a server's FineTune;
* :mod:`.distributed`: DDP under ``torchrun``.

The ``unsamv2 finetune`` command is :mod:`unsamv2_engine.cli.finetune`.

Named ``train`` (never ``training``: sam2 installs a top-level package of that name).
"""

from __future__ import annotations

from unsamv2_engine.train.augment import AugmentConfig, augment_sample
from unsamv2_engine.train.clicks import (
                                         batch_correction_clicks,
                                         batch_initial_clicks,
                                         sample_correction_click,
                                         sample_point_in_mask,
)
from unsamv2_engine.train.dataset import PseudoLabelDataset, TrainSample
from unsamv2_engine.train.losses import (
                                         LOSS_WEIGHTS,
                                         dice_loss,
                                         iou_l1_loss,
                                         objectness_loss,
                                         sigmoid_focal_loss,
                                         unsamv2_loss,
)
from unsamv2_engine.train.trainer import FinetuneConfig, FinetuneResult, finetune, select_trainable

__all__ = [
    "AugmentConfig", "FinetuneConfig", "FinetuneResult", "LOSS_WEIGHTS", "PseudoLabelDataset", "TrainSample",
    "augment_sample", "batch_correction_clicks", "batch_initial_clicks", "dice_loss", "finetune",
    "iou_l1_loss", "objectness_loss", "sample_correction_click", "sample_point_in_mask", "select_trainable",
    "sigmoid_focal_loss", "unsamv2_loss",
]
