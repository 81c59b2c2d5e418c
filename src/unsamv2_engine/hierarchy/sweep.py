"""One prompt's granularity sweep as a nested label hierarchy.

A sweep decodes the same prompt at G granularities: one mask per granularity, usually growing with g
but not always pixel for pixel inside the next one. :func:`sweep_hierarchy` makes it a hierarchy of
one object per non-empty level, each object the parent of the object at the next coarser level
(larger g) when it covers most of it, and clipped to its parent (``child ⊂ parent`` pixel for pixel,
:func:`~unsamv2_engine.hierarchy.enforce_nesting`). An object whose next coarser level is empty has no
parent. The napari widget shows the result as one labels
layer per level; the engine builds it (``SweepRequest(nest=True)``), not the GUI thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unsamv2_engine.hierarchy.build import build_hierarchy
from unsamv2_engine.hierarchy.model import Hierarchy
from unsamv2_engine.hierarchy.nesting import enforce_nesting

__all__ = ["sweep_hierarchy"]


def sweep_hierarchy(masks: np.ndarray | Sequence[np.ndarray], granularities: Sequence[float],
                    scores: Sequence[float] | None = None) -> Hierarchy:
    """Nest the masks of one prompt's sweep into a hierarchy (levels in the order given).

    Parameters
    ----------
    masks
        bool ``[G, *spatial]``: the mask at each granularity (an empty mask gives an empty level).
    granularities
        ``[G]``, one per mask; larger g = coarser level (a possible parent).
    scores
        ``[G]`` predicted IoU of each mask (NaN in the table when omitted).

    Returns
    -------
    Hierarchy
        ``labels`` ``[G, *spatial]`` with one object per non-empty level (ids unique across levels),
        each inside its parent; ``table`` rows label / level / granularity / parent / area / score.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 3 or len(masks) != len(granularities):
        raise ValueError(f"expected masks [G, *spatial] with one mask per granularity, got shape {masks.shape} "
                         f"for {len(granularities)} granularities")
    if scores is not None and len(scores) != len(granularities):
        raise ValueError(f"expected one score per granularity, got {len(scores)} for {len(granularities)}")
    per_level_scores = None if scores is None else [[float(s)] for s in scores]
    return enforce_nesting(build_hierarchy([[m] for m in masks], [float(g) for g in granularities],
                                           scores=per_level_scores))
