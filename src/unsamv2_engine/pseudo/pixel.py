"""The pixel-accurate divide-and-conquer of one image (default ``proposals="pixel"``; ``docs/pseudo-labels.md``).

1. **Object channel** ``f`` (luminance, inverted for bright backgrounds) and a **signal check**: a
   blank, constant or pure-noise image gets no masks (:class:`NothingToLabel`).
2. **Divide**: classical instance proposals at pixel resolution (:mod:`.classical`: Otsu and
   multi-Otsu + distance watershed, nucleus-seeded cells, LoG blobs bright and dark), MaskCut on the
   backbone's patch features and -- with a model -- the model's whole-image masks at g = 1; the
   last two are snapped to superpixels (:mod:`.refine`), so no mask follows a patch grid.
3. **Instances** by the §5.2 rules (:func:`~.hierarchy.build_instances`).
4. **Conquer** each instance by superpixel merging at the thresholds 0.9 .. 0.5
   (:func:`~.superpixel_conquer.conquer_superpixels`), with its divide parts.
5. Windowed + protected NMS (§5.3-6/7), as in the patch pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unsamv2_engine.model.build import UnSAMv2Model
    from unsamv2_engine.pseudo.backbones import Backbone

__all__ = ["Hierarchy", "NothingToLabel", "pixel_hierarchies"]


class NothingToLabel(ValueError):
    """The image is blank, constant or pure noise: there is nothing to pseudo-label (the message says which)."""


@dataclass
class Hierarchy:
    """One instance: bool ``[H, W]`` mask and its kept parts as ``(mask, is_conquer)``, area-descending."""

    instance: np.ndarray
    parts: list[tuple[np.ndarray, bool]]
    source: str = ""  # the proposal source of the instance ("otsu-cc", "maskcut", "model", ...)


def pixel_hierarchies(rgb: np.ndarray, backbone: Backbone, settings: Any, *, model: UnSAMv2Model | None = None
                      ) -> list[Hierarchy]:
    """Instance hierarchies of uint8 RGB ``[H, W, 3]`` (the working image), all masks ``[H, W]`` bool.

    ``settings`` is a :class:`~unsamv2_engine.pseudo.pipeline.PseudoLabelSettings`.
    Raises :class:`NothingToLabel` for a blank, constant or pure-noise image.
    """
    from unsamv2_engine.pseudo.classical import classical_proposals, noise_sigma, object_channel, signal_check
    from unsamv2_engine.pseudo.conquer import resize_rgb
    from unsamv2_engine.pseudo.divide import maskcut, model_masks
    from unsamv2_engine.pseudo.hierarchy import build_instances
    from unsamv2_engine.pseudo.merging import upsample_mask
    from unsamv2_engine.pseudo.nms import protected_nms, windowed_mask_nms
    from unsamv2_engine.pseudo.refine import snap_to_superpixels, superpixels
    from unsamv2_engine.pseudo.superpixel_conquer import conquer_superpixels

    s = settings
    f, _polarity = object_channel(rgb)
    report = signal_check(f)
    if not report.ok:
        raise NothingToLabel(report.reason)
    h, w = f.shape
    sigma = noise_sigma(f)
    labels = superpixels(f, size=s.superpixel_size)
    found = classical_proposals(f, min_area=s.min_part_area, contrast_k=s.contrast_k,
                                inner_contrast=s.inner_contrast, inner_ring=s.inner_ring)
    masks = [p.mask for p in found]
    sources = [p.source for p in found]
    n_cuts = s.maskcut_cuts(backbone.name)
    if n_cuts > 0:
        scale = s.divide_size / max(h, w)
        small = resize_rgb(rgb, (max(2, round(h * scale)), max(2, round(w * scale))))
        cuts = maskcut(backbone.features(small), n_instances=n_cuts, tau=s.affinity_tau,
                       min_patches=s.min_instance_patches)
        for cut in cuts:
            snapped = snap_to_superpixels(upsample_mask(cut, (h, w)), labels)
            if snapped.any():
                masks.append(snapped)
                sources.append("maskcut")
    if model is not None:
        for m in model_masks(model, rgb, granularity=s.model_granularity, preset=s.model_preset,
                             points_per_side=s.model_points_per_side):
            snapped = snap_to_superpixels(m, labels)
            if snapped.any():
                masks.append(snapped)
                sources.append("model")
    instances = build_instances(masks, sources=sources, contain_thresh=s.contain_thresh,
                                duplicate_iou=s.duplicate_iou, min_instance_area=s.min_instance_area)
    out = []
    for inst in instances:
        inst.parts = _parts_of_solid(f, inst.mask, inst.parts, min_solidity=s.solid_instance,
                                     min_contrast=s.conquer_contrast)
        new = conquer_superpixels(f, inst.mask, labels, known=inst.parts, thetas=s.thetas, noise=sigma,
                                  min_part_area=s.min_part_area, min_contrast=s.conquer_contrast)
        candidates = [(m, True) for m in new] + [(np.asarray(m, bool), False) for m in inst.parts]
        sl = _union_box([inst.mask] + [c[0] for c in candidates])  # NMS on the crop: same IoUs, less work
        local_new = [m[sl] for m in new]
        new_kept = windowed_mask_nms(local_new, s.nms_iou, s.nms_step)
        candidates = [candidates[k] for k in new_kept] + candidates[len(new):]
        kept = protected_nms(inst.mask[sl], [c[0][sl] for c in candidates], s.nms_iou, s.nms_step)
        parts = [candidates[k] for k in kept]
        specks = _specks(inst.mask[sl], [m[sl] for m, _ in parts], max_area=s.speck_area, max_fraction=s.speck_fraction)
        out.append(Hierarchy(inst.mask, [p for k, p in enumerate(parts) if k not in specks], inst.source))
    if s.nucleoli != "off":
        _add_nucleoli(f, _polarity, out, s, sigma)
    return out


def _specks(instance: np.ndarray, parts: list[np.ndarray], *, max_area: int, max_fraction: float) -> set[int]:
    """Indices of the texture specks among ``parts`` (bool ``[h, w]``, on the same crop as bool ``instance``).

    A speck is a part of fewer than ``max_area`` px that is less than ``max_fraction`` of the smallest
    other mask of the tree (the instance or a part at least 15 % larger) holding more than 80 % of it: a
    bright chromatin spot or a noise blob in a nucleus, not a sub-object (a nucleus is at least 8 % of
    its cell, the rule of the ``cell-otsu`` proposals). On the real nuclei every such part was unmatched
    (docs/pseudo-labels.md).
    """
    if max_area <= 0 or not parts:
        return set()
    masks = [instance] + list(parts)
    areas = np.array([int(np.count_nonzero(m)) for m in masks], np.int64)
    order = np.argsort(areas, kind="stable")
    out = set()
    for k in np.flatnonzero(areas[1:] < max_area) + 1:
        a = int(areas[k])
        rows = np.flatnonzero(masks[k].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(masks[k].any(axis=0))
        sl = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        local = masks[k][sl]
        container = next((int(areas[j]) for j in order if j != k and areas[j] > 1.15 * a
                          and np.count_nonzero(masks[j][sl] & local) > 0.8 * a), None)
        if container is not None and a < max_fraction * container:
            out.add(int(k) - 1)
    return out


def _add_nucleoli(f: np.ndarray, polarity: str, trees: list[Hierarchy], s: Any, noise: float) -> None:
    """Add the nested spots (:func:`~unsamv2_engine.pseudo.spots.nested_spots`) of every tree's solid masks
    to that tree as parts (in place), cut to the instance, unless a part of the tree already has IoU > 0.8.
    """
    from unsamv2_engine.pseudo.spots import nested_spots, spot_sign

    owners: list[int] = []
    containers: list[np.ndarray] = []
    for t, tree in enumerate(trees):
        for m in [tree.instance] + [p for p, _ in tree.parts]:
            owners.append(t)
            containers.append(m)
    spots = nested_spots(f, containers, sign=spot_sign(polarity, s.nucleoli), noise=noise,
                         radius=s.nucleolus_radius, min_area=s.min_part_area, min_contrast=s.nucleolus_contrast)
    part_areas: dict[int, list[int]] = {}
    for ci, spot in spots:
        t = owners[ci]
        tree = trees[t]
        spot = spot & tree.instance
        area = int(np.count_nonzero(spot))
        if area < s.min_part_area:
            continue
        if t not in part_areas:
            part_areas[t] = [int(np.count_nonzero(p)) for p, _ in tree.parts]
        areas = part_areas[t]
        sl = _union_box([spot])
        local = spot[sl]
        if any(0.8 * area < a < area / 0.8 and np.count_nonzero(local & p[sl]) > 0.8 * max(area, a)
               for (p, _), a in zip(tree.parts, areas)):
            continue  # IoU > 0.8 with a part already there
        tree.parts.append((spot, True))
        areas.append(area)
    for tree in trees:
        tree.parts.sort(key=lambda p: -int(np.count_nonzero(p[0])))


def _parts_of_solid(f: np.ndarray, instance: np.ndarray, parts: list[np.ndarray], *, min_solidity: float,
                    min_contrast: float) -> list[np.ndarray]:
    """The divide ``parts`` (bool ``[H, W]``) of ``instance`` worth keeping.

    An instance of solidity (area / convex-hull area) >= ``min_solidity`` is one object (a nucleus, a
    cell), not a cluster: its parts must be structures that stand out in it (a nucleus in its cell,
    :func:`~unsamv2_engine.pseudo.classical.nested_contrast` >= ``min_contrast``, the rule its merged
    superpixel parts follow), not pieces cut out of it by a seed or a threshold. A less solid instance
    (a cluster, a tissue region) keeps every part: its pieces are its cells.
    """
    from skimage.morphology import convex_hull_image

    from unsamv2_engine.pseudo.classical import nested_contrast

    if not parts or min_solidity > 1.0:
        return parts
    sl = _union_box([instance])
    inst = instance[sl]
    if np.count_nonzero(inst) < min_solidity * np.count_nonzero(convex_hull_image(inst)):
        return parts
    vals = f[sl]
    return [p for p in parts if nested_contrast(vals, p[sl], inst) >= min_contrast]


def _union_box(masks: list[np.ndarray]) -> tuple[slice, slice]:
    """The bounding box of the union of bool ``[H, W]`` masks, as slices."""
    union = np.zeros(masks[0].shape, bool)
    for m in masks:
        union |= m
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
