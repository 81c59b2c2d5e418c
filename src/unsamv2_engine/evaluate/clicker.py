"""The RITM click simulator (``isegm/inference/clicker.py``, ``Clicker._get_next_click``).

Every interactive-segmentation benchmark of RITM, SimpleClick, GraCo and UnSAMv2 places clicks
with this rule (``docs/evaluation.md``; docs/evaluation.md §2.1):

1. ``FN = gt & ~pred & ~ignore`` and ``FP = ~gt & pred & ~ignore``;
2. both are padded by one pixel of zeros (the image border counts as boundary), Euclidean
   distance transformed (``cv2.distanceTransform(DIST_L2, 0)``; here
   :func:`scipy.ndimage.distance_transform_edt`, cast to float32 as cv2 returns) and unpadded;
3. both maps are multiplied by the not-clicked map, so a pixel is never clicked twice;
4. ``is_positive = max(dt_FN) > max(dt_FP)``: strict, a tie gives a *negative* click;
5. the click goes to the first pixel, in raster order, where the chosen map is maximal.

The first click on an empty prediction is therefore always positive, at the innermost pixel of
the object (its largest inscribed circle's centre). Clicks are ``(row, col)``; predictors take
``(x, y) = (col, row)`` (:meth:`Clicker.points_xy`).

Degenerate case kept from RITM: when the prediction has no error left (or every erroneous pixel
was clicked already) both maxima are 0, the comparison gives a negative click, and it lands on the
first pixel of the image, ``(0, 0)``, even if that pixel was clicked before. The interaction loop
only reaches this state when it runs past a perfect prediction (target IoU above 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

__all__ = ["Click", "Clicker", "error_distance_maps", "next_click"]

IGNORE_LABEL = -1


@dataclass(frozen=True)
class Click:
    """One simulated click.

    Attributes
    ----------
    row, col : int
        Pixel position (``row`` = y, ``col`` = x).
    is_positive : bool
        True for a foreground click (label 1), False for a background click (label 0).
    """

    row: int
    col: int
    is_positive: bool

    @property
    def xy(self) -> tuple[int, int]:
        """``(x, y) = (col, row)``, the order predictors take."""
        return self.col, self.row

    @property
    def label(self) -> int:
        """1 for a positive click, 0 for a negative one."""
        return int(self.is_positive)


def _edt_padded(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest 0 pixel, with a 1 px zero border; float32 like cv2."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return distance_transform_edt(padded).astype(np.float32)[1:-1, 1:-1]


def error_distance_maps(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
                        not_clicked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distance maps of the false-negative and false-positive regions (steps 1-3 of the rule).

    Parameters
    ----------
    gt, pred : np.ndarray
        bool ``[H, W]`` ground truth and current prediction.
    ignore : np.ndarray, optional
        bool ``[H, W]``, pixels that count neither way.
    not_clicked : np.ndarray, optional
        bool ``[H, W]``, False where a click was already placed.

    Returns
    -------
    (np.ndarray, np.ndarray)
        float32 ``[H, W]`` maps ``dt_FN`` and ``dt_FP``, zero outside their regions and on clicked pixels.
    """
    gt = np.asarray(gt, bool)
    pred = np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt and pred must be 2-D masks of one shape, got {gt.shape} and {pred.shape}")
    valid = np.ones_like(gt) if ignore is None else ~np.asarray(ignore, bool)
    fn = gt & ~pred & valid
    fp = ~gt & pred & valid
    dt_fn, dt_fp = _edt_padded(fn), _edt_padded(fp)
    if not_clicked is not None:
        keep = np.asarray(not_clicked, np.float32)
        dt_fn, dt_fp = dt_fn * keep, dt_fp * keep
    return dt_fn, dt_fp


def next_click(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
               not_clicked: np.ndarray | None = None) -> Click:
    """The RITM click for ``gt`` given ``pred`` (see the module docstring).

    Parameters
    ----------
    gt, pred, ignore, not_clicked : np.ndarray
        As in :func:`error_distance_maps`.

    Returns
    -------
    Click
        Positive at the deepest false-negative pixel if that region is strictly deeper than the
        false-positive one, else negative at the deepest false-positive pixel; the first such
        pixel in raster order.
    """
    dt_fn, dt_fp = error_distance_maps(gt, pred, ignore, not_clicked)
    fn_max, fp_max = dt_fn.max(), dt_fp.max()
    is_positive = bool(fn_max > fp_max)
    chosen, best = (dt_fn, fn_max) if is_positive else (dt_fp, fp_max)
    rows, cols = np.nonzero(chosen == best)  # raster order, as np.where in RITM
    return Click(int(rows[0]), int(cols[0]), is_positive)


class Clicker:
    """Click sequence for one ground-truth object (RITM ``Clicker``).

    Parameters
    ----------
    gt : np.ndarray
        ``[H, W]`` bool mask, or an integer map where 1 is the object, ``ignore_label`` (-1) is
        ignored and anything else is background.
    ignore : np.ndarray, optional
        bool ``[H, W]`` extra ignore mask (combined with ``ignore_label`` pixels of an integer ``gt``).
    ignore_label : int
        Value of ignored pixels in an integer ``gt``.
    """

    def __init__(self, gt: np.ndarray, ignore: np.ndarray | None = None, *, ignore_label: int = IGNORE_LABEL) -> None:
        gt = np.asarray(gt)
        if gt.ndim != 2:
            raise ValueError(f"gt must be a 2-D mask, got shape {gt.shape}")
        if gt.dtype == bool:
            self.gt = gt
            ign = np.zeros(gt.shape, bool)
        else:
            self.gt = gt == 1
            ign = gt == ignore_label
        if ignore is not None:
            ign = ign | np.asarray(ignore, bool)
        self.ignore = ign
        self.clicks: list[Click] = []
        self.not_clicked = np.ones(gt.shape, bool)

    def reset(self) -> None:
        """Forget all clicks."""
        self.clicks = []
        self.not_clicked = np.ones(self.gt.shape, bool)

    def make_next_click(self, pred: np.ndarray) -> Click:
        """Place, record and return the next click given the current prediction ``pred`` (bool ``[H, W]``)."""
        click = next_click(self.gt, pred, self.ignore, self.not_clicked)
        self.add_click(click)
        return click

    def add_click(self, click: Click) -> None:
        """Record a click (also used to replay given clicks)."""
        self.clicks.append(click)
        self.not_clicked[click.row, click.col] = False

    def __len__(self) -> int:
        return len(self.clicks)

    def points_xy(self, *, positives_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Clicks as predictor input: points float32 ``[N, 2]`` (x, y) and labels int32 ``[N]`` (1/0).

        ``positives_first`` orders them as the GraCo/UnSAMv2 ``get_sam_input`` does (all positive
        clicks, then all negative clicks, each in click order). SAM's decoder has no token-order
        encoding, so the order only matters to floating-point rounding.
        """
        clicks = self.clicks
        if positives_first:
            clicks = [c for c in clicks if c.is_positive] + [c for c in clicks if not c.is_positive]
        points = np.array([c.xy for c in clicks], np.float32).reshape(-1, 2)
        labels = np.array([c.label for c in clicks], np.int32)
        return points, labels
