"""The scene graph: parametric objects, their rasterisation into nested label images, ids and granularity.

Levels (coarse to fine, see :data:`~unsamv2_engine.synth.config.LEVELS`)::

    0 tissue     smooth region(s) of the field (or the whole field)
    1 cluster    a connected group of >= 2 touching cells (isolated cells have no cluster)
    2 cell       Voronoi split of seeds intersected with a star-convex blob (2D) / ellipsoid (3D)
    3 nucleus    ellipse / ellipsoid inside the cell's eroded interior
    4 nucleolus  1..max_nucleoli small discs / balls inside the nucleus

Rasterisation goes top-down: each level is clipped to its parent, reduced to its largest connected
component, and objects below the minimum size are dropped before the next level is built, so that
child ⊂ parent always holds and no two objects of a level overlap (each level is one label image).
The parent of a cell is its cluster, or its tissue for an isolated cell.

Object ids are global: level 0 gets ``1..n0``, level 1 ``n0+1..``, and so on (contiguous, unique
across levels). Granularity follows UnSAMv2 (docs/model-reference.md §5.4) within each *instance tree* = one
tissue object and all its descendants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from unsamv2_engine.granularity_scores import sqrt_area_granularity

from .config import LEVELS, SynthConfig
from .shapes import (
    ShapeBank,
    centroids_and_radii,
    contact_pixels,
    drop_small,
    interior_distance,
    keep_largest_component,
    pack_seeds,
    pixel_coords_um,
    random_rotations,
    tissue_labels,
)

__all__ = ["ObjectRecord", "RawScene", "SceneParams", "assign_ids", "object_records", "rasterize", "sample_scene",
           "with_frame_dynamics"]

TISSUE, CLUSTER, CELL, NUCLEUS, NUCLEOLUS = range(5)
N_FOURIER = 4  # k = 2..5


@dataclass
class SceneParams:
    """Parametric scene (µm). Cell ``i`` owns nucleus ``i`` and nucleoli ``i*M .. i*M+M-1``.

    Attributes
    ----------
    shape, spacing : spatial grid ``[H, W]`` / ``[Z, H, W]`` and µm per pixel along each axis.
    tissue : int32 label image of level 0 (static).
    cells : :class:`ShapeBank` of the cells (centres are the Voronoi seeds).
    seed_group : ``[N]`` cluster group of each seed from the packing (informative only).
    nuc_offset : ``[N, d]`` nucleus centre offset, in units of the cell's equivalent radius.
    nuc_axes : ``[N, d]`` nucleus semi-axes in units of the cell's equivalent radius.
    nuc_rot, nuc_coef, nuc_phase : nucleus orientation and 2D Fourier terms.
    nol_present : bool ``[N, M]``; nol_offset ``[N, M, d]`` (units of the nucleus equivalent radius);
    nol_radius : ``[N, M]`` µm.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    tissue: np.ndarray
    cells: ShapeBank
    seed_group: np.ndarray
    nuc_offset: np.ndarray
    nuc_axes: np.ndarray
    nuc_rot: np.ndarray
    nuc_coef: np.ndarray
    nuc_phase: np.ndarray
    nol_present: np.ndarray
    nol_offset: np.ndarray
    nol_radius: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def max_nucleoli(self) -> int:
        return int(self.nol_present.shape[1])


@dataclass
class RawScene:
    """One rasterised frame with *raw* ids (parameter indices + 1), before global ids.

    ``labels[k]`` is the int32 label image of level k. Raw ids: tissue = tissue label; cluster =
    ``1..``; cell and nucleus = cell index + 1; nucleolus = cell index * M + j + 1.
    ``parents[k]`` maps each raw id present at level k to ``(parent level, parent raw id)``.
    """

    labels: list[np.ndarray]
    parents: list[dict[int, tuple[int, int]]]
    cell_group: np.ndarray  # [N + 1] cluster raw id of each cell raw id (0 = none)
    cell_tissue: np.ndarray  # [N + 1] tissue raw id of each cell raw id
    depth: np.ndarray | None = None  # float32 distance (µm) of each cell pixel to its cell's boundary


