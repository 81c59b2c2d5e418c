"""Run the evaluations over a dataset: interactive NoC / 1-IoU per mode, granularity sweeps, whole-image AR.

>>> ds = load_dataset("bench/", max_objects_per_image=20)
>>> res = evaluate_interactive(ds, SessionPredictor(model, mask_threshold=-1), parse_modes("oracle,level"))
>>> res.summary["modes"]["oracle"]["all"]["noc"]["90"]
>>> write_report("out/", interactive=res)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsamv2_engine.evaluate.clicker import Clicker
from unsamv2_engine.evaluate.datasets import EvalDataset, EvalItem, dataset_to_coco
from unsamv2_engine.evaluate.interactive import DEFAULT_GRID, Mode, ObjectResult, evaluate_object
from unsamv2_engine.evaluate.metrics import DEFAULT_THRESHOLDS, iou, noc_summary
from unsamv2_engine.evaluate.predictors import Predictor, has_candidates, sweep_masks
from unsamv2_engine.evaluate.whole_image import AR_MAX_DETS, average_recall, sweep_nestedness

__all__ = ["InteractiveResults", "evaluate_interactive", "evaluate_whole_image", "summarize_objects"]

Progress = Callable[[str], None]


@dataclass
class InteractiveResults:
    """Everything :func:`evaluate_interactive` measured.

    Attributes
    ----------
    objects : list of ObjectResult
        One per (mode, GT object).
    sweeps : list of dict
        One per GT object (first click, masks at each g of the sweep grid): ``areas``,
        ``area_ratio`` (area / GT area), ``ious``, ``nestedness``.
    summary : dict
        ``modes`` {mode: {"all": metrics, "per_level": {level: metrics}, "granularity": ...}},
        ``sweep`` (mean nestedness), ``embed_seconds``.
    config : dict
        The settings, the dataset and the predictor, for the record.
    """

    objects: list[ObjectResult] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _describe(predictor: object | None) -> dict[str, Any] | None:
    if predictor is None:
        return None
    describe = getattr(predictor, "describe", None)
    return describe() if callable(describe) else {"predictor": type(predictor).__name__}


def _check_modes(modes: Sequence[Mode], predictor: Predictor, baseline: Predictor | None) -> None:
    sam = baseline if baseline is not None else predictor
    for mode in modes:
        if mode.kind in ("sam-single", "sam-oracle3") and getattr(sam, "has_granularity", False):
            raise ValueError(f"mode {mode.name} evaluates plain SAM 2.1, but the model has a granularity module; "
                             "give a SAM 2.1 checkpoint as the baseline (--baseline-checkpoint / --baseline-model)")
        if mode.kind == "sam-oracle3" and not has_candidates(sam):
            raise ValueError("mode sam-oracle3 needs a predictor with SAM's multimask candidates")


def evaluate_interactive(dataset: EvalDataset | Sequence[EvalItem], predictor: Predictor, modes: Sequence[Mode], *,
                         baseline: Predictor | None = None, max_clicks: int = 20, target_iou: float = 0.9,
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS, stop_early: bool = True,
                         grid: Sequence[float] = DEFAULT_GRID, oracle_cutoff: bool = True,
                         sweep_grid: Sequence[float] | None = DEFAULT_GRID, sweep_tol: float = 0.05,
                         progress: Progress | None = None) -> InteractiveResults:
    """Interactive evaluation of every target object of ``dataset`` in every mode.

    Parameters
    ----------
    dataset : EvalDataset or sequence of EvalItem
    predictor : Predictor
        The model for the granularity modes (``oracle``, ``fixed``, ``level``).
    modes : sequence of Mode
    baseline : Predictor, optional
        The plain SAM 2.1 model for ``sam-single`` / ``sam-oracle3`` (default: ``predictor``).
    max_clicks : int
        Click budget (20).
    target_iou : float
        The loop stops at this IoU (and the oracle minimises clicks to it). Use the largest NoC
        threshold (0.9); above 1 for full curves.
    thresholds : sequence of float
        NoC@k / NoF@k levels.
    stop_early : bool
        False: simulate all ``max_clicks`` clicks (exact IoU-vs-click curves).
    grid : sequence of float
        The oracle's granularities (0.1 .. 1.0).
    oracle_cutoff : bool
        The oracle's early cut-off (a pure speed-up).
    sweep_grid : sequence of float or None
        Granularities of the first-click sweep (mask area vs g, nestedness); None: no sweep. Only
        run when the predictor has a granularity module (or does not say).
    sweep_tol : float
        Nestedness tolerance.
    progress : callable, optional
        Called with one line per image.

    Returns
    -------
    InteractiveResults
    """
    modes = list(modes)
    _check_modes(modes, predictor, baseline)
    results = InteractiveResults()
    embed_seconds: list[float] = []
    do_sweep = sweep_grid is not None and bool(getattr(predictor, "has_granularity", True))
    needs_main = do_sweep or any(m.needs_granularity_model for m in modes)
    needs_base = baseline is not None and any(not m.needs_granularity_model for m in modes)
    n_items = len(dataset)
    for index, item in enumerate(dataset):
        targets = item.target_objects
        if not targets:
            continue
        start = time.perf_counter()
        if needs_main or baseline is None:
            predictor.set_image(item.image)
        if needs_base:
            baseline.set_image(item.image)
        embed_seconds.append(time.perf_counter() - start)
        for obj in targets:
            others = [o.mask for o in item.objects if o.id != obj.id]
            for mode in modes:
                model = baseline if baseline is not None and not mode.needs_granularity_model else predictor
                run, extra = evaluate_object(model, mode, obj.mask, others=others, ignore=item.ignore,
                                             max_clicks=max_clicks, target_iou=target_iou, stop_early=stop_early,
                                             grid=grid, oracle_cutoff=oracle_cutoff)
                if obj.granularity is not None:
                    extra["gt_granularity"] = obj.granularity
                results.objects.append(ObjectResult(
                    mode=mode.name, image=item.name, object_id=obj.id, level=obj.level,
                    level_index=obj.level_index, area=obj.area, granularity=run.granularity,
                    ious=[float(v) for v in run.ious], clicks=[[c.row, c.col, int(c.is_positive)] for c in run.clicks],
                    seconds=[float(s) for s in run.seconds], extra=extra))
            if do_sweep:
                results.sweeps.append(_first_click_sweep(predictor, item, obj, list(sweep_grid), sweep_tol))
        if progress is not None:
            progress(f"[{index + 1}/{n_items}] {item.name}: {len(targets)} objects x {len(modes)} modes")
    results.summary = summarize_objects(results.objects, thresholds=thresholds, max_clicks=max_clicks)
    results.summary["sweep"] = _summarize_sweeps(results.sweeps)
    results.summary["embed_seconds"] = float(np.mean(embed_seconds)) if embed_seconds else None
    results.config = {
        "modes": [m.name for m in modes], "max_clicks": int(max_clicks), "target_iou": float(target_iou),
        "thresholds": [float(t) for t in thresholds], "stop_early": bool(stop_early),
        "oracle_grid": [float(g) for g in grid], "oracle_cutoff": bool(oracle_cutoff),
        "sweep_grid": None if not do_sweep else [float(g) for g in sweep_grid], "sweep_tol": float(sweep_tol),
        "curve_padding": "IoU sequences stopped early are padded with their last IoU in miou_curve",
        "click_simulator": "RITM (first argmax of the padded EDT of the larger error; ties negative)",
        "dataset": dataset.describe() if isinstance(dataset, EvalDataset) else {"n_images": n_items},
        "predictor": _describe(predictor), "baseline": _describe(baseline),
    }
    return results


def _first_click_sweep(predictor: Predictor, item: EvalItem, obj: Any, grid: list[float], tol: float) -> dict[str, Any]:
    """Masks of the object's first click at each g: areas, IoUs, nestedness."""
    click = Clicker(obj.mask, item.ignore).make_next_click(np.zeros_like(obj.mask))
    masks = sweep_masks(predictor, np.array([[click.col, click.row]], np.float32), np.array([1], np.int32), grid)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    nest = sweep_nestedness(masks, grid, tol=tol)
    return {"image": item.name, "object_id": obj.id, "level": obj.level, "level_index": obj.level_index,
            "area": obj.area, "click": [click.row, click.col], "granularities": grid,
            "areas": [int(a) for a in areas], "area_ratio": [float(a / max(obj.area, 1)) for a in areas],
            "ious": [iou(obj.mask, m, item.ignore) for m in masks],
            "nestedness": {k: nest[k] for k in ("n_pairs", "area_monotone", "nested", "both")}}


