"""Divide stage: instance proposals and the instance/part rules (docs/model-reference.md §5.1).

The authors take their proposals from the CutLER detector, itself trained on MaskCut masks. Our
engine has no detector weights, so it runs MaskCut's normalized cut directly on backbone patch
features (several instances per image), and adds the loaded model's own whole-image masks at
granularity 1 when there is a model. The §5.2 rules then pick instances and their parts.

* :func:`normalized_cut` -- one bipartition of a patch grid: a thresholded cosine-affinity graph,
  the second eigenvector of its normalized Laplacian, split at the mean.
* :func:`maskcut` -- MaskCut: cut, keep the seed's connected component as an instance, remove its
  patches from the graph, repeat.
* :func:`model_masks` -- the model's whole-image masks at g = 1 (:class:`AutomaticSegmenter`).
* :func:`split_instances` -- §5.2 steps 2-4: instances (large, not contained in another mask) and
  the masks each one contains (its parts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unsamv2_engine.model.build import UnSAMv2Model

__all__ = ["DividedInstance", "is_contained", "maskcut", "model_masks", "normalized_cut", "split_instances"]

_EPS_AFFINITY = 1e-5  # weight of an edge below the affinity threshold (keeps the graph connected)


def normalized_cut(features: np.ndarray, *, valid: np.ndarray | None = None, tau: float = 0.15
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Bipartition a patch grid by a normalized cut (Shi & Malik, as MaskCut sets it up).

    Parameters
    ----------
    features
        ``[h, w, C]`` float patch features.
    valid
        optional bool ``[h, w]``: patches that take part (others get eigenvector NaN and
        belong to neither side). ``None``: all.
    tau
        affinity threshold: ``A_ij = 1`` if the cosine of patches i, j is > tau, else 1e-5.

    Returns
    -------
        ``(eigvec, side)``: float64 ``[h, w]`` the second smallest generalized eigenvector of
        ``(D - A) x = lambda D x`` (NaN outside ``valid``), and bool ``[h, w]`` = ``eigvec > mean``
        (False outside ``valid``). The sign of an eigenvector is arbitrary: see :func:`maskcut` for
        which side is the foreground.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 3:
        raise ValueError(f"features must be [h, w, C], got shape {feats.shape}")
    h, w, c = feats.shape
    keep = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)
    idx = np.flatnonzero(keep.reshape(-1))
    eigvec = np.full(h * w, np.nan)
    side = np.zeros(h * w, bool)
    if idx.size < 2:
        return eigvec.reshape(h, w), side.reshape(h, w)
    x = feats.reshape(-1, c)[idx]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    affinity = np.where(_single_thread_gram(x) > tau, 1.0, _EPS_AFFINITY)
    degree = affinity.sum(axis=1)
    # Normalized Laplacian I - D^-1/2 A D^-1/2: its 2nd smallest eigenvector u gives x = D^-1/2 u.
    inv_sqrt = 1.0 / np.sqrt(degree)
    normalized = affinity * inv_sqrt[:, None] * inv_sqrt[None, :]
    vec = _second_eigenvector(normalized) * inv_sqrt
    eigvec[idx] = vec
    side[idx] = vec > vec.mean()
    return eigvec.reshape(h, w), side.reshape(h, w)


def _second_eigenvector(normalized: np.ndarray) -> np.ndarray:
    """Eigenvector of the 2nd largest eigenvalue of a symmetric ``[n, n]`` matrix (deterministic).

    Lanczos (``eigsh``, seeded start vector) for large graphs, a dense solver for small ones. The
    Lanczos products are :func:`_single_thread_matvec`: on a busy 2-core machine, each multithreaded
    BLAS product on a graph of ~900 patches cost a wake-up of the BLAS threads of ~5 ms of CPU and
    wall time, 10 x the product itself (3 cuts: 0.44 CPU s per 512 x 512 image, 0.03 s single-threaded).
    """
    n = normalized.shape[0]
    if n > 64:
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        start = np.random.default_rng(0).standard_normal(n)
        operator = LinearOperator((n, n), matvec=lambda v: _single_thread_matvec(normalized, v), dtype=np.float64)
        try:
            vals, vecs = eigsh(operator, k=2, which="LA", v0=start, tol=1e-8)
            return vecs[:, int(np.argmin(vals))]
        except ArpackNoConvergence:
            pass
    from scipy.linalg import eigh

    _, vecs = eigh(normalized, subset_by_index=[n - 2, n - 1])
    return vecs[:, 0]  # ascending order: column 0 is the 2nd largest


def _single_thread_gram(x: np.ndarray, *, max_block: int = 200_000) -> np.ndarray:
    """``x @ x.T`` (float64 ``[n, C]`` -> ``[n, n]``) in row blocks small enough (``rows * n * C`` below
    OpenBLAS's ~260 000) to run on the calling thread (see :func:`_single_thread_matvec`).
    """
    n, c = x.shape
    rows = max(1, max_block // max(n * c, 1))
    out = np.empty((n, n))
    for a in range(0, n, rows):
        out[a:a + rows] = x[a:a + rows] @ x.T
    return out


def _single_thread_matvec(matrix: np.ndarray, v: np.ndarray, *, max_block: int = 8192) -> np.ndarray:
    """``matrix @ v`` (``[n, n]`` float64 by ``[n]``) in row blocks of at most ``max_block`` elements.

    OpenBLAS runs a product of fewer than ~9000 elements on the calling thread, so the blocks never
    wake its thread pool. The result equals the whole product's to rounding (~1e-13 relative: the
    blocked kernel sums in another order) and does not depend on where the arrays lie in memory
    (``einsum``'s does: its SIMD path follows the alignment, which flipped MaskCut's cuts on degenerate
    graphs from run to run). On the 8 benchmark images checked, the masks were the same as before.
    """
    n = matrix.shape[0]
    vec = np.ravel(v)
    rows = max(1, max_block // max(n, 1))
    out = np.empty(n)
    for a in range(0, n, rows):
        out[a:a + rows] = matrix[a:a + rows] @ vec
    return out


def _border_cells(valid: np.ndarray) -> np.ndarray:
    border = np.zeros_like(valid)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border & valid


def maskcut(features: np.ndarray, *, n_instances: int = 8, tau: float = 0.15, min_patches: int = 4,
            max_border_fraction: float = 0.5) -> list[np.ndarray]:
    """Up to ``n_instances`` instance masks on the patch grid, by repeated normalized cuts (MaskCut).

    Each round: :func:`normalized_cut` on the patches not yet taken; the foreground is the side
    holding the patch of largest ``|eigvec|`` (the seed), unless that side holds more than half of
    the grid's border patches (then it is the background and the other side is taken, with the
    seed re-chosen there); the instance is the 4-connected component of the foreground that holds
    the seed. Its patches leave the graph for the next rounds. A component that still covers more
    than ``max_border_fraction`` of the border, or has fewer than ``min_patches`` patches, is not
    returned (it ends the search: what is left looks like background).

    Parameters
    ----------
    features
        ``[h, w, C]`` patch features.

    Returns
    -------
        bool ``[h, w]`` masks in discovery order (disjoint).
    """
    from scipy import ndimage as ndi

    feats = np.asarray(features, dtype=np.float64)
    h, w = feats.shape[:2]
    free = np.ones((h, w), bool)
    found: list[np.ndarray] = []
    for _ in range(int(n_instances)):
        if free.sum() < max(2 * min_patches, 2):
            break
        eigvec, side = normalized_cut(feats, valid=free, tau=tau)
        if not side.any() or side.sum() == free.sum():
            break
        border = _border_cells(free)
        magnitude = np.where(free, np.abs(np.nan_to_num(eigvec)), -1.0)
        seed = np.unravel_index(int(np.argmax(magnitude)), (h, w))
        fg = side if side[seed] else (free & ~side)
        if border.any() and (fg & border).sum() > 0.5 * border.sum():
            fg = free & ~fg
            seed = np.unravel_index(int(np.argmax(np.where(fg, magnitude, -1.0))), (h, w))
        components, _ = ndi.label(fg)
        if components[seed] == 0:
            break
        instance = components == components[seed]
        touches = (instance & border).sum() / max(border.sum(), 1)
        free &= ~instance
        if instance.sum() < min_patches or touches > max_border_fraction:
            break
        found.append(instance)
    return found


def model_masks(model: UnSAMv2Model, image: np.ndarray, *, granularity: float = 1.0,
                preset: str | None = None, points_per_side: int | None = None) -> list[np.ndarray]:
    """The model's whole-image masks at ``granularity``: bool ``[H, W]`` each, by decreasing score.

    ``image`` is uint8 RGB ``[H, W, 3]``; ``preset`` is an :class:`AutoSettings` preset (None: ``authors``
    on CUDA, ``cpu`` elsewhere); ``points_per_side`` overrides its point grid.
    """
    from unsamv2_engine.automatic.segmenter import AutomaticSegmenter
    from unsamv2_engine.automatic.settings import AutoSettings

    name = preset or ("authors" if model.device.type == "cuda" else "cpu")
    settings = AutoSettings.preset(name).with_(points_per_side=points_per_side)
    result = AutomaticSegmenter(model, settings).generate(image, granularity)
    return [m for m in result.masks if m.any()]


def is_contained(a: np.ndarray, b: np.ndarray, thresh: float = 0.8) -> bool:
    """§5.2: ``|a & b| / |a| > thresh`` (an empty ``a`` is not contained)."""
    area = int(np.count_nonzero(a))
    return area > 0 and np.count_nonzero(a & b) / area > thresh


@dataclass
class DividedInstance:
    """One instance of the divide stage: its mask ``[H, W]`` bool, its contained masks, where it came from."""

    mask: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)
    source: str = ""


def split_instances(masks: Sequence[np.ndarray], *, sources: Sequence[str] | None = None,
                    contain_thresh: float = 0.8, min_instance_fraction: float = 0.05,
                    duplicate_iou: float = 0.9) -> list[DividedInstance]:
    """§5.2 steps 2-4 on the proposals of one image.

    An **instance** has an area fraction > ``min_instance_fraction`` of the image and is not contained
    (``is_contained`` > ``contain_thresh``) in any other proposal; its **parts** are every other
    proposal contained in it (no area limit; a part may belong to several instances).

    Unlike CutLER's detections, our two proposal sources often find the same object twice, and two
    copies would each be "contained in another" and both lose instance status. So proposals whose
    IoU with an earlier one is > ``duplicate_iou`` are dropped first.

    Parameters
    ----------
    masks
        bool ``[H, W]`` proposals.
    sources
        a name per proposal (recorded in :attr:`DividedInstance.source`).

    Returns
    -------
        instances, largest first.
    """
    from unsamv2_engine.pseudo.nms import mask_iou

    props = [np.asarray(m, bool) for m in masks]
    names = list(sources) if sources is not None else ["proposal"] * len(props)
    kept: list[int] = []
    for i, m in enumerate(props):
        if m.any() and all(mask_iou(m, props[j]) <= duplicate_iou for j in kept):
            kept.append(i)
    if not kept:
        return []
    total = props[kept[0]].size
    areas = {i: int(np.count_nonzero(props[i])) for i in kept}
    contained = {(i, j): is_contained(props[i], props[j], contain_thresh) for i in kept for j in kept if i != j}
    instances = []
    for i in kept:
        if areas[i] / total <= min_instance_fraction or any(contained[i, j] for j in kept if j != i):
            continue
        parts = [props[j] for j in kept if j != i and contained[j, i]]
        instances.append(DividedInstance(props[i], parts, names[i]))
    instances.sort(key=lambda inst: -int(np.count_nonzero(inst.mask)))
    return instances


def describe(instances: Sequence[DividedInstance]) -> dict[str, Any]:
    """Counts for logs and the JSON ``info``."""
    return {"instances": len(instances), "divide_parts": int(sum(len(i.parts) for i in instances))}