@dataclass
class ObjectRecord:
    """One ground-truth object (one row of ``hierarchy.csv``).

    ``area`` is in pixels (2D, per frame for time-lapse) or voxels (3D); ``bbox`` is
    ``(min_0, ..., max_0, ...)`` per spatial axis, half-open (like skimage regionprops);
    ``centroid`` is in pixel coordinates per spatial axis. ``granularity`` is the UnSAMv2
    sqrt-area rule within the instance tree rooted at ``root`` (a tissue object);
    ``granularity_graco`` = ``max(0.1, round(area / area(root), 1))``; ``granularity_cell`` is the
    sqrt-area rule within the cell's own subtree (cell, nucleus, nucleoli; None above the cell
    level). ``frame`` is set for time-lapse samples (one record per object per frame present).
    """

    id: int
    level: int
    level_name: str
    parent: int
    root: int
    area: int
    bbox: tuple[int, ...]
    centroid: tuple[float, ...]
    granularity: float
    granularity_graco: float
    granularity_cell: float | None = None
    frame: int | None = None

    def to_row(self) -> dict:
        row = {"label": self.id, "level": self.level, "level_name": self.level_name, "parent": self.parent,
               "root": self.root, "area": self.area, "granularity": self.granularity,
               "granularity_graco": self.granularity_graco, "granularity_cell": self.granularity_cell,
               "bbox": list(self.bbox), "centroid": list(self.centroid)}
        if self.frame is not None:
            row = {"frame": self.frame, **row}
        return row


# --------------------------------------------------------------------------- sampling


def sample_scene(rngs: dict[str, np.random.Generator], shape: tuple[int, ...], spacing: tuple[float, ...],
                 cfg: SynthConfig) -> SceneParams:
    """Draw the parametric scene. ``rngs`` holds independent streams ``tissue``, ``cells``, ``nuclei``, ``nucleoli``."""
    d = len(shape)
    pixel_volume = float(np.prod(spacing))
    median_r = float(rngs["cells"].uniform(*cfg.cell_diameter_um)) / 2.0
    cell_px = (np.pi * median_r**2 if d == 2 else 4.0 / 3.0 * np.pi * median_r**3) / pixel_volume
    tissue = tissue_labels(rngs["tissue"], shape, spacing, mode=cfg.tissue_mode, fraction=cfg.tissue_fraction,
                           max_regions=cfg.max_tissues, min_area_px=int(3 * cell_px))
    pos, rad, group = pack_seeds(rngs["cells"], tissue, spacing, median_radius_um=median_r,
                                 dispersion=cfg.size_dispersion, density=cfg.density,
                                 mean_cluster_size=cfg.mean_cluster_size)
    n = pos.shape[0]
    rc = rngs["cells"]
    # cells: mildly elongated, with Fourier boundary terms in 2D (axes normalised to keep the area)
    elong = np.exp(rc.normal(0.0, 0.12, size=(n, d)))
    elong /= np.prod(elong, axis=1, keepdims=True) ** (1.0 / d)
    k = np.arange(2, 2 + N_FOURIER)
    cells = ShapeBank(centre=pos, axes=rad[:, None] * elong, rot=random_rotations(rc, n, d),
                      coef=(rc.normal(0.0, cfg.cell_irregularity, size=(n, N_FOURIER)) / (k / 2.0)
                            if d == 2 else np.zeros((n, 0))),
                      phase=rc.uniform(0, 2 * np.pi, size=(n, N_FOURIER)) if d == 2 else np.zeros((n, 0)))
    rn = rngs["nuclei"]
    scale = rn.uniform(*cfg.nucleus_scale, size=n)
    n_elong = np.exp(rn.normal(0.0, 0.15, size=(n, d)))
    n_elong /= np.prod(n_elong, axis=1, keepdims=True) ** (1.0 / d)
    offset_dir = rn.standard_normal((n, d))
    offset_dir /= np.linalg.norm(offset_dir, axis=1, keepdims=True) + 1e-12
    nuc_offset = offset_dir * rn.uniform(0.0, 0.15, size=(n, 1))
    nuc_coef = rn.normal(0.0, 0.03, size=(n, 2)) if d == 2 else np.zeros((n, 0))
    nuc_phase = rn.uniform(0, 2 * np.pi, size=(n, 2)) if d == 2 else np.zeros((n, 0))
    nuc_rot = random_rotations(rn, n, d)
    ro = rngs["nucleoli"]
    m = max(1, cfg.max_nucleoli)
    count = ro.integers(1, m + 1, size=n)
    present = np.arange(m)[None, :] < count[:, None]
    off = ro.standard_normal((n, m, d))
    off /= np.linalg.norm(off, axis=2, keepdims=True) + 1e-12
    off *= ro.uniform(0.0, 1.0, size=(n, m, 1)) ** (1.0 / d) * 0.5
    radius = ro.uniform(*cfg.nucleolus_diameter_um, size=(n, m)) / 2.0
    return SceneParams(shape=tuple(shape), spacing=tuple(spacing), tissue=tissue, cells=cells, seed_group=group,
                       nuc_offset=nuc_offset, nuc_axes=scale[:, None] * n_elong, nuc_rot=nuc_rot,
                       nuc_coef=nuc_coef, nuc_phase=nuc_phase, nol_present=present, nol_offset=off,
                       nol_radius=radius)


