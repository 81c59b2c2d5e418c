"""Geometry: tissue fields, seed packing, star-convex / ellipsoidal shapes and label-image utilities.

Everything works on a 2D ``[H, W]`` or 3D ``[Z, H, W]`` grid with a physical ``spacing`` (µm per
pixel along each axis); positions are in µm, measured from the centre of pixel 0 along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as _cc_label

__all__ = [
    "ShapeBank",
    "centroids_and_radii",
    "contact_pixels",
    "drop_small",
    "inner_boundary",
    "interior_distance",
    "keep_largest_component",
    "pack_seeds",
    "pixel_coords_um",
    "random_rotations",
    "tissue_labels",
]


# --------------------------------------------------------------------------- grid helpers


def pixel_coords_um(flat_index: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Positions (µm) of flat pixel indices: float64 ``[P, ndim]``."""
    idx = np.unravel_index(flat_index, shape)
    return np.stack([i * s for i, s in zip(idx, spacing)], axis=1).astype(np.float64)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], factor: int, sigma: float) -> np.ndarray:
    """Unit-variance band-limited noise: white noise on a grid ``factor`` times coarser, smoothed, zoomed up."""
    coarse = tuple(max(2, -(-n // factor) + 1) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma, mode="wrap")
    field /= field.std() + 1e-12
    zoom = [n / c for n, c in zip(shape, coarse)]
    up = ndimage.zoom(field, zoom, order=1, mode="nearest", grid_mode=True)
    return up[tuple(slice(0, n) for n in shape)]


# --------------------------------------------------------------------------- tissue


def tissue_labels(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], *,
                  mode: str, fraction: float, max_regions: int, min_area_px: int) -> np.ndarray:
    """Level-0 regions: 1..``max_regions`` smooth blobs, or the whole field (``mode="full"``).

    A sum of 2 to 5 anisotropic Gaussian bumps plus low-frequency noise is thresholded at the
    quantile that leaves ``fraction`` of the field as tissue; its connected components (full
    connectivity, so that two regions never touch) larger than ``min_area_px`` are kept, the
    ``max_regions`` largest of them. Returns int32 labels ``1..n`` (largest first), 0 = background.
    """
    if mode == "full":
        return np.ones(shape, dtype=np.int32)
    extent = np.array([n * s for n, s in zip(shape, spacing)])
    field = np.zeros(shape, dtype=np.float64)
    n_bumps = int(rng.integers(2, 6))
    for _ in range(n_bumps):
        centre = rng.uniform(0.05, 0.95, size=len(shape)) * extent
        width = rng.uniform(0.18, 0.4) * extent.max() * rng.uniform(0.7, 1.3, size=len(shape))
        amp = rng.uniform(0.6, 1.0)
        bump = np.ones((1,) * len(shape))
        for axis, (n, s) in enumerate(zip(shape, spacing)):
            g = np.exp(-0.5 * ((np.arange(n) * s - centre[axis]) / width[axis]) ** 2)
            bump = bump * g.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        field += amp * bump
    field /= field.max() + 1e-12
    factor = max(4, int(round(6.0 / max(spacing[-1], 1e-6) / 2)))  # noise correlation ~ several µm
    field += 0.12 * _smooth_noise(rng, shape, factor, 1.5)
    k = int(round((1.0 - min(fraction, 1.0)) * (field.size - 1)))
    threshold = np.partition(field.ravel(), k)[k]
    mask = field > threshold
    comps, n = ndimage.label(mask, structure=np.ones((3,) * len(shape), dtype=bool))
    if n == 0:
        return np.ones(shape, dtype=np.int32)  # degenerate field: whole image
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    order = np.argsort(-sizes[1:], kind="stable") + 1
    keep = [c for c in order[:max_regions] if sizes[c] >= min_area_px]
    if not keep:
        keep = [int(order[0])]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[comps]


# --------------------------------------------------------------------------- seeds


def _unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pack_seeds(rng: np.random.Generator, tissue: np.ndarray, spacing: tuple[float, ...], *,
               median_radius_um: float, dispersion: float, density: float, mean_cluster_size: float,
               max_cells: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell seeds grouped in clusters, packed inside the tissue.

    A cluster starts at a random tissue point; ``geometric(1/mean_cluster_size) - 1`` more seeds are
    placed next to random members at 0.75-0.9 x the sum of radii (so neighbours overlap and the
    Voronoi split makes them touch). Seeds of different clusters keep 1.15 x the sum of radii apart.
    Stops when the seeded cell area (volume in 3D) reaches ``density`` x the tissue area.

    Returns
    -------
    positions : float64 ``[N, ndim]`` (µm); radii : float64 ``[N]`` (µm); cluster : int64 ``[N]`` group index.
    """
    shape = tissue.shape
    d = tissue.ndim
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    tissue_idx = np.flatnonzero(tissue)
    if tissue_idx.size == 0:
        return np.zeros((0, d)), np.zeros(0), np.zeros(0, dtype=np.int64)
    voxel = float(np.prod(spacing_arr))
    target = density * tissue_idx.size * voxel
    unit = np.pi if d == 2 else 4.0 / 3.0 * np.pi

    pos = np.zeros((max_cells, d))
    rad = np.zeros(max_cells)
    clu = np.zeros(max_cells, dtype=np.int64)
    n = 0
    placed = 0.0
    fails = 0
    n_clusters = 0
    upper = (np.asarray(shape) - 0.5) * spacing_arr

    def draw_radius() -> float:
        return float(median_radius_um * np.exp(np.clip(rng.normal(0.0, dispersion), -0.7, 0.7)))

    def fits(p: np.ndarray, r: float, cluster: int) -> bool:
        if np.any(p < -0.5 * spacing_arr) or np.any(p > upper):
            return False
        ij = tuple(np.clip(np.rint(p / spacing_arr).astype(np.int64), 0, np.asarray(shape) - 1))
        if not tissue[ij]:
            return False
        if n == 0:
            return True
        dist = np.sqrt(((pos[:n] - p) ** 2).sum(axis=1))
        need = np.where(clu[:n] == cluster, 0.7, 1.15) * (rad[:n] + r)
        return bool(np.all(dist >= need))

    while placed < target and fails < 300 and n < max_cells:
        size = int(rng.geometric(1.0 / max(mean_cluster_size, 1.0)))
        start = tissue_idx[rng.integers(tissue_idx.size)]
        p = pixel_coords_um(np.array([start]), shape, spacing)[0] + rng.uniform(-0.5, 0.5, d) * spacing_arr
        r = draw_radius()
        if not fits(p, r, n_clusters):
            fails += 1
            continue
        members = [n]
        pos[n], rad[n], clu[n] = p, r, n_clusters
        n += 1
        placed += unit * r**d
        for _ in range(size - 1):
            for _attempt in range(8):
                if n >= max_cells:
                    break
                m = members[int(rng.integers(len(members)))]
                r2 = draw_radius()
                q = pos[m] + _unit_vectors(rng, 1, d)[0] * (rad[m] + r2) * rng.uniform(0.75, 0.9)
                if fits(q, r2, n_clusters):
                    members.append(n)
                    pos[n], rad[n], clu[n] = q, r2, n_clusters
                    n += 1
                    placed += unit * r2**d
                    break
        n_clusters += 1
    return pos[:n].copy(), rad[:n].copy(), clu[:n].copy()


# --------------------------------------------------------------------------- shapes


@dataclass
class ShapeBank:
    """Star-convex shapes, one per row (all lengths in µm).

    A point x belongs to shape i when its normalised radius ``rho_i(x) < 1``, with
    ``q = R_i^T (x - centre_i)``, ``rho_e = sqrt(sum_j (q_j / axes_ij)^2)`` (an ellipse / ellipsoid)
    and, in 2D, ``rho = rho_e / (1 + sum_k coef_ik cos(k θ + phase_ik))`` with θ the angle of q
    and k = 2, 3, ... (Fourier boundary perturbation).

    Attributes
    ----------
    centre : ``[N, d]``; axes : ``[N, d]`` semi-axes; rot : ``[N, d, d]`` rotation matrices;
    coef, phase : ``[N, K]`` (K may be 0; 2D only).
    """

    centre: np.ndarray
    axes: np.ndarray
    rot: np.ndarray
    coef: np.ndarray
    phase: np.ndarray

    def __len__(self) -> int:
        return int(self.centre.shape[0])

    def rho(self, points: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Normalised radius of ``points`` ``[P, d]`` (µm) w.r.t. shape ``owner[p]``; float64 ``[P]``."""
        d = points.shape[1]
        delta = points - self.centre[owner]
        total = np.zeros(points.shape[0])
        q_list = []
        for j in range(d):
            q = np.zeros(points.shape[0])
            for i in range(d):
                q += self.rot[owner, i, j] * delta[:, i]
            q_list.append(q)
            total += (q / self.axes[owner, j]) ** 2
        rho = np.sqrt(total)
        if d == 2 and self.coef.shape[1]:
            theta = np.arctan2(q_list[1], q_list[0])
            factor = np.ones(points.shape[0])
            for k in range(self.coef.shape[1]):
                factor += self.coef[owner, k] * np.cos((k + 2) * theta + self.phase[owner, k])
            rho = rho / np.maximum(factor, 0.2)
        return rho


def random_rotations(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` random rotation matrices ``[n, d, d]`` (2D: uniform angle; 3D: QR of a Gaussian matrix)."""
    if d == 2:
        a = rng.uniform(0.0, 2.0 * np.pi, n)
        c, s = np.cos(a), np.sin(a)
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    out = np.zeros((n, d, d))
    for i in range(n):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        out[i] = q
    return out


# --------------------------------------------------------------------------- label utilities


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep, for every label, only its largest face-connected component (in place and returned)."""
    if not labels.any():
        return labels
    comps = _cc_label(labels, background=0, connectivity=1)
    flat_c = comps.ravel()
    n = int(flat_c.max())
    owner = np.zeros(n + 1, dtype=labels.dtype)
    owner[flat_c] = labels.ravel()
    sizes = np.bincount(flat_c, minlength=n + 1)
    sizes[0] = 0
    order = np.lexsort((sizes[1:], owner[1:])) + 1  # by owner, then size ascending
    sorted_owner = owner[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = sorted_owner[1:] != sorted_owner[:-1]  # the largest component of each owner
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[last]] = True
    labels[~keep[comps]] = 0
    return labels


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove labels with fewer than ``min_size`` pixels (in place and returned)."""
    if not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def _neighbour_diff(labels: np.ndarray, nonzero_only: bool) -> np.ndarray:
    """Pixels with a face neighbour of a different label (both non-zero if ``nonzero_only``)."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = np.swapaxes(labels, 0, axis)
        o = np.swapaxes(out, 0, axis)
        diff = a[1:] != a[:-1]
        if nonzero_only:
            diff &= (a[1:] != 0) & (a[:-1] != 0)
        o[1:] |= diff
        o[:-1] |= diff
    return out


def inner_boundary(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a face neighbour of another label or background: bool, same shape."""
    return _neighbour_diff(labels, nonzero_only=False) & (labels > 0)


def contact_pixels(labels: np.ndarray) -> np.ndarray:
    """Object pixels touching a *different object* (not background) through a face: bool."""
    return _neighbour_diff(labels, nonzero_only=True)


def interior_distance(labels: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (µm) from each object pixel to its object's inner boundary (0 on it and outside)."""
    boundary = inner_boundary(labels)
    if not boundary.any():
        return np.zeros(labels.shape)
    dist = ndimage.distance_transform_edt(~boundary, sampling=spacing)
    dist[labels == 0] = 0.0
    return dist


def centroids_and_radii(labels: np.ndarray, spacing: tuple[float, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (µm, ``[n + 1, d]``) and equivalent radius (µm, ``[n + 1]``) of labels ``0..n``."""
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(np.float64)
    safe = np.maximum(counts, 1.0)
    cent = np.zeros((n + 1, labels.ndim))
    for axis in range(labels.ndim):
        coord = np.arange(labels.shape[axis], dtype=np.float64) * spacing[axis]
        shape = [1] * labels.ndim
        shape[axis] = -1
        w = np.broadcast_to(coord.reshape(shape), labels.shape).ravel()
        cent[:, axis] = np.bincount(flat, weights=w, minlength=n + 1) / safe
    volume = counts * float(np.prod(spacing))
    if labels.ndim == 2:
        radius = np.sqrt(volume / np.pi)
    else:
        radius = np.cbrt(3.0 * volume / (4.0 * np.pi))
    return cent, radius
