"""Does the granularity dial select the scale? Matched-g against swapped-g on nested truth.

One click inside a nucleus is ambiguous: it could mean the nucleus or the cell around it. A model
that learned granularity returns the nucleus at the nucleus's g and the cell at the cell's g
(**matched**); asked with the two g values exchanged (**swapped**) it returns the wrong object for
each, so matched IoU must be far above swapped IoU. Both g values are the sqrt-area rule within the
cell's tree (cell, nucleus, nucleoli), exactly the g the training labels carry.

The reference is the base model without a dial: SAM's own answer to the same click (of its three
candidates, the one with the highest predicted IoU), scored against the nucleus and the cell.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from unsamv2_engine.granularity_scores import sqrt_area_granularity

__all__ = ["LearnabilityResult", "NucleusInCell", "evaluate_checkpoint", "nucleus_cell_pairs", "score_pairs"]


@dataclass(frozen=True)
class NucleusInCell:
    """One probe: a nucleus, its cell, the click inside the nucleus and both g values.

    nucleus, cell: bool ``[H, W]``; click: ``(x, y)`` pixels, the nucleus pixel farthest from its border;
    g_nucleus, g_cell: the sqrt-area g of the two masks within the cell's tree.
    """

    nucleus: np.ndarray
    cell: np.ndarray
    click: tuple[float, float]
    g_nucleus: float
    g_cell: float


@dataclass
class LearnabilityResult:
    """Mean IoUs over probes (``n`` of them); each list holds one value per probe.

    matched_nucleus: IoU with the nucleus at g_nucleus; matched_cell: with the cell at g_cell;
    swapped_nucleus: with the nucleus at g_cell; swapped_cell: with the cell at g_nucleus;
    base_nucleus / base_cell: the base's own answer (no dial) against each.
    """

    per_probe: dict[str, list[float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(next(iter(self.per_probe.values()), []))

    def mean(self, key: str) -> float:
        values = self.per_probe.get(key, [])
        return float(np.mean(values)) if values else float("nan")

    @property
    def matched(self) -> float:
        """Mean of matched nucleus and matched cell IoU."""
        return 0.5 * (self.mean("matched_nucleus") + self.mean("matched_cell"))

    @property
    def swapped(self) -> float:
        return 0.5 * (self.mean("swapped_nucleus") + self.mean("swapped_cell"))

    @property
    def base(self) -> float:
        return 0.5 * (self.mean("base_nucleus") + self.mean("base_cell"))

    def summary(self) -> dict[str, float]:
        keys = sorted(self.per_probe)
        out = {k: round(self.mean(k), 4) for k in keys}
        out.update(matched=round(self.matched, 4), swapped=round(self.swapped, 4), n=self.n)
        if "base_nucleus" in self.per_probe:
            out["base"] = round(self.base, 4)
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def _interior_click(mask: np.ndarray) -> tuple[float, float]:
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def nucleus_cell_pairs(sample, *, min_nucleus_area: int = 20) -> list[NucleusInCell]:
    """Every nucleus of a 2D synthetic sample with its parent cell (see :mod:`unsamv2_engine.synth`).

    g values follow the sqrt-area rule over the cell's tree (the cell, its nuclei and their nucleoli).
    Nuclei under ``min_nucleus_area`` pixels are skipped (one click cannot be placed reliably).
    """
    by_id = {int(o.id): o for o in sample.objects}
    children: dict[int, list[int]] = {}
    for o in sample.objects:
        children.setdefault(int(o.parent), []).append(int(o.id))
    probes = []
    for o in sample.objects:
        if o.level_name != "nucleus":
            continue
        cell = by_id.get(int(o.parent))
        if cell is None or cell.level_name != "cell":
            continue
        nucleus_mask = sample.labels["nucleus"] == o.id
        if np.count_nonzero(nucleus_mask) < min_nucleus_area:
            continue
        cell_mask = sample.labels["cell"] == cell.id
        tree = [int(cell.id)]
        stack = list(children.get(int(cell.id), []))
        while stack:
            oid = stack.pop()
            tree.append(oid)
            stack.extend(children.get(oid, []))
        areas = []
        for oid in tree:
            level = by_id[oid].level_name
            areas.append(int(np.count_nonzero(sample.labels[level] == oid)) if level in sample.labels else 0)
        g = sqrt_area_granularity([a for a in areas if a > 0])
        g_of = dict(zip([oid for oid, a in zip(tree, areas) if a > 0], g))
        probes.append(NucleusInCell(nucleus=nucleus_mask, cell=cell_mask, click=_interior_click(nucleus_mask),
                                    g_nucleus=float(g_of[int(o.id)]), g_cell=float(g_of[int(cell.id)])))
    return probes


def score_pairs(session, image: np.ndarray, probes: Iterable[NucleusInCell], *, base_session=None,
                result: LearnabilityResult | None = None) -> LearnabilityResult:
    """Decode each probe at both g values with ``session`` (a model with a granularity module) and add the IoUs.

    ``base_session``: the base model without a granularity module (its own answer to the click is scored
    too). Both sessions embed ``image`` here. Pass ``result`` to accumulate over several images.
    """
    result = result or LearnabilityResult()
    session.set_image(image)
    if base_session is not None:
        base_session.set_image(image)
    for probe in probes:
        point, label = np.array([probe.click], np.float32), np.array([1], np.int64)
        sweep = session.sweep(point, label, [probe.g_nucleus, probe.g_cell])
        at_nucleus, at_cell = sweep.masks[0], sweep.masks[1]
        values = {"matched_nucleus": _iou(at_nucleus, probe.nucleus), "matched_cell": _iou(at_cell, probe.cell),
                  "swapped_nucleus": _iou(at_cell, probe.nucleus), "swapped_cell": _iou(at_nucleus, probe.cell)}
        if base_session is not None:
            own = base_session.predict(point, label, None).mask
            values.update(base_nucleus=_iou(own, probe.nucleus), base_cell=_iou(own, probe.cell))
        for key, value in values.items():
            result.per_probe.setdefault(key, []).append(value)
    return result


def evaluate_checkpoint(base: str | os.PathLike[str], adapter: str | os.PathLike[str], seeds: Sequence[int],
                        shape: tuple[int, int], device: str = "cpu") -> LearnabilityResult:
    """Score ``base`` + ``adapter`` (and ``base`` alone, no dial) on synthetic fluorescence images of ``seeds``.

    ``shape``: (H, W) of the generated images in pixels. Every nucleus of at least 20 px inside a cell is
    clicked once (:func:`nucleus_cell_pairs`).
    """
    from unsamv2_engine.evaluate.learnability import nucleus_cell_pairs, score_pairs
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.session import ImageSession
    from unsamv2_engine.synth import generate_sample

    tuned = ImageSession(load_checkpoint(base, adapter=adapter, device=device))
    plain = ImageSession(load_checkpoint(base, device=device))
    result = None
    for seed in seeds:
        sample = generate_sample(seed, modality="fluorescence", shape=shape)
        result = score_pairs(tuned, sample.image, nucleus_cell_pairs(sample), base_session=plain, result=result)
    return result
