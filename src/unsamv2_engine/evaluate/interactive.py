"""The interaction loop (RITM / GraCo / UnSAMv2 protocol) and the granularity modes.

Loop (docs/evaluation.md §2.2): for click 1..``max_clicks`` (20), the RITM clicker
(:mod:`.clicker`) places a click from the current error; the predictor decodes from all clicks so
far with the previous low-res logits as ``mask_input``; the IoU is recorded; the loop stops once
IoU >= ``target_iou`` (unless ``stop_early=False``, or a target above 1, for full curves).

Modes (:class:`Mode`, parsed by :func:`parse_mode`):

``oracle``
    GraCo / UnSAMv2 protocol (``evaluate_sample`` / ``evaluate_sam2_oracle``): per object, the full
    loop at each g of a grid (0.1 .. 1.0), each with its own click sequence; keep the g that stops
    at the fewest clicks, ties to the highest first-click IoU. A later g's loop is cut off once it
    needs more clicks than the best so far (pure speed-up; ``oracle_cutoff``). Optimistic: an
    oracle that sees the GT picks g per object.
``fixed:G``
    One granularity for every object.
``level``
    Non-oracle (docs/evaluation.md §2.3): g* from the object's place in the GT hierarchy, the sqrt-area
    rule (:func:`unsamv2_engine.granularity_scores.sqrt_area_granularity`) over the chain of GT
    masks (all levels) that contain the object's first click: smallest 0.1, largest 1.0.
``sam-single``
    Plain SAM 2.1, single-mask output (token 0, ``multimask_output=False``): ``predict(g=None)``.
``sam-oracle3``
    Plain SAM 2.1, best of its three multimask outputs against the GT at every click (its logits
    are fed back); needs ``predictor.candidates``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsamv2_engine.evaluate.clicker import Click, Clicker
from unsamv2_engine.evaluate.metrics import iou
from unsamv2_engine.evaluate.predictors import Predictor, PredictorOutput, has_candidates
from unsamv2_engine.granularity_scores import sqrt_area_granularity

__all__ = [
    "DEFAULT_GRID",
    "MODE_KINDS",
    "ClickRun",
    "Mode",
    "ObjectResult",
    "Predictor",
    "PredictorOutput",
    "chain_granularity",
    "evaluate_object",
    "parse_mode",
    "parse_modes",
    "run_clicks",
    "run_oracle",
]

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
MODE_KINDS = ("oracle", "fixed", "level", "sam-single", "sam-oracle3")


# ============================================================================ modes
@dataclass(frozen=True)
class Mode:
    """One way of choosing the granularity (see the module docstring).

    Attributes
    ----------
    kind : str
        One of :data:`MODE_KINDS`.
    granularity : float or None
        The g of ``fixed``.
    """

    kind: str
    granularity: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODE_KINDS:
            raise ValueError(f"unknown mode {self.kind!r}; use one of oracle, fixed:G, level, sam-single, sam-oracle3")
        if self.kind == "fixed":
            if self.granularity is None or not 0.1 <= float(self.granularity) <= 1.0:
                raise ValueError(f"fixed:G needs a granularity G in [0.1, 1.0], got {self.granularity!r}")
        elif self.granularity is not None:
            raise ValueError(f"mode {self.kind!r} takes no granularity")

    @property
    def name(self) -> str:
        return f"fixed:{self.granularity:g}" if self.kind == "fixed" else self.kind

    @property
    def needs_granularity_model(self) -> bool:
        return self.kind in ("oracle", "fixed", "level")

    def __str__(self) -> str:
        return self.name


def parse_mode(text: str) -> Mode:
    """``"oracle"``, ``"fixed:0.5"``, ``"level"``, ``"sam-single"`` or ``"sam-oracle3"`` -> :class:`Mode`."""
    text = text.strip().lower()
    if text.startswith("fixed"):
        _, _, value = text.partition(":")
        try:
            return Mode("fixed", float(value))
        except ValueError:
            raise ValueError(f"fixed mode is written fixed:G with G in [0.1, 1.0] (fixed:0.5); got {text!r}") from None
    return Mode(text)


def parse_modes(text: str | Sequence[str]) -> list[Mode]:
    """A comma-separated list (or a sequence) of modes; duplicates removed, order kept."""
    items = text.split(",") if isinstance(text, str) else list(text)
    modes: list[Mode] = []
    for item in items:
        if item.strip():
            mode = parse_mode(item)
            if mode not in modes:
                modes.append(mode)
    if not modes:
        raise ValueError("no evaluation mode given")
    return modes


# ============================================================================ one loop
@dataclass
class ClickRun:
    """One run of the interaction loop on one object.

    Attributes
    ----------
    ious : list of float
        IoU after each click (length = clicks simulated).
    clicks : list of Click
        The simulated clicks.
    seconds : list of float
        Prediction time of each click (clicker and IoU not included).
    granularity : float or None
        The g the loop ran at.
    candidate_choices : list of int
        ``sam-oracle3``: the chosen multimask output (0..2) at each click.
    reached : bool
        Whether the target IoU was reached.
    """

    ious: list[float]
    clicks: list[Click]
    seconds: list[float]
    granularity: float | None = None
    candidate_choices: list[int] = field(default_factory=list)
    reached: bool = False

    @property
    def n_clicks(self) -> int:
        return len(self.ious)


Step = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], tuple[PredictorOutput, int | None]]


def _single_step(predictor: Predictor, granularity: float | None) -> Step:
    def step(points, labels, mask_input):
        return PredictorOutput(*predictor.predict(points, labels, granularity, mask_input)), None
    return step


def _best_candidate_step(predictor: Predictor, gt: np.ndarray, ignore: np.ndarray | None) -> Step:
    if not has_candidates(predictor):
        raise ValueError("mode sam-oracle3 needs a predictor with SAM's multimask candidates (a plain SAM 2.1 model)")

    def step(points, labels, mask_input):
        outs = [PredictorOutput(*o) for o in predictor.candidates(points, labels, mask_input)]
        scores = [iou(gt, o.mask, ignore) for o in outs]
        best = int(np.argmax(scores))  # first best, as np.argmax in GraCo / UnSAMv2
        return outs[best], best
    return step


def run_clicks(step: Step, gt: np.ndarray, *, ignore: np.ndarray | None = None, max_clicks: int = 20,
               target_iou: float = 0.9, stop_early: bool = True, cutoff: int | None = None,
               granularity: float | None = None, feed_back_logits: bool = True) -> ClickRun:
    """Run the interaction loop for one object.

    Parameters
    ----------
    step : callable
        ``step(points_xy, labels, mask_input) -> (PredictorOutput, candidate index or None)``.
    gt : np.ndarray
        bool ``[H, W]`` object mask.
    ignore : np.ndarray, optional
        bool ``[H, W]`` pixels left out of the clicker and the IoU.
    max_clicks : int
        Click budget (20 in every paper).
    target_iou : float
        Stop once IoU >= this (and at least one click). Above 1: never stops (full curves).
    stop_early : bool
        False: always simulate ``max_clicks`` clicks.
    cutoff : int, optional
        Stop after this many clicks without reaching the target (the oracle's speed-up: a later
        granularity cannot win once it needs more clicks than the best so far).
    granularity : float or None
        Recorded in the result.
    feed_back_logits : bool
        Feed the previous low-res logits back as ``mask_input`` (the protocol; True).

    Returns
    -------
    ClickRun
    """
    gt = np.asarray(gt, bool)
    clicker = Clicker(gt, ignore)
    pred = np.zeros_like(gt)
    prev_logits: np.ndarray | None = None
    run = ClickRun([], [], [], granularity)
    for click_idx in range(max_clicks):
        clicker.make_next_click(pred)
        points, labels = clicker.points_xy()
        start = time.perf_counter()
        out, choice = step(points, labels, prev_logits if feed_back_logits else None)
        run.seconds.append(time.perf_counter() - start)
        pred = np.asarray(out.mask, bool)
        if pred.shape != gt.shape:
            raise ValueError(f"the predictor returned a mask of shape {pred.shape} for an image of shape {gt.shape}")
        prev_logits = out.low_res_logits
        value = iou(gt, pred, ignore)
        run.ious.append(value)
        if choice is not None:
            run.candidate_choices.append(choice)
        if value >= target_iou:
            run.reached = True
            if stop_early:
                break
        if cutoff is not None and click_idx + 1 > cutoff:
            break
    run.clicks = list(clicker.clicks)
    return run


def run_oracle(predictor: Predictor, gt: np.ndarray, *, grid: Sequence[float] = DEFAULT_GRID,
               ignore: np.ndarray | None = None, max_clicks: int = 20, target_iou: float = 0.9,
               stop_early: bool = True, cutoff: bool = True) -> tuple[ClickRun, list[ClickRun]]:
    """The GraCo / UnSAMv2 granularity oracle for one object.

    For each g of ``grid`` in order: a fresh clicker and no mask input, the full loop at g. The
    fewest clicks so far (``min_num``) cuts later loops off after ``min_num + 1`` clicks when
    ``cutoff``. The chosen g stopped at the smallest click index; ties go to the highest
    first-click IoU (the first such g in grid order).

    Returns
    -------
    (ClickRun, list of ClickRun)
        The chosen g's run, and every g's run in grid order (cut-off runs are truncated).
    """
    runs: list[ClickRun] = []
    min_num: int | None = None
    for g in grid:
        run = run_clicks(_single_step(predictor, float(g)), gt, ignore=ignore, max_clicks=max_clicks,
                         target_iou=target_iou, stop_early=stop_early,
                         cutoff=min_num if cutoff else None, granularity=float(g))
        if run.reached and stop_early:
            min_num = run.n_clicks if min_num is None else min(min_num, run.n_clicks)
        runs.append(run)
    stops = np.array([r.n_clicks for r in runs])
    tied = np.nonzero(stops == stops.min())[0]
    best = int(tied[int(np.argmax([runs[i].ious[0] for i in tied]))])
    return runs[best], runs


# ============================================================================ level mode
def chain_granularity(target: np.ndarray, others: Sequence[np.ndarray], point_rc: tuple[int, int]) -> tuple[float, int]:
    """g* of ``target`` on the chain of GT masks containing ``point_rc`` (docs/evaluation.md §2.3).

    Parameters
    ----------
    target : np.ndarray
        bool ``[H, W]``, the object.
    others : sequence of np.ndarray
        Every other GT mask of the image (any level); those containing the point join the chain.
    point_rc : (int, int)
        The object's first click (row, col).

    Returns
    -------
    (float, int)
        g* (sqrt-area rule: smallest mask of the chain 0.1, largest 1.0; a chain of one: 1.0) and
        the chain length.
    """
    r, c = point_rc
    chain = [np.count_nonzero(target)]
    chain += [np.count_nonzero(m) for m in others if m[r, c]]
    return float(sqrt_area_granularity(chain)[0]), len(chain)


# ============================================================================ one object
@dataclass
class ObjectResult:
    """The outcome of one mode on one GT object.

    Attributes
    ----------
    mode : str
        Mode name (``oracle``, ``fixed:0.5``...).
    image : str
        Image name.
    object_id : int
        GT object id.
    level : str or None
        GT level name.
    level_index : int or None
        GT level number (when the dataset has one).
    area : int
        GT area in pixels.
    granularity : float or None
        The g used: chosen by the oracle, g* for ``level``, G for ``fixed``, None for SAM.
    ious : list of float
        IoU after each simulated click (of the chosen g for ``oracle``).
    clicks : list of [row, col, positive]
        The simulated clicks.
    seconds : list of float
        Prediction time per click.
    extra : dict
        Mode details: ``oracle_clicks`` / ``oracle_first_iou`` per g, ``chain_length``,
        ``candidate_choices``, ``gt_granularity`` (the dataset's own value, if any).
    """

    mode: str
    image: str
    object_id: int
    level: str | None
    level_index: int | None
    area: int
    granularity: float | None
    ious: list[float]
    clicks: list[list[int]]
    seconds: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clicks(self) -> int:
        return len(self.ious)


def evaluate_object(predictor: Predictor, mode: Mode, gt: np.ndarray, *, others: Sequence[np.ndarray] = (),
                    ignore: np.ndarray | None = None, max_clicks: int = 20, target_iou: float = 0.9,
                    stop_early: bool = True, grid: Sequence[float] = DEFAULT_GRID,
                    oracle_cutoff: bool = True) -> tuple[ClickRun, dict[str, Any]]:
    """Run one mode on one object (the predictor has the image set already).

    Parameters
    ----------
    predictor : Predictor
    mode : Mode
    gt : np.ndarray
        bool ``[H, W]`` object.
    others : sequence of np.ndarray
        The image's other GT masks (``level`` mode only).
    ignore, max_clicks, target_iou, stop_early
        As in :func:`run_clicks`.
    grid : sequence of float
        The oracle's granularities.
    oracle_cutoff : bool
        The oracle's early cut-off.

    Returns
    -------
    (ClickRun, dict)
        The reported run and mode details for :attr:`ObjectResult.extra`.
    """
    gt = np.asarray(gt, bool)
    common = dict(ignore=ignore, max_clicks=max_clicks, target_iou=target_iou, stop_early=stop_early)
    extra: dict[str, Any] = {}
    if mode.kind == "oracle":
        run, runs = run_oracle(predictor, gt, grid=grid, cutoff=oracle_cutoff, **common)
        extra["oracle_grid"] = [float(g) for g in grid]
        extra["oracle_clicks"] = [r.n_clicks for r in runs]
        extra["oracle_reached"] = [r.reached for r in runs]
        extra["oracle_first_iou"] = [r.ious[0] for r in runs]
        extra["seconds_all_granularities"] = float(sum(sum(r.seconds) for r in runs))
        return run, extra
    if mode.kind == "fixed":
        return run_clicks(_single_step(predictor, mode.granularity), gt, granularity=mode.granularity, **common), extra
    if mode.kind == "level":
        first = Clicker(gt, ignore).make_next_click(np.zeros_like(gt))
        g, length = chain_granularity(gt, others, (first.row, first.col))
        g = round(g, 6)
        extra["chain_length"] = length
        return run_clicks(_single_step(predictor, g), gt, granularity=g, **common), extra
    if mode.kind == "sam-single":
        return run_clicks(_single_step(predictor, None), gt, **common), extra
    run = run_clicks(_best_candidate_step(predictor, gt, ignore), gt, **common)
    extra["candidate_choices"] = list(run.candidate_choices)
    return run, extra
