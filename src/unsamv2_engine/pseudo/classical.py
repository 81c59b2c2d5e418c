"""Classical instance proposals: what an image analyst tries first, at pixel resolution, no weights.

Every function takes the **object channel** ``f`` (float ``[H, W]`` in 0..1, objects brighter than
their surroundings; see :func:`object_channel`) and returns bool ``[H, W]`` masks that follow the
image's pixels (never a patch grid).

* :func:`object_channel` -- luminance, inverted when the background is bright (brightfield, H&E),
  so that one polarity rule serves every modality; also returns the polarity.
* :func:`signal_check` -- is there anything to label? (constant, blank and pure-noise images are not).
* :func:`threshold_instances` -- global Otsu and multi-Otsu foregrounds, each split into touching
  objects by a distance-transform watershed (one mask per object).
* :func:`seeded_cells` -- cells grown from nucleus seeds over the foreground by a watershed on the
  image gradient (nuclei inside cells -> whole cells).
* :func:`blob_instances` -- LoG blobs at several scales (bright on ``f``, and dark ones: bright on
  ``1 - f``), each cut out by a local threshold half-way between its peak and its surroundings.
* :func:`contrast_ok` -- a proposal is kept only if it stands out from a ring around it by more than
  a few noise standard deviations (no masks invented from noise).
* :func:`classical_proposals` -- all of the above, de-duplicated, with the name of each source.

Sizes are in pixels of the image given (the pipeline gives the working image, see ``max_side``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Proposal", "SignalReport", "blob_instances", "classical_proposals", "contrast_ok", "noise_sigma",
           "object_channel", "seeded_cells", "signal_check", "threshold_instances"]


@dataclass
class Proposal:
    """A candidate object, stored as its bounding-box crop: most proposals are small and most are dropped,
    so a full ``[H, W]`` mask is only made for the kept ones (:attr:`mask`).

    ``local`` bool ``[y1 - y0, x1 - x0]`` the mask inside ``box = (y0, y1, x0, x1)`` (tight: its first and
    last rows and columns hold a pixel), ``shape`` the image's ``(H, W)``, ``source`` the source that
    found it (``"otsu-cc"``, ``"blob-bright"``, ...).
    """

    local: np.ndarray
    box: tuple[int, int, int, int]
    shape: tuple[int, int]
    source: str

    @classmethod
    def from_crop(cls, local: np.ndarray, offset: tuple[int, int], shape: tuple[int, int], source: str
                  ) -> Proposal | None:
        """The proposal of bool ``local`` placed at ``offset = (y0, x0)`` in an image of ``shape``; None if empty."""
        rows = np.flatnonzero(local.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(local.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = (offset[0] + r0, offset[0] + r1, offset[1] + c0, offset[1] + c1)
        return cls(np.ascontiguousarray(local[r0:r1, c0:c1]), box, (int(shape[0]), int(shape[1])), source)

    @classmethod
    def from_mask(cls, mask: np.ndarray, source: str) -> Proposal | None:
        """The proposal of a full bool ``[H, W]`` mask; None if empty."""
        return cls.from_crop(np.asarray(mask, bool), (0, 0), mask.shape, source)

    @property
    def mask(self) -> np.ndarray:
        """The full bool ``[H, W]`` mask (a new array)."""
        out = np.zeros(self.shape, bool)
        out[self.slices] = self.local
        return out

    @property
    def slices(self) -> tuple[slice, slice]:
        """``box`` as slices."""
        return slice(self.box[0], self.box[1]), slice(self.box[2], self.box[3])

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.local))

    def within(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The mask cut to ``box`` (``(y0, y1, x0, x1)``, any box): bool ``[y1 - y0, x1 - x0]``."""
        out = np.zeros((box[1] - box[0], box[3] - box[2]), bool)
        y0, y1 = max(box[0], self.box[0]), min(box[1], self.box[1])
        x0, x1 = max(box[2], self.box[2]), min(box[3], self.box[3])
        if y0 < y1 and x0 < x1:
            out[y0 - box[0]:y1 - box[0], x0 - box[2]:x1 - box[2]] = \
                self.local[y0 - self.box[0]:y1 - self.box[0], x0 - self.box[2]:x1 - self.box[2]]
        return out


