"""Time-lapse: the 2D scene evolves frame by frame with stable object ids.

Frame 0 is rasterised like a 2D sample; it fixes the cluster membership and the tissue of every
cell. Each later frame moves every seed by Brownian motion plus a common drift, grows the cells,
random-walks their shape terms and nucleus offsets (:func:`~unsamv2_engine.synth.scene.with_frame_dynamics`),
and is rasterised again with that fixed membership, so the same parameter object keeps the same
global id in every frame and containment holds in every frame. There are no divisions: an object
only disappears (leaving the field, or shrinking below the minimum size after clipping).

3D stacks need nothing here: the scene is sampled and rasterised directly on a ``[Z, H, W]`` grid
with anisotropic spacing.
"""

from __future__ import annotations

import numpy as np

from .config import SynthConfig
from .scene import RawScene, SceneParams, rasterize, with_frame_dynamics

__all__ = ["simulate_frames"]


def simulate_frames(params: SceneParams, cfg: SynthConfig, rng: np.random.Generator, n_frames: int,
                    min_size: int) -> list[RawScene]:
    """Rasterise ``n_frames`` frames of an evolving 2D scene (raw ids stable across frames)."""
    if n_frames < 1:
        raise ValueError(f"a time-lapse needs at least 1 frame, got {n_frames}")
    first = rasterize(params, cfg, min_size)
    frames = [first]
    direction = rng.standard_normal(len(params.shape))
    drift = cfg.drift_um * direction / (np.linalg.norm(direction) + 1e-12)
    p = params
    for _ in range(1, n_frames):
        p = with_frame_dynamics(p, rng, cfg, drift)
        frames.append(rasterize(p, cfg, min_size, cell_group=first.cell_group, cell_tissue=first.cell_tissue))
    return frames
