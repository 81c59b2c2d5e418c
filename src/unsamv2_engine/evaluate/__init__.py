"""Evaluation of interactive and whole-image segmentation (see ``docs/evaluation.md``).

Modules, one concept each:

* :mod:`.clicker`: the RITM click simulator;
* :mod:`.metrics`: IoU, NoC / NoF / 1-IoU / IoU-vs-click curves;
* :mod:`.predictors`: the ``Predictor`` protocol and the ``ImageSession`` adapter;
* :mod:`.interactive`: the interaction loop and the granularity modes (oracle, fixed, level, SAM);
* :mod:`.whole_image`: class-agnostic AR with COCOeval, sweep nestedness;
* :mod:`.datasets`: image + label pairs, COCO, synthetic samples;
* :mod:`.runner`: dataset-level evaluation;
* :mod:`.report`: JSON / CSV / markdown / PNG output;
* :mod:`.cli`: the ``unsamv2 evaluate`` command.

Importing this package imports nothing heavy: its names load on first use. The submodules import
numpy / scipy; only the model adapter imports torch, when built.
"""

from __future__ import annotations

from unsamv2_engine._lazy import lazy_exports

# Names re-exported lazily (PEP 562), so that ``import unsamv2_engine.evaluate.cli`` (which the
# ``unsamv2`` command line does for ``--help``) stays standard-library only.
_EXPORTS = {
    "Click": "clicker", "Clicker": "clicker", "next_click": "clicker",
    "EvalDataset": "datasets", "EvalItem": "datasets", "GTObject": "datasets", "load_dataset": "datasets",
    "DEFAULT_GRID": "interactive", "Mode": "interactive", "ObjectResult": "interactive",
    "parse_mode": "interactive", "parse_modes": "interactive",
    "iou": "metrics", "noc": "metrics", "noc_summary": "metrics",
    "Predictor": "predictors", "PredictorOutput": "predictors", "SessionPredictor": "predictors",
    "InteractiveResults": "runner", "evaluate_interactive": "runner", "evaluate_whole_image": "runner",
    "average_recall": "whole_image", "sweep_nestedness": "whole_image",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