# --------------------------------------------------------------------------- rasterisation


def _nearest_seed(centres: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Voronoi owner (cell index + 1) of every pixel, from the seeds rounded to pixels; int32."""
    seeds = np.zeros(shape, dtype=np.int32)
    idx = np.clip(np.rint(centres / np.asarray(spacing)).astype(np.int64), 0, np.asarray(shape) - 1)
    seeds[tuple(idx.T)] = np.arange(1, centres.shape[0] + 1, dtype=np.int32)
    if not seeds.any():
        return seeds
    indices = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
    return seeds[tuple(indices)]


def rasterize(p: SceneParams, cfg: SynthConfig, min_size: int, *, cell_group: np.ndarray | None = None,
              cell_tissue: np.ndarray | None = None) -> RawScene:
    """Rasterise the scene into one label image per level (raw ids, see :class:`RawScene`).

    ``cell_group`` / ``cell_tissue`` (``[N + 1]``, indexed by cell raw id) fix the cluster
    membership and the tissue of every cell, as frame 0 of a time-lapse does for the later frames;
    by default clusters are the connected groups of touching cells and a cell's tissue is the one
    under its seed.
    """
    shape, spacing = p.shape, p.spacing
    n = p.n_cells
    tissue = p.tissue
    labels = [tissue.astype(np.int32, copy=True)] + [np.zeros(shape, dtype=np.int32) for _ in range(4)]
    parents: list[dict[int, tuple[int, int]]] = [{int(t): (-1, 0) for t in np.unique(tissue) if t}]
    parents += [{} for _ in range(4)]
    if cell_tissue is None:
        seed_px = np.clip(np.rint(p.cells.centre / np.asarray(spacing)).astype(np.int64), 0, np.asarray(shape) - 1)
        cell_tissue = np.zeros(n + 1, dtype=np.int32)
        if n:
            cell_tissue[1:] = tissue[tuple(seed_px.T)]
    group_out = np.zeros(n + 1, dtype=np.int32)
    if n == 0:
        return RawScene(labels, parents, group_out, cell_tissue, np.zeros(shape, dtype=np.float32))

    # ---- cells: Voronoi owner ∩ star-convex blob ∩ the cell's tissue
    owner = _nearest_seed(p.cells.centre, shape, spacing)
    cand = np.flatnonzero((tissue > 0) & (owner > 0))
    own = owner.ravel()[cand]
    inside = p.cells.rho(pixel_coords_um(cand, shape, spacing), own - 1) < 1.0
    inside &= tissue.ravel()[cand] == cell_tissue[own]
    cells = np.zeros(shape, dtype=np.int32)
    cells.ravel()[cand[inside]] = own[inside]
    keep_largest_component(cells)
    pre_gap = cells.copy()
    if cfg.gap_um > 0:
        contact = contact_pixels(cells)
        if contact.any():
            if cfg.gap_um / 2.0 <= min(spacing):  # only the contact pixels themselves are that close
                cells[contact] = 0
            else:
                dist = ndimage.distance_transform_edt(~contact, sampling=spacing)
                cells[dist < cfg.gap_um / 2.0] = 0
        keep_largest_component(cells)
    drop_small(cells, min_size)
    alive = np.zeros(n + 1, dtype=bool)
    alive[np.unique(cells)] = True
    alive[0] = False
    pre_gap[~alive[pre_gap]] = 0

    # ---- clusters: connected groups of >= 2 touching cells (or the fixed membership)
    if cell_group is None:
        comps, n_comp = ndimage.label(pre_gap > 0)
        comp_of_cell = np.zeros(n + 1, dtype=np.int64)
        comp_of_cell[pre_gap.ravel()] = comps.ravel()
        comp_of_cell[0] = 0
        members = np.bincount(comp_of_cell[alive], minlength=n_comp + 1)
        is_cluster = members >= 2
        is_cluster[0] = False
        cluster_id = np.zeros(n_comp + 1, dtype=np.int32)
        cluster_id[is_cluster] = np.arange(1, int(is_cluster.sum()) + 1, dtype=np.int32)
        group_out = cluster_id[comp_of_cell].astype(np.int32)
        group_out[~alive] = 0
    else:
        group_out = np.asarray(cell_group, dtype=np.int32)
    clusters = group_out[pre_gap]
    drop_small(clusters, min_size)
    labels[CLUSTER] = clusters
    labels[CELL] = cells
    for g in np.unique(clusters):
        if g:
            first_cell = int(np.flatnonzero(group_out == g)[0])
            parents[CLUSTER][int(g)] = (TISSUE, int(cell_tissue[first_cell]))
    present_clusters = set(parents[CLUSTER])
    for c in np.flatnonzero(alive):
        g = int(group_out[c])
        parents[CELL][int(c)] = (CLUSTER, g) if g in present_clusters else (TISSUE, int(cell_tissue[c]))

    # ---- nuclei: ellipse / ellipsoid in the eroded cell interior
    cent, req = centroids_and_radii(cells, spacing, n)
    nuclei_bank = ShapeBank(centre=cent[1:] + p.nuc_offset * req[1:, None], axes=p.nuc_axes * req[1:, None],
                            rot=p.nuc_rot, coef=p.nuc_coef, phase=p.nuc_phase)
    depth = interior_distance(cells, spacing).astype(np.float32)
    cand = np.flatnonzero(depth >= cfg.nucleus_margin_um)
    own = cells.ravel()[cand]
    inside = nuclei_bank.rho(pixel_coords_um(cand, shape, spacing), own - 1) < 1.0
    nuclei = np.zeros(shape, dtype=np.int32)
    nuclei.ravel()[cand[inside]] = own[inside]
    keep_largest_component(nuclei)
    drop_small(nuclei, min_size)
    labels[NUCLEUS] = nuclei
    for c in np.unique(nuclei):
        if c:
            parents[NUCLEUS][int(c)] = (CELL, int(c))

    # ---- nucleoli: discs / balls in the nucleus (power assignment between the nucleoli of a nucleus)
    m = p.max_nucleoli
    ncent, nreq = centroids_and_radii(nuclei, spacing, n)
    cand = np.flatnonzero(nuclei)
    if cand.size:
        own = nuclei.ravel()[cand] - 1
        pts = pixel_coords_um(cand, shape, spacing)
        best = np.full(cand.size, np.inf)
        which = np.zeros(cand.size, dtype=np.int32)
        for j in range(m):
            ok = p.nol_present[own, j]
            centre = ncent[own + 1] + p.nol_offset[own, j] * nreq[own + 1, None]
            rho = np.sqrt(((pts - centre) ** 2).sum(axis=1)) / p.nol_radius[own, j]
            rho[~ok] = np.inf
            better = rho < best
            best[better] = rho[better]
            which[better] = j
        hit = best < 1.0
        nucleoli = np.zeros(shape, dtype=np.int32)
        nucleoli.ravel()[cand[hit]] = own[hit] * m + which[hit] + 1
        keep_largest_component(nucleoli)
        drop_small(nucleoli, min_size)
        labels[NUCLEOLUS] = nucleoli
        for r in np.unique(nucleoli):
            if r:
                parents[NUCLEOLUS][int(r)] = (NUCLEUS, int((r - 1) // m + 1))
    parents[TISSUE] = {int(t): (-1, 0) for t in np.unique(tissue) if t}
    return RawScene(labels, parents, group_out, cell_tissue, depth)


# --------------------------------------------------------------------------- ids


def assign_ids(frames: list[RawScene]) -> tuple[list[list[np.ndarray]], dict[int, int], dict[int, int]]:
    """Global ids over one or more frames (same raw object -> same id in every frame).

    Returns
    -------
    labels : ``labels[frame][level]`` label images with global ids (uint16, or uint32 when needed).
    parent : global id -> global parent id (0 for roots).
    level : global id -> level index.
    """
    luts: list[np.ndarray] = []
    parent_raw: dict[tuple[int, int], tuple[int, int]] = {}
    next_id = 1
    id_of: dict[tuple[int, int], int] = {}
    for k in range(len(LEVELS)):
        raw_ids: set[int] = set()
        for fr in frames:
            raw_ids.update(fr.parents[k])
            for r, par in fr.parents[k].items():
                parent_raw.setdefault((k, r), par)
        size = 1 + max([int(f.labels[k].max()) for f in frames] + list(raw_ids) + [0])
        lut = np.zeros(size, dtype=np.int64)
        for r in sorted(raw_ids):
            lut[r] = next_id
            id_of[(k, r)] = next_id
            next_id += 1
        luts.append(lut)
    dtype = np.uint16 if next_id - 1 <= np.iinfo(np.uint16).max else np.uint32
    out = [[luts[k][fr.labels[k]].astype(dtype) for k in range(len(LEVELS))] for fr in frames]
    parent = {gid: (id_of.get(parent_raw[key], 0) if parent_raw[key][0] >= 0 else 0) for key, gid in id_of.items()}
    level = {gid: key[0] for key, gid in id_of.items()}
    return out, parent, level


# --------------------------------------------------------------------------- records


def _stats(lab: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """Areas ``[len(ids)]``, bboxes (tuples) and centroids ``[len(ids), d]`` (pixels) of ``ids`` in ``lab``."""
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    lo = int(ids.min())
    rel = flat[nz].astype(np.int64) - lo  # ids of one level are a contiguous-ish range
    n = int(ids.max()) - lo + 1
    counts = np.bincount(rel, minlength=n)
    coords = np.unravel_index(nz, lab.shape)
    cent = np.zeros((n, lab.ndim))
    lower = np.zeros((n, lab.ndim), dtype=np.int64)
    upper = np.zeros((n, lab.ndim), dtype=np.int64)
    for axis, c in enumerate(coords):
        cent[:, axis] = np.bincount(rel, weights=c, minlength=n) / np.maximum(counts, 1)
        low = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(low, rel, c)
        high = np.full(n, -1, dtype=np.int64)
        np.maximum.at(high, rel, c)
        lower[:, axis], upper[:, axis] = low, high + 1
    k = ids - lo
    boxes = [tuple(lower[i]) + tuple(upper[i]) for i in k]
    return counts[k], boxes, cent[k]


def object_records(levels_labels: list[np.ndarray], parent: dict[int, int], level: dict[int, int],
                   frame: int | None = None) -> list[ObjectRecord]:
    """Records (area, bbox, centroid, granularities) of the objects present in one frame / volume."""
    present: list[tuple[int, int, tuple, tuple]] = []
    for lab in levels_labels:
        ids = np.unique(lab)
        ids = ids[ids > 0].astype(np.int64)
        if not ids.size:
            continue
        areas, boxes, cents = _stats(lab, ids)
        for i, a, b, c in zip(ids, areas, boxes, cents):
            present.append((int(i), int(a), b, tuple(round(float(v), 3) for v in c)))
    area = {i: a for i, a, _, _ in present}

    def ancestor(i: int, at_level: int) -> int:
        while i and level[i] > at_level:
            i = parent[i]
        return i if i and level[i] == at_level else 0

    def root_of(i: int) -> int:
        while parent.get(i, 0):
            i = parent[i]
        return i

    trees: dict[int, list[int]] = {}
    cells: dict[int, list[int]] = {}
    for i, *_ in present:
        trees.setdefault(root_of(i), []).append(i)
        if level[i] >= CELL:
            cells.setdefault(ancestor(i, CELL), []).append(i)
    gran: dict[int, float] = {}
    for members in trees.values():
        g = sqrt_area_granularity([area[i] for i in members])
        gran.update({i: float(v) for i, v in zip(members, g)})
    gran_cell: dict[int, float] = {}
    for members in cells.values():
        g = sqrt_area_granularity([area[i] for i in members])
        gran_cell.update({i: float(v) for i, v in zip(members, g)})
    records = []
    for i, a, b, c in present:
        root = root_of(i)
        root_area = area.get(root, a)
        graco = max(0.1, round(a / root_area, 1)) if root_area else 1.0
        records.append(ObjectRecord(id=i, level=level[i], level_name=LEVELS[level[i]], parent=parent[i], root=root,
                                    area=a, bbox=tuple(int(v) for v in b), centroid=c,
                                    granularity=round(gran[i], 6), granularity_graco=float(graco),
                                    granularity_cell=round(gran_cell[i], 6) if i in gran_cell else None,
                                    frame=frame))
    return records


def with_frame_dynamics(p: SceneParams, rng: np.random.Generator, cfg: SynthConfig, drift: np.ndarray) -> SceneParams:
    """One time step: Brownian motion + common drift of the seeds, growth and shape random walk."""
    n, d = p.cells.centre.shape
    centre = p.cells.centre + rng.normal(0.0, cfg.motion_um, size=(n, d)) + drift
    axes = p.cells.axes * (1.0 + cfg.growth) * np.exp(rng.normal(0.0, cfg.deform, size=(n, d)))
    coef = p.cells.coef + rng.normal(0.0, cfg.deform, size=p.cells.coef.shape)
    cells = ShapeBank(centre=centre, axes=axes, rot=p.cells.rot, coef=coef, phase=p.cells.phase)
    nuc_offset = np.clip(p.nuc_offset + rng.normal(0.0, 0.01, size=p.nuc_offset.shape), -0.25, 0.25)
    return replace(p, cells=cells, nuc_offset=nuc_offset)