@dataclass(frozen=True)
class SignalReport:
    """Whether an image holds structure worth labelling, and why not."""

    ok: bool
    reason: str
    contrast: float  # robust range p99.5 - p0.5 of the object channel (0..1)
    structure: float  # std of the smoothed channel / std of the raw channel (1: smooth structure, ~0.15: white noise)


#: scipy's default structuring element in 2D (4-connected), given explicitly so that the thousands of small
#: dilations per image do not rebuild it each time
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def object_channel(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """uint8 ``[H, W, 3]`` -> (float32 ``[H, W]`` 0..1 with objects bright, ``"bright"`` or ``"dark"``).

    The luminance is inverted (``"dark"`` objects) when most of the image border lies above the Otsu
    threshold, i.e. the background is bright (brightfield, H&E); ties are broken by the skew of the
    histogram (a bright background makes a long dark tail).
    """
    from skimage.color import rgb2gray
    from skimage.filters import gaussian, threshold_otsu

    gray = rgb2gray(np.asarray(rgb)).astype(np.float32)
    smooth = gaussian(gray, 1.0, preserve_range=True)
    if float(smooth.max() - smooth.min()) < 1e-6:
        return gray, "bright"
    t = threshold_otsu(smooth)
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    above = float(np.mean(border > t))
    if abs(above - 0.5) < 0.1:
        dark = float(np.mean(smooth)) > float(np.median(smooth))  # positive skew: bright objects
        dark = not dark
    else:
        dark = above > 0.5
    return ((1.0 - gray) if dark else gray).astype(np.float32), ("dark" if dark else "bright")


def noise_sigma(f: np.ndarray) -> float:
    """Robust standard deviation of the pixel noise of ``f [H, W]``: MAD of a Laplacian-like residual."""
    from scipy import ndimage as ndi

    residual = f.astype(np.float64) - ndi.uniform_filter(f.astype(np.float64), 3)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    # residual of a 3x3 mean filter: variance (1 - 1/9) sigma^2 for white noise
    return 1.4826 * mad / np.sqrt(8.0 / 9.0)


def signal_check(f: np.ndarray, *, min_contrast: float = 0.02, min_structure: float = 0.35) -> SignalReport:
    """Decide whether ``f [H, W]`` (0..1) holds objects: not constant, not blank, not pure noise.

    ``contrast`` is the robust range of ``f``; ``structure`` compares the spread that survives a
    Gaussian blur of 2 px with the raw spread: white noise keeps about 14 % of its standard deviation,
    images with objects of a few pixels or more keep most of it.
    """
    from scipy import ndimage as ndi

    arr = f.astype(np.float64)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    contrast = float(hi - lo)
    raw_std = float(arr.std())
    if contrast < min_contrast or raw_std < 1e-6:
        return SignalReport(False, f"the image is blank or constant (intensity range {contrast:.3f} of full scale)",
                            contrast, 0.0)
    structure = float(ndi.gaussian_filter(arr, 2.0).std() / raw_std)
    if structure < min_structure:
        return SignalReport(False, f"the image looks like pure noise (only {structure:.0%} of its variation survives "
                                   "a 2-px blur)", contrast, structure)
    return SignalReport(True, "", contrast, structure)


def _split_touching(fg: np.ndarray, *, min_distance: int, h: float = 1.0) -> np.ndarray:
    """Label image ``[H, W]`` int: the foreground split by a watershed on its distance transform."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(fg)
    smooth = ndi.gaussian_filter(dist, max(1.0, min_distance / 4))
    peaks = _h_maxima(smooth, h) & fg
    markers, _ = ndi.label(peaks)
    return watershed(-smooth, markers, mask=fg)


def _h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(image, h)`` of a non-negative ``image`` that is 0 between objects (a
    smoothed distance transform), computed per connected component of ``image > 0`` on its box: the same
    maxima, without sorting the background (~30 % less time).

    A grey reconstruction carries at most the value 0 across a zero pixel, so a component whose maximum
    reaches ``h`` sees from the rest of the image only values it also reaches from its own zero margin; a
    component below ``h`` has no h-maximum (its residue stays below ``h`` once any component reaches it;
    when none does, the whole image is done at once).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    support, _ = ndi.label(image > 0, structure=np.ones((3, 3)))
    out = np.zeros(image.shape, np.uint8)
    strong = False
    for k, sl in enumerate(ndi.find_objects(support), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        crop = np.where(support[box] == k, image[box], 0.0)
        if crop.max() < h:
            continue
        strong = True
        out[box] |= h_maxima(crop, h)
    return out if strong else h_maxima(image, h)


def _masks_of(labels: np.ndarray, source: str, *, min_area: int, max_area: int) -> list[Proposal]:
    """One proposal per label of ``labels`` (int ``[H, W]``) with ``min_area <= area <= max_area`` px."""
    from scipy import ndimage as ndi

    out = []
    objects = ndi.find_objects(labels)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        local = labels[sl] == k
        area = int(local.sum())
        if not min_area <= area <= max_area:
            continue
        out.append(Proposal(local, (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), labels.shape, source))
    return out


def _clean(fg: np.ndarray, min_area: int) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    fg = ndi.binary_opening(fg, iterations=1)
    fg = ndi.binary_fill_holes(fg)
    return remove_small_objects(fg, max_size=max(min_area - 1, 0))


def foreground_levels(f: np.ndarray, *, sigma: float = 1.0) -> list[tuple[str, np.ndarray]]:
    """Foregrounds of ``f`` at the Otsu threshold and at both thresholds of a 3-class multi-Otsu (Gaussian
    ``sigma``), and at the upper multi-Otsu threshold after a Gaussian of ``2 sigma``.
    """
    from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu

    smooth = gaussian(f, sigma, preserve_range=True)
    levels = [("otsu", smooth > threshold_otsu(smooth))]
    try:
        t1, t2 = threshold_multiotsu(smooth, classes=3)
    except ValueError:  # too few grey levels for three classes
        return levels
    levels += [("multiotsu-low", smooth > t1), ("multiotsu-high", smooth > t2)]
    smoother = gaussian(f, 2.0 * sigma, preserve_range=True)  # textured objects (chromatin) stay whole
    try:
        levels.append(("multiotsu-high-smooth", smoother > threshold_multiotsu(smoother, classes=3)[1]))
    except ValueError:
        pass
    return levels


def threshold_instances(f: np.ndarray, *, min_area: int, max_area: int, min_distance: int = 4
                        ) -> list[Proposal]:
    """Connected components and distance-watershed pieces of every foreground of :func:`foreground_levels`."""
    from scipy import ndimage as ndi

    out: list[Proposal] = []
    for name, fg in foreground_levels(f):
        fg = _clean(fg, min_area)
        components, _ = ndi.label(fg)
        out += _masks_of(components, f"{name}-cc", min_area=min_area, max_area=max_area)
        split = _split_touching(fg, min_distance=min_distance)
        out += _masks_of(split, f"{name}-watershed", min_area=min_area, max_area=max_area)
    return out


def nested_contrast(f: np.ndarray, part: np.ndarray, whole: np.ndarray) -> float:
    """How clearly ``part`` stands out inside ``whole`` (bool ``[H, W]`` each).

    ``|mean(part) - mean(rest)| / std(rest)`` over the pixels of ``f``, ``rest = whole & ~part`` (inf when
    the rest is empty or flat).
    """
    rest = f[whole & ~part]
    inside = f[part & whole]
    if rest.size < 4 or inside.size == 0:
        return float("inf")
    return abs(float(inside.mean()) - float(rest.mean())) / max(float(rest.std()), 1e-6)


def seeded_cells(f: np.ndarray, *, min_area: int, max_area: int, min_seed_contrast: float = 3.0,
                 min_growth: float = 1.5, reach: float = 2.5) -> list[Proposal]:
    """Cells grown from nuclei, and the nucleus of each cell by a threshold inside it.

    Seeds = objects of the upper multi-Otsu class (nuclei), split by the distance watershed. They
    grow over the lower class's foreground by a watershed on the gradient magnitude of ``f`` (stops
    at membranes and edges; ``"seeded-gradient"``), by one on the distance to the seeds
    (``"seeded-distance"``), and by the gradient watershed limited to ``reach`` seed radii from the
    nearest seed (``"seeded-reach"``: a cell does not leak into a tissue of the same brightness). A
    grown cell is kept only if it is at least ``min_growth`` times its seed's area and its seed stands
    out in it (:func:`nested_contrast` >= ``min_seed_contrast``): a nucleus in a cytoplasm, not a bright
    patch of a textured object. Inside every kept cell, the Otsu threshold of the cell's own pixels
    (σ = 1.5) gives its nucleus (``"cell-otsu"``: the largest component, holes filled, 8-70 % of the cell).
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, sobel, threshold_multiotsu, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(f, 1.0, preserve_range=True)
    try:
        t1, t2 = threshold_multiotsu(smooth, classes=3)
    except ValueError:
        return []
    cells_fg = _clean(smooth > t1, min_area)
    seeds_fg = _clean(smooth > t2, max(4, min_area // 4)) & cells_fg
    seeds = _split_touching(seeds_fg, min_distance=4)
    if seeds.max() == 0:
        return []
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    radius = np.sqrt(np.bincount(seeds.reshape(-1)) / np.pi)
    near = dist <= reach * radius[seeds[iy, ix]]
    gradient = sobel(smooth)
    smooth15 = gaussian(f, 1.5, preserve_range=True)
    out = []
    cells_kept: list[tuple[tuple[slice, slice], np.ndarray]] = []
    for name, elevation, mask in (("seeded-gradient", gradient, cells_fg), ("seeded-distance", dist, cells_fg),
                                  ("seeded-reach", gradient, cells_fg & near)):
        grown = watershed(elevation, seeds, mask=mask)
        for k, sl in enumerate(ndi.find_objects(grown), start=1):
            if sl is None:
                continue
            cell = grown[sl] == k
            seed = seeds[sl] == k
            area = int(cell.sum())
            if not min_area <= area <= max_area or area < min_growth * seed.sum():
                continue
            if nested_contrast(smooth[sl], seed, cell) < min_seed_contrast:
                continue
            out.append(Proposal(cell, (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), f.shape, name))
            cells_kept.append((sl, cell))
    for sl, cell in cells_kept:
        vals = smooth15[sl]
        inside = vals[cell]
        if inside.size < 16 or float(inside.max() - inside.min()) < 1e-6:
            continue
        fg = ndi.binary_fill_holes(cell & (vals > threshold_otsu(inside)))
        comps, n = ndi.label(fg)
        if n == 0:
            continue
        sizes = np.bincount(comps.reshape(-1))[1:]
        nucleus = comps == (int(np.argmax(sizes)) + 1)
        if not 0.08 * cell.sum() <= nucleus.sum() <= 0.7 * cell.sum() or nucleus.sum() < max(8, min_area // 2):
            continue
        out.append(Proposal.from_crop(nucleus, (sl[0].start, sl[1].start), f.shape, "cell-otsu"))
    return out


def blob_instances(f: np.ndarray, *, radii: Sequence[float] = (2.5, 4.0, 6.0, 9.0, 14.0), threshold: float = 0.03,
                   min_area: int = 8, max_area: int | None = None, polarities: Sequence[str] = ("bright",)
                   ) -> list[Proposal]:
    """LoG blobs of ``f`` (bright) and ``1 - f`` (dark) at ``radii`` px, each cut out at pixel resolution.

    ``polarities``: ``"bright"`` (blobs brighter than their surroundings on ``f``) and/or ``"dark"``. The
    pipeline's ``f`` is already inverted for bright backgrounds (:func:`object_channel`), so dark
    objects of a brightfield image are bright blobs of ``f``; dark spots *inside* objects (measured on
    the synthetic data: 1 % of them matched a true object) are not searched by default.
    A blob at ``(y, x)`` with radius ``r`` becomes the connected component holding its centre of the
    pixels (of ``f`` smoothed at ``r / 4``), within a window of ``3 r``, brighter than half-way between
    the mean of its core (radius ``r / 2``) and the median of an annulus ``1.5 r .. 2.2 r`` around it
    (the local background); a component reaching the window's edge is not a blob.
    """
    from scipy import ndimage as ndi

    out: list[Proposal] = []
    smooth = ndi.gaussian_filter(f.astype(np.float64), 0.7)
    h, w = f.shape
    sigmas = [r / np.sqrt(2.0) for r in radii]
    images = {"bright": smooth, "dark": 1.0 - smooth}
    for polarity, img in ((p, images[p]) for p in polarities):
        # the cut-out works on the image smoothed at a quarter of the blob's radius (texture inside a
        # nucleus must not break it up); one smoothed copy per scale
        by_scale = {round(r, 3): ndi.gaussian_filter(img, max(0.7, r / 4.0)) for r in radii}
        blobs = _blob_log_unpruned(img, min(sigmas), max(sigmas), len(sigmas), threshold)
        for y, x, s in blobs:
            r = float(s) * np.sqrt(2.0)
            scaled = by_scale[min(by_scale, key=lambda q: abs(q - r))]
            half = int(np.ceil(3 * r)) + 2
            y0, y1 = max(0, int(y) - half), min(h, int(y) + half + 1)
            x0, x1 = max(0, int(x) - half), min(w, int(x) + half + 1)
            win = scaled[y0:y1, x0:x1]
            yy, xx = np.ogrid[y0 - int(y):y1 - int(y), x0 - int(x):x1 - int(x)]
            rr = np.sqrt(yy * yy + xx * xx)
            ring = win[(rr >= 1.5 * r) & (rr <= 2.2 * r + 1)]
            core = win[rr <= max(1.0, 0.5 * r)]
            if ring.size == 0:
                continue
            centre = float(core.mean())
            level = 0.5 * (centre + float(np.median(ring)))
            comp, _ = ndi.label(win > level)
            k = comp[int(y) - y0, int(x) - x0]
            if k == 0:
                continue
            local = ndi.binary_fill_holes(comp == k)
            area = int(local.sum())
            if area < min_area or (max_area is not None and area > max_area):
                continue
            if local[0].any() or local[-1].any() or local[:, 0].any() or local[:, -1].any():
                continue  # leaks out of its window: not a blob
            out.append(Proposal.from_crop(local, (y0, x0), (h, w), f"blob-{polarity}"))
    return out


def _blob_log_unpruned(image: np.ndarray, min_sigma: float, max_sigma: float, num_sigma: int, threshold: float
                       ) -> np.ndarray:
    """``skimage.feature.blob_log(image, min_sigma, max_sigma, num_sigma, threshold=threshold, overlap=1.0,
    exclude_border=False)`` without its pruning pass: rows ``(y, x, sigma)`` float64, the same blobs in the
    same order (with ``overlap=1.0`` the pruning removes nothing, as no two blobs overlap by more than all
    of the smaller one, but it still compares every pair of nearby blobs: ~0.07 s per 512 x 512 image).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    image = np.asarray(image, np.float64)
    sigma_list = np.linspace(np.full(2, min_sigma), np.full(2, max_sigma), num_sigma)
    cube = np.empty(image.shape + (num_sigma,), np.float64)
    for i, s in enumerate(sigma_list):
        cube[..., i] = -ndi.gaussian_laplace(image, s) * np.mean(s) ** 2
    peaks = peak_local_max(cube, threshold_abs=threshold, threshold_rel=None, exclude_border=False,
                           footprint=np.ones((3, 3, 3)))
    if peaks.size == 0:
        return np.empty((0, 3))
    return np.hstack([peaks[:, :-1].astype(np.float64), sigma_list[peaks[:, -1]][:, 0:1]])


def contrast_ok(f: np.ndarray, mask: np.ndarray, sigma: float, *, k: float = 4.0, ring: int = 2) -> bool:
    """True if ``mask`` differs from a ``ring``-px band around it by more than ``k`` standard errors of noise
    ``sigma`` (the mean inside minus the mean of the band, in absolute value, either polarity).
    """
    from scipy import ndimage as ndi

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return False
    y0, y1 = max(0, rows[0] - ring - 1), min(mask.shape[0], rows[-1] + ring + 2)
    x0, x1 = max(0, cols[0] - ring - 1), min(mask.shape[1], cols[-1] + ring + 2)
    local = mask[y0:y1, x0:x1]
    band = ndi.binary_dilation(local, structure=CROSS, iterations=ring) & ~local
    if not band.any():
        return True  # the object fills the image
    inside = f[y0:y1, x0:x1][local]
    outside = f[y0:y1, x0:x1][band]
    diff = abs(float(inside.mean()) - float(outside.mean()))
    return diff > k * sigma / np.sqrt(min(inside.size, outside.size)) and diff > 0.5 * sigma


#: Sources that find the insides of objects (bright cores, spots); their masks must stand out within
#: the smallest other proposal that contains them (see :func:`classical_proposals`).
INNER_SOURCES = ("blob-bright", "blob-dark", "multiotsu-high-cc", "multiotsu-high-watershed", "cell-otsu",
                 "multiotsu-high-smooth-cc", "multiotsu-high-smooth-watershed")


def classical_proposals(f: np.ndarray, *, min_area: int = 16, max_fraction: float = 0.9,
                        duplicate_iou: float = 0.9, contrast_k: float = 4.0, inner_contrast: float = 3.0,
                        inner_ring: int = 4) -> list[Proposal]:
    """Every classical proposal of ``f [H, W]``: thresholds + watershed, seeded cells, LoG blobs.

    Masks smaller than ``min_area`` px or larger than ``max_fraction`` of the image, or that fail
    :func:`contrast_ok`, are dropped; a mask with IoU > ``duplicate_iou`` to an earlier one is a duplicate.
    A mask of an inner source (:data:`INNER_SOURCES`) inside another proposal must stand out in the
    smallest one holding it by ``inner_contrast`` (against its rest or the ``inner_ring``-px band around
    the mask: :func:`_stands_out`).
    Every test runs on bounding-box crops (the same pixels as on full masks, so the same decisions).
    """
    max_area = int(max_fraction * f.size)
    sigma = noise_sigma(f)
    found = (threshold_instances(f, min_area=min_area, max_area=max_area)
             + seeded_cells(f, min_area=min_area, max_area=max_area)
             + blob_instances(f, min_area=max(8, min_area // 2), max_area=max_area))
    areas = np.array([p.area for p in found], np.int64)
    boxes = np.array([p.box for p in found], np.int64).reshape(-1, 4)
    by_area = np.argsort(areas, kind="stable")
    kept: list[int] = []
    for i, p in enumerate(found):
        if not _contrast_ok_crop(f, p, sigma, k=contrast_k):
            continue
        if p.source in INNER_SOURCES:
            parent = _smallest_container(i, found, areas, boxes, by_area)
            if parent is None and p.source == "blob-dark":
                continue  # a dark spot alone is background between objects, not an object
            if parent is not None:
                whole = found[parent]
                if not _stands_out(f, p, whole, inner_contrast, inner_ring):
                    continue
        if not _has_duplicate(i, kept, found, areas, boxes, duplicate_iou):
            kept.append(i)
    return [found[i] for i in kept]


def _touching(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: which of ``boxes`` (int ``[N, 4]`` rows ``(y0, y1, x0, x1)``) overlap ``box``."""
    return ((boxes[:, 0] < box[1]) & (box[0] < boxes[:, 1]) & (boxes[:, 2] < box[3]) & (box[2] < boxes[:, 3]))


def _has_duplicate(i: int, kept: Sequence[int], found: Sequence[Proposal], areas: np.ndarray, boxes: np.ndarray,
                   duplicate_iou: float) -> bool:
    """Whether ``found[i]`` has IoU > ``duplicate_iou`` with one of ``found[kept]`` (only overlapping boxes and
    areas within the ratio ``duplicate_iou`` can: IoU <= smaller / larger area).
    """
    if not kept:
        return False
    idx = np.asarray(kept)
    a = areas[idx]
    near = _touching(boxes[idx], boxes[i]) & (np.minimum(a, areas[i]) > duplicate_iou * np.maximum(a, areas[i]))
    return any(_iou(found[i], found[j], int(areas[i]), int(areas[j])) > duplicate_iou for j in idx[near])


def _stands_out(f: np.ndarray, part: Proposal, whole: Proposal, min_contrast: float, ring: int) -> bool:
    """Whether ``part`` stands out in its container ``whole`` by ``min_contrast``: against the rest of
    ``whole`` (:func:`nested_contrast`), or, with ``ring`` > 0, against the band of ``whole`` within ``ring``
    px around ``part`` (:func:`band_contrast`).

    The band serves the two cases where the rest of the container is a poor reference: a container that
    is the same nucleus with a rim of cytoplasm, and a container that is a cluster, whose other nuclei
    make the spread of its rest large.
    """
    vals = f[whole.slices]
    local = part.within(whole.box)
    if nested_contrast(vals, local, whole.local) >= min_contrast:
        return True
    return ring > 0 and band_contrast(vals, local, whole.local, ring) >= min_contrast


def band_contrast(f: np.ndarray, part: np.ndarray, whole: np.ndarray, ring: int) -> float:
    """``|mean(part) - mean(band)| / std(band)`` on ``f`` (all ``[H, W]``; ``part``, ``whole`` bool), the band
    being the pixels of ``whole`` outside ``part`` within ``ring`` px of it (inf when it has < 4 pixels).
    """
    from scipy import ndimage as ndi

    inside = f[part & whole]
    band = f[ndi.binary_dilation(part, structure=CROSS, iterations=ring) & whole & ~part]
    if band.size < 4 or inside.size == 0:
        return float("inf")
    return abs(float(inside.mean()) - float(band.mean())) / max(float(band.std()), 1e-6)


def _contrast_ok_crop(f: np.ndarray, p: Proposal, sigma: float, *, k: float, ring: int = 2) -> bool:
    """:func:`contrast_ok` of proposal ``p`` on the window of ``f`` it reads (its box grown by ``ring + 1``)."""
    h, w = p.shape
    win = (max(0, p.box[0] - ring - 1), min(h, p.box[1] + ring + 1), max(0, p.box[2] - ring - 1),
           min(w, p.box[3] + ring + 1))
    return contrast_ok(f[win[0]:win[1], win[2]:win[3]], p.within(win), sigma, k=k, ring=ring)


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The overlap of two boxes ``(y0, y1, x0, x1)``, or None."""
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def _overlap(p: Proposal, q: Proposal) -> int:
    """Pixels in both proposals."""
    box = _intersection(p.box, q.box)
    if box is None:
        return 0
    return int(np.count_nonzero(p.within(box) & q.within(box)))


def _iou(p: Proposal, q: Proposal, area_p: int, area_q: int) -> float:
    """IoU of two proposals of known areas (px)."""
    inter = _overlap(p, q)
    return inter / (area_p + area_q - inter) if inter else 0.0


def _smallest_container(i: int, found: Sequence[Proposal], areas: np.ndarray, boxes: np.ndarray,
                        by_area: np.ndarray) -> int | None:
    """Index of the smallest proposal at least 15 % larger than ``found[i]`` holding > 80 % of it, or None.

    ``areas`` int ``[N]`` px, ``boxes`` int ``[N, 4]``, ``by_area`` the indices by increasing area (stable).
    """
    candidates = by_area[(areas[by_area] > 1.15 * areas[i]) & _touching(boxes[by_area], boxes[i])]
    for j in candidates:
        if _overlap(found[i], found[j]) > 0.8 * areas[i]:
            return int(j)
    return None
