r"""Whole-image metrics: class-agnostic average recall (AR) as COCOeval computes it, and sweep nestedness.

AR (docs/evaluation.md §3; UnSAMv2 ``evaluation/whole_image/check.py``):
``COCOeval(gt, dt, "segm")`` with ``params.useCats = 0`` (every GT and detection in one class) and
``params.maxDets = [1, 100, 1000]``. Per image, detections are sorted by score and cut to maxDet;
at each IoU threshold t in 0.50:0.05:0.95 each detection matches the unmatched GT of highest mask
IoU >= t. Recall(t) pools matched GTs over the dataset. AR@N is the mean of recall over the 10
thresholds at maxDets N, area "all": ``stats[7]`` is AR@100 and ``stats[8]`` AR@1000 with these
maxDets (``summarize`` builds ``stats[6:9]`` from ``maxDets[0:3]``); AR_s/m/l (``stats[9:12]``)
use areas < 32², 32²-96², > 96² px at the last maxDets. False positives do not lower AR.

Nestedness (docs/evaluation.md §2.4): for the masks of one prompt at increasing g, the fraction of
pairs g1 < g2 with ``area(M1) <= area(M2)`` and the fraction with ``|M1 \ M2| / |M1| < tol``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["AR_MAX_DETS", "average_recall", "detections_from_masks", "gt_from_masks", "sweep_nestedness"]

AR_MAX_DETS = (1, 100, 1000)
AREA_NAMES = ("all", "small", "medium", "large")


def gt_from_masks(masks: Sequence[np.ndarray], image_id: int = 1) -> dict[str, Any]:
    """A COCO GT dict for one image from bool ``[H, W]`` masks (class-agnostic, ``iscrowd=0``)."""
    from unsamv2_engine.io.coco import coco_document, mask_to_annotation

    if not len(masks):
        raise ValueError("give at least one GT mask (the image size comes from them)")
    h, w = np.asarray(masks[0]).shape
    anns = [mask_to_annotation(np.asarray(m, bool), ann_id=i + 1, image_id=image_id) for i, m in enumerate(masks)]
    return coco_document([{"id": image_id, "height": int(h), "width": int(w), "file_name": f"{image_id}"}], anns)


def detections_from_masks(predictions: Sequence[tuple[np.ndarray, float]], image_id: int = 1) -> list[dict[str, Any]]:
    """COCO detection results ``[{"image_id", "category_id": 1, "segmentation", "score"}]`` from (mask, score) pairs."""
    from unsamv2_engine.io.coco import encode_rle

    return [{"image_id": image_id, "category_id": 1, "segmentation": encode_rle(np.asarray(m, bool)),
             "score": float(s)} for m, s in predictions]


def _as_coco_gt(gt: Mapping[str, Any] | Sequence[np.ndarray]) -> dict[str, Any]:
    if isinstance(gt, Mapping):
        doc = {k: v for k, v in gt.items()}
        doc.setdefault("categories", [{"id": 1, "name": "fg"}])
        anns = []
        for ann in doc.get("annotations", []):
            ann = dict(ann)
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                from pycocotools import mask as mask_utils

                seg = ann["segmentation"]
                ann["area"] = float(mask_utils.area({**seg, "counts": seg["counts"].encode("ascii")})
                                    if isinstance(seg.get("counts"), str) else mask_utils.area(seg))
            anns.append(ann)
        doc["annotations"] = anns
        return doc
    return gt_from_masks(gt)


def _as_detections(predictions: Any, image_id: int) -> list[dict[str, Any]]:
    if isinstance(predictions, Mapping):  # a COCO document with annotations
        predictions = predictions.get("annotations", [])
    preds = list(predictions)
    if preds and not isinstance(preds[0], Mapping):
        return detections_from_masks(preds, image_id)
    out = []
    for det in preds:
        det = dict(det)
        # The score UnSAMv2's check.py uses: predicted_iou, then score, then 1.0.
        det["score"] = float(det.get("predicted_iou", det.get("score", 1.0)))
        out.append(det)
    return out


def average_recall(gt: Mapping[str, Any] | Sequence[np.ndarray], predictions: Any, *,
                   max_dets: Sequence[int] = AR_MAX_DETS) -> dict[str, Any]:
    """Class-agnostic mask AR with pycocotools' ``COCOeval``.

    Parameters
    ----------
    gt : dict or sequence of np.ndarray
        A COCO GT dict (``images``, ``annotations`` with RLE/polygon ``segmentation``), or the bool
        masks of one image (image id 1).
    predictions : sequence or dict
        COCO detections (dicts with ``image_id``, ``segmentation``, ``score`` or ``predicted_iou``;
        a COCO document's ``annotations`` are taken), or ``(mask, score)`` pairs for image 1.
    max_dets : sequence of int
        COCOeval ``maxDets`` (three values: ``stats[6:9]`` are AR at each).

    Returns
    -------
    dict
        ``AR@<n>`` for each maxDets; ``AR`` (at the last maxDets), ``AR_per_iou`` {"0.50": recall,
        ...} at the last maxDets, area "all"; ``AR_small`` / ``AR_medium`` / ``AR_large`` (None if no
        GT in the range); ``stats`` (COCOeval's 12 numbers); ``n_images``, ``n_gt``, ``n_detections``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    max_dets = [int(m) for m in max_dets]
    if len(max_dets) != 3:
        raise ValueError("COCOeval's summary needs exactly three maxDets, e.g. 1,100,1000")
    doc = _as_coco_gt(gt)
    image_ids = [im["id"] for im in doc["images"]]
    default_image = image_ids[0] if len(image_ids) == 1 else 1
    dets = _as_detections(predictions, default_image)
    for det in dets:
        det["category_id"] = 1
    for ann in doc["annotations"]:
        ann["category_id"] = 1
    doc["categories"] = [{"id": 1, "name": "fg"}]
    unknown = {d["image_id"] for d in dets} - set(image_ids)
    if unknown:
        raise ValueError(f"detections refer to image ids not in the GT: {sorted(unknown)[:5]}")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = doc
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": doc["images"], "categories": doc["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.useCats = 0
        ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    recall = ev.eval["recall"]  # [T, K=1, A, M], -1 where no GT

    def mean_recall(values: np.ndarray) -> float | None:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else None

    out: dict[str, Any] = {f"AR@{m}": mean_recall(recall[:, :, 0, i]) for i, m in enumerate(max_dets)}
    out["AR"] = out[f"AR@{max_dets[-1]}"]
    out["AR_per_iou"] = {f"{t:.2f}": mean_recall(recall[i, :, 0, -1]) for i, t in enumerate(ev.params.iouThrs)}
    for a, name in enumerate(AREA_NAMES[1:], start=1):
        out[f"AR_{name}"] = mean_recall(recall[:, :, a, -1])
    out["stats"] = [float(s) for s in ev.stats]
    out["max_dets"] = max_dets
    out["n_images"] = len(image_ids)
    out["n_gt"] = sum(1 for a in doc["annotations"] if not a.get("iscrowd", 0))
    out["n_detections"] = len(dets)
    return out


def sweep_nestedness(masks: np.ndarray | Sequence[np.ndarray], granularities: Sequence[float] | None = None, *,
                     tol: float = 0.05) -> dict[str, Any]:
    r"""Monotonicity and nestedness of one prompt's masks over granularity.

    Parameters
    ----------
    masks : np.ndarray
        bool ``[G, H, W]``.
    granularities : sequence of float, optional
        The g of each mask (sorted here); default: the given order is increasing g.
    tol : float
        Largest fraction of M1 allowed outside M2 for the pair to count as nested.

    Returns
    -------
    dict
        ``n_pairs``; ``area_monotone`` (fraction of pairs g1 < g2 with area(M1) <= area(M2));
        ``nested`` (fraction with ``|M1 \ M2| / |M1| < tol``; an empty M1 is nested);
        ``both`` (fraction meeting both); ``areas`` (in g order).
    """
    m = np.asarray(masks, bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be [G, H, W], got shape {m.shape}")
    order = np.arange(len(m)) if granularities is None else np.argsort(np.asarray(granularities, float), kind="stable")
    m = m[order].reshape(len(m), -1)
    areas = m.sum(axis=1)
    mono = nested = both = pairs = 0
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            pairs += 1
            a_ok = areas[i] <= areas[j]
            outside = np.count_nonzero(m[i] & ~m[j])
            n_ok = areas[i] == 0 or outside / areas[i] < tol
            mono += a_ok
            nested += n_ok
            both += a_ok and n_ok
    frac = (lambda k: float(k / pairs)) if pairs else (lambda k: None)
    return {"n_pairs": pairs, "area_monotone": frac(mono), "nested": frac(nested), "both": frac(both),
            "areas": [int(a) for a in areas], "tol": float(tol)}