def _summarize_sweeps(sweeps: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not sweeps:
        return None
    out: dict[str, Any] = {"n_objects": len(sweeps)}
    for key in ("area_monotone", "nested", "both"):
        vals = [s["nestedness"][key] for s in sweeps if s["nestedness"][key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    # The g whose first-click mask matches the GT best, per object (a one-click oracle).
    best = [s["granularities"][int(np.argmax(s["ious"]))] for s in sweeps]
    out["best_g_by_level"] = _mean_by_level([s["level"] for s in sweeps], best)
    return out


def _mean_by_level(levels: Sequence[str | None], values: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for level, v in zip(levels, values):
        groups.setdefault(str(level) if level is not None else "all", []).append(float(v))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(x, y)[0]
    return None if not np.isfinite(rho) else float(rho)


def summarize_objects(objects: Sequence[ObjectResult], *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                      max_clicks: int = 20) -> dict[str, Any]:
    """Per mode: metrics over all objects, per level, and the granularities used.

    Returns
    -------
    dict
        ``{"modes": {mode: {"all": noc_summary, "per_level": {level: noc_summary},
        "granularity": {...}}}}``. ``granularity`` (modes with a g) holds the mean g overall and
        per level, and (oracle) Spearman rho of the chosen g against log GT area and level number.
    """
    by_mode: dict[str, list[ObjectResult]] = {}
    for r in objects:
        by_mode.setdefault(r.mode, []).append(r)
    out: dict[str, Any] = {"modes": {}}
    for mode, rows in by_mode.items():
        def summary(rs: Sequence[ObjectResult]) -> dict[str, Any]:
            return noc_summary([r.ious for r in rs], thresholds=thresholds, max_clicks=max_clicks,
                               seconds=[sum(r.seconds) for r in rs])

        entry: dict[str, Any] = {"all": summary(rows)}
        levels = sorted({r.level for r in rows if r.level is not None})
        if levels:
            entry["per_level"] = {lv: summary([r for r in rows if r.level == lv]) for lv in levels}
        gs = [(r, r.granularity) for r in rows if r.granularity is not None]
        if gs:
            g_info: dict[str, Any] = {"mean": float(np.mean([g for _, g in gs]))}
            if levels:
                g_info["mean_by_level"] = _mean_by_level([r.level for r, _ in gs], [g for _, g in gs])
            if mode == "oracle":
                g_info["spearman_vs_log_area"] = _spearman([g for _, g in gs], [np.log(max(r.area, 1)) for r, _ in gs])
                indexed = [(r.level_index, g) for r, g in gs if r.level_index is not None]
                g_info["spearman_vs_level_index"] = _spearman([g for _, g in indexed], [i for i, _ in indexed])
                g_info["oracle_seconds_per_object"] = float(np.mean(
                    [r.extra.get("seconds_all_granularities", 0.0) for r in rows]))
            entry["granularity"] = g_info
        out["modes"][mode] = entry
    return out


def evaluate_whole_image(gt: EvalDataset | Mapping[str, Any] | Sequence[np.ndarray], predictions: Any, *,
                         max_dets: Sequence[int] = AR_MAX_DETS) -> dict[str, Any]:
    """Class-agnostic AR of detections against a dataset's GT (every object of every level).

    Parameters
    ----------
    gt : EvalDataset, COCO dict or sequence of masks
        An :class:`EvalDataset` is converted with :func:`dataset_to_coco` (image ids 1..N in
        dataset order); detections may then name their image by ``image_id`` (int), or by image
        name / ``file_name`` (a string ``image_id`` or a ``file_name`` field).
    predictions : list of dict, COCO document or list of (mask, score)
        As :func:`unsamv2_engine.evaluate.whole_image.average_recall` takes them.
    max_dets : sequence of int
        COCOeval maxDets.
    """
    if isinstance(gt, EvalDataset):
        doc, ids = dataset_to_coco(gt)
        if isinstance(predictions, Mapping):
            predictions = predictions.get("annotations", [])
        preds = list(predictions)
        if preds and isinstance(preds[0], Mapping):
            mapped = []
            for det in preds:
                det = dict(det)
                key = det.get("image_id")
                if isinstance(key, str) or key is None:
                    name = key if key is not None else det.get("file_name")
                    if name not in ids:
                        raise ValueError(f"detection names image {name!r}, which is not in the dataset")
                    det["image_id"] = ids[name]
                mapped.append(det)
            preds = mapped
        result = average_recall(doc, preds, max_dets=max_dets)
        result["gt_source"] = gt.describe()
        return result
    return average_recall(gt, predictions, max_dets=max_dets)


def stderr_progress(message: str) -> None:
    """A progress callback that prints to stderr."""
    print(message, file=sys.stderr, flush=True)
