"""Conquer-stage iterative merging of patch features (docs/model-reference.md §5.2 steps 3-4).

Greedy agglomerative clustering on a 4-connected patch grid:

* every (valid) patch starts as its own cluster;
* the similarity of two clusters is the cosine of their L2-normalised mean features
  (patch features are L2-normalised first, a cluster keeps the *sum* of its patch features
  and its similarity vector is that sum normalised);
* for each threshold theta (in the given order, continuing from the previous level's state),
  the globally most similar *adjacent* pair is merged repeatedly while its similarity >= theta;
* after each theta, every surviving cluster with >= ``min_size`` patches is emitted as a boolean
  patch-resolution mask.

Each live cluster caches its best adjacent similarity/partner (``best_sim`` / ``best_nb`` arrays);
the global best pair is one vectorised ``argmax`` over those arrays per merge, and a merge only
recomputes the caches of the merged cluster's neighbours. This avoids the stale-entry blow-up a
lazy pair heap suffers when one large cluster with hundreds of neighbours keeps growing
(a 48x48x64 map merges in a fraction of a second).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["coverage", "iterative_merge", "upsample_mask"]

_EPS = 1e-12


def _normalise(v: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (zero vectors stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, _EPS)


def iterative_merge(
    features: np.ndarray,
    thetas: Sequence[float] = (0.9, 0.8, 0.7, 0.6, 0.5),
    min_size: int = 4,
    valid: np.ndarray | None = None,
) -> list[list[np.ndarray]]:
    """Hierarchically merge adjacent patches by feature cosine similarity.

    Parameters
    ----------
    features
        float array ``[h, w, C]`` of patch features (e.g. DINOv3 patch tokens).
    thetas
        similarity thresholds, applied in order; each level continues from the state
        left by the previous one (so use a non-increasing sequence for a coarsening hierarchy).
    min_size
        a cluster is emitted only if it has at least this many patches.
    valid
        optional bool ``[h, w]``; patches where it is False take no part (they belong to
        no cluster and do not connect their neighbours). ``None`` means all patches valid.

    Returns
    -------
        ``levels`` with ``len(levels) == len(thetas)``; ``levels[k]`` is a list of bool
        ``[h, w]`` masks, one per cluster alive after threshold ``thetas[k]`` with
        ``>= min_size`` patches, ordered by cluster id (original patches first in raster order,
        then merged clusters in creation order). Deterministic: ties in similarity are broken
        by the smaller (cluster id, cluster id) pair.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 3:
        raise ValueError(f"features must be [h, w, C], got shape {feats.shape}")
    h, w, c = feats.shape
    if valid is None:
        valid_arr = np.ones((h, w), dtype=bool)
    else:
        valid_arr = np.asarray(valid, dtype=bool)
        if valid_arr.shape != (h, w):
            raise ValueError(f"valid must have shape {(h, w)}, got {valid_arr.shape}")

    unit = _normalise(feats.reshape(h * w, c))
    vidx = np.flatnonzero(valid_arr.reshape(-1))
    n0 = int(vidx.size)
    cap = max(2 * n0, 1)  # at most n0 - 1 merges

    # cluster state, indexed by cluster id; merged clusters get fresh ids n0, n0+1, ...
    sums = np.zeros((cap, c))
    dirs = np.zeros((cap, c))
    sums[:n0] = unit[vidx]
    dirs[:n0] = unit[vidx]
    members: list[list[int] | None] = [[int(p)] for p in vidx]
    nsim: list[dict[int, float] | None] = [{} for _ in range(n0)]  # neighbour -> similarity
    best_sim = np.full(cap, -np.inf)  # best adjacent similarity of each live cluster
    best_nb = np.full(cap, -1, dtype=np.int64)

    # 4-connected adjacency between valid patches
    cid_grid = -np.ones(h * w, dtype=np.int64)
    cid_grid[vidx] = np.arange(n0)
    cid_grid = cid_grid.reshape(h, w)
    right = (cid_grid[:, :-1] >= 0) & (cid_grid[:, 1:] >= 0)
    down = (cid_grid[:-1, :] >= 0) & (cid_grid[1:, :] >= 0)
    a_idx = np.concatenate([cid_grid[:, :-1][right], cid_grid[:-1, :][down]])
    b_idx = np.concatenate([cid_grid[:, 1:][right], cid_grid[1:, :][down]])
    sims0 = np.einsum("ij,ij->i", dirs[a_idx], dirs[b_idx])
    for a, b, s in zip(a_idx.tolist(), b_idx.tolist(), sims0.tolist()):
        nsim[a][b] = s  # type: ignore[index]
        nsim[b][a] = s  # type: ignore[index]

    def _best(cid: int) -> None:
        d = nsim[cid]
        assert d is not None
        if not d:
            best_sim[cid], best_nb[cid] = -np.inf, -1
            return
        # highest similarity, ties to the smallest neighbour id
        bs, bnb = -np.inf, -1
        for nb, s in d.items():
            if s > bs or (s == bs and nb < bnb):
                bs, bnb = s, nb
        best_sim[cid], best_nb[cid] = bs, bnb

    for cid in range(n0):
        _best(cid)

    next_id = n0

    def _merge(a: int, b: int) -> None:
        nonlocal next_id
        new = next_id
        next_id += 1
        sums[new] = sums[a] + sums[b]
        dirs[new] = _normalise(sums[new])
        members.append(members[a] + members[b])  # type: ignore[operator]
        da, db = nsim[a], nsim[b]
        assert da is not None and db is not None
        nbrs = sorted((da.keys() | db.keys()) - {a, b})
        for x in (a, b):
            members[x] = None
            nsim[x] = None
            best_sim[x], best_nb[x] = -np.inf, -1
        if nbrs:
            nb_arr = np.asarray(nbrs, dtype=np.int64)
            sims = dirs[nb_arr] @ dirs[new]
            sims_l = sims.tolist()
        else:
            nb_arr = np.zeros(0, dtype=np.int64)
            sims = np.zeros(0)
            sims_l = []
        nsim.append(dict(zip(nbrs, sims_l)))
        _best(new)
        if not nbrs:
            return
        # neighbours whose best partner was a or b need a full recompute
        # (all other neighbours of such an n have similarity <= its old best, so if the
        # similarity to the new cluster is strictly above the old best, the new cluster wins)
        bn = best_nb[nb_arr]
        better = sims > best_sim[nb_arr]  # strict: ties keep the smaller (older) id
        redo = ((bn == a) | (bn == b)) & ~better
        best_sim[nb_arr[better]] = sims[better]
        best_nb[nb_arr[better]] = new
        for n, s in zip(nbrs, sims_l):
            d = nsim[n]
            assert d is not None
            d.pop(a, None)
            d.pop(b, None)
            d[new] = s
        for n in nb_arr[redo].tolist():
            _best(n)

    def _emit() -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for mem in members:
            if mem is not None and len(mem) >= min_size:
                m = np.zeros(h * w, dtype=bool)
                m[mem] = True
                out.append(m.reshape(h, w))
        return out

    levels: list[list[np.ndarray]] = []
    for theta in thetas:
        while n0 > 0:
            cid = int(np.argmax(best_sim[:next_id]))  # first max -> smallest id on ties
            if not best_sim[cid] >= theta:
                break
            other = int(best_nb[cid])
            _merge(min(cid, other), max(cid, other))
        levels.append(_emit())
    return levels


