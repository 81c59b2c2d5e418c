"""Click simulation for UnSAMv2 training (FACTS §4.3).

* Initial click: one positive point uniformly inside the GT mask (``get_next_point(gt, None, "uniform")``).
* Correction click: uniform over the error region FP ∪ FN of ``pred`` against ``gt``
  (SAM 2 ``sample_random_points_from_errors``); FN gives a positive click (label 1), FP a negative one
  (label 0). A perfect prediction gives a negative click uniformly in the background (or, if the GT
  fills the image, a positive click in the mask).

Points are ``(x, y)`` = (column, row) integer pixel indices, as upstream. All randomness comes from a
``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _as_bool_2d(mask: torch.Tensor, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise ValueError(f"{name} must be [H, W], got shape {tuple(mask.shape)}")
    return mask.bool() if mask.dtype == torch.bool else mask > 0


def _as_bool_3d(masks: torch.Tensor, name: str) -> torch.Tensor:
    masks = torch.as_tensor(masks)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"{name} must be [N, H, W] (or [N, 1, H, W]), got shape {tuple(masks.shape)}")
    return masks if masks.dtype == torch.bool else masks > 0


def _uniform_pixel(region: torch.Tensor, generator: torch.Generator | None) -> tuple[int, int]:
    """Draw one pixel uniformly from a non-empty ``[H, W]`` bool region; returns ``(x, y)``."""
    coords = torch.nonzero(region.cpu(), as_tuple=False)  # [K, 2] as (row, col)
    k = coords.shape[0]
    if k == 0:
        raise ValueError("cannot sample from an empty region")
    idx = int(torch.randint(k, (1,), generator=generator).item())
    y, x = coords[idx].tolist()
    return int(x), int(y)


def sample_point_in_mask(mask: torch.Tensor, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Sample a positive click uniformly over the pixels of a mask.

    Parameters
    ----------
    mask : torch.Tensor
        Bool (or 0/1) mask, shape ``[H, W]``.
    generator : torch.Generator, optional
        CPU generator for reproducibility.

    Returns
    -------
    tuple of int
        ``(x, y)``: column and row of the click.

    Raises
    ------
    ValueError
        If the mask is empty.
    """
    m = _as_bool_2d(mask, "mask")
    if not bool(m.any()):
        raise ValueError("mask is empty: cannot place a positive click")
    return _uniform_pixel(m, generator)


def sample_correction_click(pred: torch.Tensor, gt: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[int, int, int]:
    """Sample a correction click uniformly over the error region FP ∪ FN.

    Parameters
    ----------
    pred : torch.Tensor
        Binarised prediction (bool, e.g. ``logits > 0``), shape ``[H, W]``.
    gt : torch.Tensor
        Ground-truth mask (bool), shape ``[H, W]``.
    generator : torch.Generator, optional
        CPU generator for reproducibility.

    Returns
    -------
    tuple of int
        ``(x, y, label)``: label 1 (positive) on a false negative, 0 (negative) on a false positive.
        A perfect prediction gives a negative click uniformly in the background, or a positive click
        in the mask when there is no background.
    """
    p = _as_bool_2d(pred, "pred")
    g = _as_bool_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    fn = g & ~p
    fp = p & ~g
    err = fn | fp
    if bool(err.any()):
        x, y = _uniform_pixel(err, generator)
        return x, y, int(bool(fn[y, x]))
    background = ~g
    if bool(background.any()):
        x, y = _uniform_pixel(background, generator)
        return x, y, 0
    x, y = _uniform_pixel(g, generator)
    return x, y, 1


def _per_object(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list:
    """One generator per object: the shared one ``n`` times, or the given list (length checked)."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * n
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"{len(gens)} generators for {n} objects")
    return gens


def batch_initial_clicks(gt: torch.Tensor,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click per object, uniform inside each GT mask.

    Parameters
    ----------
    gt : torch.Tensor
        Ground-truth masks, shape ``[N, H, W]`` (``[N, 1, H, W]`` accepted); each must be non-empty.
    generator : torch.Generator or sequence of them, optional
        CPU generator for reproducibility; a list gives each object its own (so that an object's
        clicks do not depend on which other objects share the batch).

    Returns
    -------
    points : torch.Tensor
        Float ``[N, 1, 2]`` as ``(x, y)``, on ``gt``'s device.
    labels : torch.Tensor
        Int32 ``[N, 1]``, all ones.
    """
    g = _as_bool_3d(gt, "gt")
    gens = _per_object(generator, g.shape[0])
    pts = [sample_point_in_mask(g[i], gens[i]) for i in range(g.shape[0])]
    points = torch.tensor(pts, dtype=torch.float32).reshape(-1, 1, 2).to(g.device)
    labels = torch.ones(g.shape[0], 1, dtype=torch.int32, device=g.device)
    return points, labels


def batch_correction_clicks(pred: torch.Tensor, gt: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per object from the prediction error (see :func:`sample_correction_click`).

    Parameters
    ----------
    pred : torch.Tensor
        Binarised predictions (bool), shape ``[N, H, W]`` (``[N, 1, H, W]`` accepted).
    gt : torch.Tensor
        Ground-truth masks (bool), same shape as ``pred``.
    generator : torch.Generator or sequence of them, optional
        CPU generator for reproducibility (a list: one per object).

    Returns
    -------
    points : torch.Tensor
        Float ``[N, 1, 2]`` as ``(x, y)``, on ``gt``'s device.
    labels : torch.Tensor
        Int32 ``[N, 1]``: 1 positive (false negative), 0 negative (false positive or background).
    """
    p = _as_bool_3d(pred, "pred")
    g = _as_bool_3d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    gens = _per_object(generator, g.shape[0])
    clicks = [sample_correction_click(p[i], g[i], gens[i]) for i in range(g.shape[0])]
    points = torch.tensor([c[:2] for c in clicks], dtype=torch.float32).reshape(-1, 1, 2).to(g.device)
    labels = torch.tensor([c[2] for c in clicks], dtype=torch.int32).reshape(-1, 1).to(g.device)
    return points, labels
