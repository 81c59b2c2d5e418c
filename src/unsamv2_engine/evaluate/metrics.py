"""Interactive-segmentation metrics from per-object IoU sequences (RITM ``isegm/inference/utils.py``).

* :func:`iou`: ``|pred & gt & ~ign| / |(pred | gt) & ~ign|``.
* :func:`noc`: the 1-based index of the first click with IoU >= k, or ``max_clicks`` if never.
* :func:`best_iou_per_truth`: for each true mask, the best IoU any proposal reaches (recall at a
  threshold is the share of true masks whose best IoU reaches it).
* :func:`noc_summary`: NoC@k (mean), NoF@k, 1-IoU (mean IoU after the first click), the mean
  IoU-vs-click curve and seconds per click, as ``compute_noc_metric`` and the evaluation scripts
  compute them.

NoF follows RITM exactly: an object counts as a failure when its NoC equals ``max_clicks``,
which includes an object that first reaches k *at* the last click. ``fail_strict`` counts only
objects that never reach k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_THRESHOLDS", "best_iou_per_truth", "iou", "iou_curve", "noc", "noc_summary"]

DEFAULT_THRESHOLDS = (0.80, 0.85, 0.90)


def iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two bool ``[H, W]`` masks, leaving out ``ignore`` pixels.

    Returns 1.0 when both masks are empty (outside ``ignore``); RITM would divide 0 by 0.
    """
    gt = np.asarray(gt, bool)
    pred = np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"masks of different shapes: {gt.shape} and {pred.shape}")
    if ignore is not None:
        valid = ~np.asarray(ignore, bool)
        gt, pred = gt & valid, pred & valid
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(gt & pred) / union)


def noc(ious: Sequence[float] | np.ndarray, threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold``: first 1-based index with IoU >= it, else ``max_clicks``."""
    arr = np.asarray(ious, np.float64)
    hits = np.nonzero(arr >= threshold)[0]
    return int(hits[0]) + 1 if hits.size else int(max_clicks)


def iou_curve(ious: Sequence[float] | np.ndarray, max_clicks: int = 20) -> np.ndarray:
    """IoU after clicks 1..``max_clicks``; a sequence stopped early is padded with its last IoU.

    The padding assumes the mask stays as good once the target was reached; for exact curves run
    the loop with a target above 1 (RITM's ``--iou-analysis`` uses 1.01). An empty sequence gives NaN.
    """
    arr = np.asarray(ious, np.float64)[:max_clicks]
    out = np.full(max_clicks, np.nan if arr.size == 0 else arr[-1])
    out[:arr.size] = arr
    return out


def noc_summary(sequences: Sequence[Sequence[float]], *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                max_clicks: int = 20, seconds: Sequence[float] | None = None) -> dict[str, Any]:
    """Summary metrics of a set of objects.

    Parameters
    ----------
    sequences : sequence of sequences of float
        Per object, the IoU after each click (as run; possibly stopped early).
    thresholds : sequence of float
        IoU levels k of NoC@k / NoF@k.
    max_clicks : int
        The click budget (NoC of an object that never reaches k).
    seconds : sequence of float, optional
        Per object, the total prediction time; gives seconds per click.

    Returns
    -------
    dict
        ``n_objects``; ``noc`` {"80": mean, ...}; ``nof`` {"80": count} (RITM: NoC == max_clicks);
        ``fail_strict`` {"80": count} (never reached); ``iou_1`` (mean IoU after the first click,
        the papers' "1-IoU"); ``miou_curve`` (mean of :func:`iou_curve`, length ``max_clicks``);
        ``mean_clicks`` (clicks actually simulated per object); ``seconds_per_click``.
    """
    seqs = [np.asarray(s, np.float64) for s in sequences]
    keys = [f"{round(100 * t):d}" for t in thresholds]
    out: dict[str, Any] = {"n_objects": len(seqs), "max_clicks": int(max_clicks),
                           "thresholds": [float(t) for t in thresholds]}
    if not seqs:
        out.update(noc={k: None for k in keys}, nof={k: 0 for k in keys}, fail_strict={k: 0 for k in keys},
                   iou_1=None, miou_curve=[], mean_clicks=None, seconds_per_click=None)
        return out
    nocs = {k: np.array([noc(s, t, max_clicks) for s in seqs]) for k, t in zip(keys, thresholds)}
    out["noc"] = {k: float(v.mean()) for k, v in nocs.items()}
    out["nof"] = {k: int((v == max_clicks).sum()) for k, v in nocs.items()}
    out["fail_strict"] = {k: int(sum(not np.any(s[:max_clicks] >= t) for s in seqs))
                          for k, t in zip(keys, thresholds)}
    firsts = [s[0] for s in seqs if s.size]
    out["iou_1"] = float(np.mean(firsts)) if firsts else None
    out["miou_curve"] = [float(v) for v in np.nanmean(np.stack([iou_curve(s, max_clicks) for s in seqs]), axis=0)]
    n_clicks = sum(int(s.size) for s in seqs)
    out["mean_clicks"] = n_clicks / len(seqs)
    out["seconds_per_click"] = float(sum(seconds) / n_clicks) if seconds is not None and n_clicks else None
    return out


def best_iou_per_truth(proposals: np.ndarray | Sequence[np.ndarray],
                       truths: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """``[T]`` float: for each true mask, the highest IoU with any proposal (0 without proposals).

    proposals ``[N, H, W]`` and truths ``[T, H, W]``, boolean (or 0/1) masks of one image.
    """
    truths = [np.asarray(t, bool).reshape(-1) for t in truths]
    proposals = [np.asarray(p, bool).reshape(-1) for p in proposals]
    if not truths:
        return np.zeros(0, np.float64)
    if not proposals:
        return np.zeros(len(truths), np.float64)
    flat = np.stack(proposals).astype(np.float32)
    areas = flat.sum(axis=1)
    best = np.empty(len(truths), np.float64)
    for i, truth in enumerate(truths):
        t = truth.astype(np.float32)
        inter = flat @ t
        union = areas + t.sum() - inter
        best[i] = float(np.max(np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)))
    return best
