"""Evaluation of interactive and whole-image segmentation (see ``docs/evaluation.md``).

Modules, one concept each:

* :mod:`.clicker`: the RITM click simulator;
* :mod:`.metrics`: IoU, NoC / NoF / 1-IoU / IoU-vs-click curves;
* :mod:`.predictors`: the ``Predictor`` protocol and the ``ImageSession`` adapter;
* :mod:`.interactive`: the interaction loop and the granularity modes (oracle, fixed, level, SAM);
* :mod:`.whole_image`: class-agnostic AR with COCOeval, sweep nestedness;
* :mod:`.datasets`: image + label pairs, COCO, synthetic samples;
* :mod:`.runner`: dataset-level evaluation;
* :mod:`.report`: JSON / CSV / markdown / PNG output.

The ``unsamv2 evaluate`` command is :mod:`unsamv2_engine.cli.evaluate`.

The submodules import numpy / scipy; only the model adapter imports torch, when built.
"""

from __future__ import annotations

from unsamv2_engine.evaluate.clicker import Click, Clicker, next_click
from unsamv2_engine.evaluate.datasets import EvalDataset, EvalItem, GTObject, load_dataset
from unsamv2_engine.evaluate.interactive import DEFAULT_GRID, Mode, ObjectResult, parse_mode, parse_modes
from unsamv2_engine.evaluate.metrics import iou, noc, noc_summary
from unsamv2_engine.evaluate.predictors import Predictor, PredictorOutput, SessionPredictor
from unsamv2_engine.evaluate.runner import InteractiveResults, evaluate_interactive, evaluate_whole_image
from unsamv2_engine.evaluate.whole_image import average_recall, sweep_nestedness

__all__ = [
    "Click", "Clicker", "DEFAULT_GRID", "EvalDataset", "EvalItem", "GTObject", "InteractiveResults", "Mode",
    "ObjectResult", "Predictor", "PredictorOutput", "SessionPredictor", "average_recall",
    "evaluate_interactive", "evaluate_whole_image", "iou", "load_dataset", "next_click", "noc", "noc_summary",
    "parse_mode", "parse_modes", "sweep_nestedness",
]
