"""Nested spots: nucleoli as parts of their nucleus (issue 12, docs/pseudo-labels.md).

A nucleolus is a small round spot inside a nucleus that differs from the chromatin around it. Which
way depends on how the image is formed, and the object channel ``f`` knows it
(:func:`~unsamv2_engine.pseudo.classical.object_channel`):

* **emission** (fluorescence, bright objects on a dark background): the DNA stain is excluded from
  the nucleolus, so it is a *darker* spot of ``f``;
* **absorption** (brightfield, H&E, dark objects on a bright background, ``f`` inverted): the
  nucleolus is denser (thicker, more hematoxylin), a *brighter* spot of ``f``.

So the spot polarity follows the image polarity (``polarity="auto"``). Off by default
(``PseudoLabelSettings(nucleoli="auto")`` turns it on): on the synthetic data it finds a minority of
the nucleoli and costs precision (docs/pseudo-labels.md gives the numbers and the reasons).

1. ``R = ±(G(f, σ) - G(f, 2σ))``, ``σ = radius / √2``, computed once for the image (the sign makes
   the expected spots positive); its local maxima (``2 radius + 1`` px neighbourhood) are the peaks;
2. each peak belongs to the smallest container (a mask of an instance tree of at least
   ``min_container_area`` px and at most ``max_container_spots`` spot discs: not a tissue or a
   cluster) holding it, so a spot belongs to its nucleus, not to the cell around it, and must lie
   2 px inside it;
3. the spot is cut out on ``G(f, 1)`` at half-way between the mean of its core (radius / 2) and the
   median of the container's pixels farther than 1.5 radius from the peak (within 4 radius), kept to
   the container, holes filled; a cut-out that reaches the edge of its 4-radius window is a leak, not
   a spot;
4. it is kept when its area is within ``min_area`` and ``max_fraction`` of the container and it
   stands out from the band of the container around it (|Δmean| / std of the band >=
   ``min_contrast``); peaks inside a spot already kept are skipped (strongest first).

Found spots join their tree as parts (``is_conquer=True``) and get a granularity by the sqrt-area
rule like every other part: the finest level of their hierarchy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unsamv2_engine.pseudo.hierarchy import mask_box

__all__ = ["nested_spots", "spot_sign"]


def spot_sign(image_polarity: str, polarity: str = "auto") -> int:
    """+1 when the spots to find are brighter than their container on ``f``, -1 when darker.

    ``polarity``: ``"auto"`` (darker in an emission image whose objects are bright, brighter in an
    absorption image whose objects are dark), ``"bright"`` or ``"dark"``.
    """
    if polarity == "auto":
        return -1 if image_polarity == "bright" else 1
    if polarity in ("bright", "dark"):
        return 1 if polarity == "bright" else -1
    raise ValueError(f"spot polarity must be auto, bright or dark, got {polarity!r}")


def nested_spots(f: np.ndarray, containers: Sequence[np.ndarray], *, sign: int, noise: float, radius: float = 2.5,
                 min_area: int = 16, max_fraction: float = 0.3, min_contrast: float = 1.5,
                 min_container_area: int = 150, max_container_spots: float = 400.0) -> list[tuple[int, np.ndarray]]:
    """Spots inside ``containers`` (bool ``[H, W]`` each): ``[(container index, bool [H, W] spot mask), ...]``.

    ``f`` float ``[H, W]`` object channel, ``sign`` from :func:`spot_sign`, ``noise`` the noise standard
    deviation of ``f``. A spot is searched in the smallest container (of at least ``min_container_area``
    px, at most ``max_container_spots`` spot discs of ``radius``) holding its peak only.
    """
    from scipy import ndimage as ndi

    sigma = radius / np.sqrt(2.0)
    f32 = f.astype(np.float32)
    smooth = ndi.gaussian_filter(f32, 1.0)
    response = sign * (ndi.gaussian_filter(f32, sigma) - ndi.gaussian_filter(f32, 2.0 * sigma))
    size = 2 * int(round(radius)) + 1
    peaks = (response == ndi.maximum_filter(response, size=size)) & (response > 2.0 * noise / (4.0 * sigma))
    ys, xs = np.nonzero(peaks)
    if ys.size == 0 or not containers:
        return []
    areas = np.array([int(np.count_nonzero(c)) for c in containers], np.int64)
    owner = np.full(ys.size, -1, np.int64)
    best = np.full(ys.size, np.iinfo(np.int64).max)
    largest = max_container_spots * np.pi * radius ** 2  # a tissue or a cluster is not a nucleus
    for i in np.flatnonzero((areas >= min_container_area) & (areas <= largest)):
        better = np.asarray(containers[i], bool)[ys, xs] & (areas[i] < best)
        owner[better] = i
        best[better] = areas[i]
    h, w = f.shape
    out: list[tuple[int, np.ndarray]] = []
    rad = int(np.ceil(radius))
    half = int(np.ceil(4 * radius))
    yy, xx = np.ogrid[-half:half + 1, -half:half + 1]
    disc_core = yy * yy + xx * xx <= max(1.0, 0.5 * radius) ** 2
    disc_far = yy * yy + xx * xx > (1.5 * radius) ** 2
    for ci in np.unique(owner[owner >= 0]):
        cont = np.asarray(containers[ci], bool)
        box = mask_box(cont)
        y0, y1, x0, x1 = box
        local = cont[y0:y1, x0:x1]
        inner = ndi.binary_erosion(local, iterations=2)
        s_loc = np.pad(smooth[y0:y1, x0:x1], half)
        in_pad = np.pad(local, half)
        inner_pad = np.pad(inner, half)
        taken = np.zeros_like(in_pad)
        mine = np.flatnonzero(owner == ci)
        mine = mine[np.argsort(-response[ys[mine], xs[mine]], kind="stable")]
        for p in mine:
            py, px = int(ys[p]) - y0, int(xs[p]) - x0
            if not inner[py, px] or taken[py + half, px + half]:
                continue
            win = s_loc[py:py + 2 * half + 1, px:px + 2 * half + 1]
            inside = in_pad[py:py + 2 * half + 1, px:px + 2 * half + 1]
            far = inner_pad[py:py + 2 * half + 1, px:px + 2 * half + 1] & disc_far
            if np.count_nonzero(far) < 8:
                continue
            centre = float(win[disc_core & inside].mean())
            cut = 0.5 * (centre + float(np.median(win[far])))
            comp, _ = ndi.label((sign * (win - cut) > 0) & inside)
            k = comp[half, half]
            if k == 0:
                continue
            spot = ndi.binary_fill_holes(comp == k) & inside
            spot_area = int(np.count_nonzero(spot))
            if spot_area < min_area or spot_area > max_fraction * areas[ci]:
                continue
            if spot[0].any() or spot[-1].any() or spot[:, 0].any() or spot[:, -1].any():
                continue
            band = ndi.binary_dilation(spot, iterations=rad) & inside & ~spot
            if np.count_nonzero(band) < 8:
                continue
            diff = sign * (float(win[spot].mean()) - float(win[band].mean()))
            if diff < min_contrast * max(float(win[band].std()), 1e-6):
                continue
            taken[py:py + 2 * half + 1, px:px + 2 * half + 1] |= spot
            full = np.zeros((h + 2 * half, w + 2 * half), bool)
            full[y0 + py:y0 + py + 2 * half + 1, x0 + px:x0 + px + 2 * half + 1] = spot
            out.append((int(ci), full[half:half + h, half:half + w]))
    return out