def coverage(mask: np.ndarray, instance: np.ndarray) -> float:
    """Fraction of ``mask`` inside ``instance``: ``|mask & instance| / |mask|``.

    Both are bool-like arrays of the same shape ``[H, W]``. An empty ``mask`` gives 0.0.
    The conquer stage keeps a level mask only if this is > 0.9 (§5.3-5).
    """
    m = np.asarray(mask, dtype=bool)
    inst = np.asarray(instance, dtype=bool)
    if m.shape != inst.shape:
        raise ValueError(f"shape mismatch: {m.shape} vs {inst.shape}")
    area = int(m.sum())
    if area == 0:
        return 0.0
    return float(np.logical_and(m, inst).sum()) / area


def upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a patch-resolution mask ``[h, w]`` to pixel resolution ``shape = (H, W)``, bool.

    Nearest-neighbour on pixel centres: output pixel ``(y, x)`` takes input cell
    ``(floor((y + 0.5) * h / H), floor((x + 0.5) * w / W))``. When ``H, W`` are integer multiples
    of ``h, w`` this is exact block replication (each patch becomes a ``H/h x W/w`` block), so
    areas scale consistently. This is a close stand-in for the authors' PIL resize of a 0/255
    image thresholded at half-max (which can differ by about one pixel at cluster borders).
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    h, w = m.shape
    big_h, big_w = int(shape[0]), int(shape[1])
    if big_h <= 0 or big_w <= 0:
        return np.zeros((max(big_h, 0), max(big_w, 0)), dtype=bool)
    ys = np.minimum(((np.arange(big_h) + 0.5) * h / big_h).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(big_w) + 0.5) * w / big_w).astype(np.int64), w - 1)
    return m[ys[:, None], xs[None, :]]
