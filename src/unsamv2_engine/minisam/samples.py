"""Training samples for the miniature SAM: a synthetic image and objects at random hierarchy levels.

SAM is trained without a granularity input: each prompt's target is one object, drawn at a random
level of the part/whole hierarchy (cluster, cell, nucleus, nucleolus; tissue rarely), so the model
must learn that one click is ambiguous (hence its three outputs). Images come from
:func:`unsamv2_engine.synth.generate_sample` with a per-step seed (an endless stream, never a fixed
pool), with random flips and 90-degree rotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unsamv2_engine.preprocess import preprocess_image

#: Relative weight of each level when drawing an object's level (tissue rarely: it is most of the image).
LEVEL_WEIGHTS = {"tissue": 0.25, "cluster": 1.0, "cell": 1.0, "nucleus": 1.0, "nucleolus": 1.0}


@dataclass
class MiniSample:
    """One training image with its prompt targets.

    pixels: float32 ``[1, 3, S, S]`` normalised model input (S = model input size);
    masks: bool ``[K, S, S]`` one target object per prompt, in the model input frame;
    levels: the level name of each target; seed: the generator seed of the image.
    """

    pixels: torch.Tensor
    masks: torch.Tensor
    levels: list[str]
    seed: int


def _resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an instance label image to ``size`` x ``size``."""
    h, w = labels.shape
    if (h, w) == (size, size):
        return labels
    rows = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.int64)
    return labels[rows][:, cols]


def draw_targets(labels: dict[str, np.ndarray], rng: np.random.Generator, count: int,
                 min_area: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``count`` distinct objects, each at a random level (weights :data:`LEVEL_WEIGHTS`).

    ``labels``: level name -> ``[S, S]`` instance labels (model frame); objects smaller than
    ``min_area`` pixels there are skipped. Returns the boolean masks and their level names.
    """
    ids_by_level = {}
    for level, lab in labels.items():
        ids, areas = np.unique(lab[lab > 0], return_counts=True)
        keep = ids[areas >= min_area]
        if len(keep) and LEVEL_WEIGHTS.get(level, 0) > 0:
            ids_by_level[level] = list(keep)
    masks, levels, used = [], [], set()
    while len(masks) < count and ids_by_level:
        names = list(ids_by_level)
        weights = np.array([LEVEL_WEIGHTS[n] for n in names], float)
        level = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        pool = ids_by_level[level]
        obj = pool.pop(int(rng.integers(len(pool))))
        if not pool:
            del ids_by_level[level]
        if obj in used:
            continue
        used.add(obj)
        masks.append(labels[level] == obj)
        levels.append(level)
    return masks, levels


def make_sample(seed: int, *, image_size: int, synth_shape: int, objects: int, modality: str = "fluorescence",
                min_area: int = 12) -> MiniSample | None:
    """The training sample of generator seed ``seed`` (None if the image has no usable object).

    ``synth_shape``: side of the generated image in pixels (its pixel size is the generator's, so a
    smaller image holds fewer cells, not smaller ones); it is resized to ``image_size``.
    """
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.synth import generate_sample

    sample = generate_sample(int(seed), modality=modality, shape=(synth_shape, synth_shape))
    rng = np.random.default_rng([int(seed), 7])
    rgb = to_uint8_rgb(sample.image)
    labels = {name: _resize_labels(lab, image_size) for name, lab in sample.labels.items()}
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    rgb = np.rot90(rgb, k)
    labels = {n: np.rot90(v, k) for n, v in labels.items()}
    if flip:
        rgb = rgb[:, ::-1]
        labels = {n: v[:, ::-1] for n, v in labels.items()}
    masks, levels = draw_targets({n: np.ascontiguousarray(v) for n, v in labels.items()}, rng, objects, min_area)
    if not masks:
        return None
    pixels = preprocess_image(np.ascontiguousarray(rgb), image_size)
    return MiniSample(pixels=pixels, masks=torch.from_numpy(np.stack(masks)), levels=levels, seed=int(seed))
