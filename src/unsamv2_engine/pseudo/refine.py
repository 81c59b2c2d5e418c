"""Weight-free refinement: snap coarse masks to the image's own boundaries (stands in for CascadePSP).

Superpixels (SLIC on the object channel, about ``size`` pixels each) follow intensity edges at pixel
resolution. A coarse mask -- a MaskCut cut on the 480-px patch grid, or a model mask decoded at
256 x 256 -- is **snapped** by a vote: every superpixel more than half inside the mask is in, every
other one is out. The outline then runs along superpixel borders, i.e. along image edges, never
along the patch grid.
"""

from __future__ import annotations

import numpy as np

__all__ = ["snap_to_superpixels", "superpixels"]


def superpixels(f: np.ndarray, *, size: float = 30.0, compactness: float = 0.05) -> np.ndarray:
    """SLIC labels int ``[H, W]`` (0 .. n-1) of the object channel ``f`` (float ``[H, W]`` 0..1),
    about ``size`` pixels per superpixel (small enough for 30-px nucleoli to be a few superpixels).
    """
    from skimage.segmentation import slic

    n = max(1, int(round(f.size / float(size))))
    return slic(f.astype(np.float64), n_segments=n, compactness=compactness, channel_axis=None, start_label=0)


def snap_to_superpixels(mask: np.ndarray, labels: np.ndarray, *, vote: float = 0.5) -> np.ndarray:
    """Bool ``[H, W]``: the union of the superpixels of ``labels`` more than ``vote`` inside ``mask``."""
    m = np.asarray(mask, bool)
    flat = labels.reshape(-1)
    n = int(flat.max()) + 1
    inside = np.bincount(flat, weights=m.reshape(-1).astype(np.float64), minlength=n)
    total = np.bincount(flat, minlength=n)
    keep = inside > vote * np.maximum(total, 1)
    return keep[labels]
