"""Conquer at pixel level: parts of an instance by iterative merging of superpixels (docs/model-reference.md §5.2).

The authors merge adjacent 16-px patches of a 768-px crop by DINOv3 feature similarity at the
thresholds 0.9 .. 0.5. Here the units are **superpixels** (SLIC, ~30 px, following image edges),
so every part is pixel-accurate and 30-px nucleoli are several units, not a fraction of one patch.

* Superpixel feature: its mean of the object channel ``f`` (0..1).
* Similarity of two adjacent clusters: ``1 - |mean_a - mean_b| / R``, ``R`` the instance's intensity
  range (2nd-98th percentile of ``f`` inside it, at least 4 noise standard deviations). So θ = 0.9
  merges clusters within 10 % of the instance's range, θ = 0.5 within half of it.
* For each θ in order, the most similar adjacent pair is merged while its similarity is >= θ
  (levels continue from each other: a coarsening hierarchy); after each θ every cluster is a
  candidate part.
* A candidate is kept if it has at least ``min_part_area`` pixels, is not the whole instance (less
  than ``max_part_fraction`` of it), is solid (``solidity >= min_solidity``: rings of cytoplasm
  around a nucleus are not parts), stands out from a 2-px ring around it
  (:func:`~unsamv2_engine.pseudo.classical.contrast_ok`), and is not a near-duplicate
  (IoU > ``duplicate_iou``) of a part already known.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["conquer_superpixels", "merge_regions"]


def merge_regions(means: np.ndarray, sizes: np.ndarray, edges: Sequence[tuple[int, int]], scale: float,
                  thetas: Sequence[float]) -> list[list[list[int]]]:
    """Greedy agglomerative merging on a region adjacency graph.

    Parameters
    ----------
    means
        float ``[n]`` mean value of each region; sizes: int ``[n]`` pixel counts.
    edges
        adjacent region pairs ``(a, b)``.
    scale
        the value range that maps a difference to similarity 0.
    thetas
        similarity thresholds, applied in order.

    Returns
    -------
        per threshold, the clusters alive after it (lists of region indices; clusters of several
        regions and single regions alike).
    """
    n = len(means)
    parent = list(range(n))
    mean = [float(v) for v in means]
    size = [float(v) for v in sizes]
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    nbrs: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        if a != b:
            nbrs[a].add(b)
            nbrs[b].add(a)

    def sim(a: int, b: int) -> float:
        return 1.0 - abs(mean[a] - mean[b]) / scale

    levels = []
    for theta in thetas:
        while True:
            best, pair = -np.inf, None
            for a, nb in nbrs.items():
                for b in nb:
                    if a < b:
                        s = sim(a, b)
                        if s > best:
                            best, pair = s, (a, b)
            if pair is None or best < theta:
                break
            a, b = pair
            total = size[a] + size[b]
            mean[a] = (mean[a] * size[a] + mean[b] * size[b]) / total
            size[a] = total
            members[a] += members.pop(b)
            for c in nbrs.pop(b):
                if c != a:
                    nbrs[c].discard(b)
                    nbrs[c].add(a)
                    nbrs[a].add(c)
            nbrs[a].discard(b)
            parent[b] = a
        levels.append([list(m) for m in members.values()])
    return levels


def _solidity(mask: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    area = int(mask.sum())
    if area < 3:
        return 1.0
    return area / max(int(convex_hull_image(mask).sum()), 1)


def conquer_superpixels(f: np.ndarray, instance: np.ndarray, labels: np.ndarray, *, known: Sequence[np.ndarray] = (),
                        thetas: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5), noise: float = 0.0,
                        min_part_area: int = 16, max_part_fraction: float = 0.8, min_solidity: float = 0.8,
                        duplicate_iou: float = 0.8, min_contrast: float = 2.0, max_regions: int = 300
                        ) -> list[np.ndarray]:
    """New parts (bool ``[H, W]``) of ``instance`` from merging the superpixels ``labels`` inside it.

    ``f`` float ``[H, W]`` object channel, ``labels`` int ``[H, W]`` superpixels of the whole image,
    ``known`` the parts the divide stage already found (new parts duplicating them are not returned),
    ``noise`` the noise standard deviation of ``f``. A part must also stand out from the rest of the
    instance (:func:`~unsamv2_engine.pseudo.classical.nested_contrast` >= ``min_contrast``). An instance
    of more than ``max_regions`` superpixels (a cluster of cells, a tissue region) is not merged: its
    parts are the ones the divide stage found inside it (cells, nuclei), which are merged themselves
    when they are instances of their own elsewhere.
    """
    from unsamv2_engine.pseudo.classical import contrast_ok, nested_contrast

    inst = np.asarray(instance, bool)
    rows = np.flatnonzero(inst.any(axis=1))
    cols = np.flatnonzero(inst.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sl = (slice(y0, y1), slice(x0, x1))
    lab = labels[sl]
    inside = inst[sl]
    # superpixels more than half inside the instance take part; cut to the instance
    ids, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    in_count = np.bincount(inv.reshape(-1), weights=inside.reshape(-1).astype(np.float64), minlength=ids.size)
    tot = np.bincount(inv.reshape(-1), minlength=ids.size)
    use = in_count > 0.5 * tot
    local = np.where(inside & use[inv], inv, -1)
    region_ids = np.flatnonzero(use)
    if region_ids.size < 2 or region_ids.size > max_regions:
        return []
    remap = -np.ones(ids.size, np.int64)
    remap[region_ids] = np.arange(region_ids.size)
    reg = np.where(local >= 0, remap[np.maximum(local, 0)], -1)
    vals = f[sl]
    flat = reg.reshape(-1)
    ok = flat >= 0
    sizes = np.bincount(flat[ok], minlength=region_ids.size)
    means = np.bincount(flat[ok], weights=vals.reshape(-1)[ok], minlength=region_ids.size) / np.maximum(sizes, 1)
    edges = set()
    for a, b in ((reg[:, :-1], reg[:, 1:]), (reg[:-1, :], reg[1:, :])):
        m = (a != b) & (a >= 0) & (b >= 0)
        edges.update(zip(a[m].tolist(), b[m].tolist()))
    inst_vals = vals[inside]
    lo, hi = np.percentile(inst_vals, [2, 98])
    scale = max(float(hi - lo), 4.0 * noise, 1e-3)
    levels = merge_regions(means, sizes, sorted(edges), scale, thetas)
    inst_area = int(inside.sum())
    out: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    known_local = [np.asarray(k, bool)[sl] for k in known]
    for clusters in levels:
        for members in clusters:
            key = tuple(sorted(members))
            if key in seen:
                continue
            seen.add(key)
            part = np.isin(reg, members)
            area = int(part.sum())
            if area < min_part_area or area > max_part_fraction * inst_area:
                continue
            if not contrast_ok(vals, part, noise) or nested_contrast(vals, part, inside) < min_contrast:
                continue
            if _solidity(part) < min_solidity:
                continue
            if any(_iou(part, k) > duplicate_iou for k in known_local + out):
                continue
            out.append(part)
    full = []
    for part in out:
        m = np.zeros(inst.shape, bool)
        m[sl] = part
        full.append(m)
    return full


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = int(np.count_nonzero(a & b))
    if inter == 0:
        return 0.0
    return inter / int(np.count_nonzero(a | b))
