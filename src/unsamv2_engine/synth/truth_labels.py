"""Ground-truth training labels in the pseudo-label layout: the upper bound of self-supervised fine-tuning.

A synthetic sample knows its part/whole hierarchy exactly (cell > nucleus > nucleolus). Written in the
pseudo-label JSON layout (docs/pseudo-labels.md), with the granularity of each mask given by the
sqrt-area rule within its instance tree exactly as the pseudo-labeller does, these labels let
``unsamv2 finetune`` train on what a perfect pseudo-labeller would produce. The learnability check and
the reproduction benchmark use them as the upper bound.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.granularity_scores import sqrt_area_granularity
from unsamv2_engine.io.coco import mask_to_annotation

__all__ = ["INSTANCE_LEVEL", "truth_annotations", "truth_trees", "write_truth_dataset"]

#: The level whose objects are the instances (the roots of the trees); finer levels are their parts.
INSTANCE_LEVEL = "cell"


def truth_trees(sample: Any, *, instance_level: str = INSTANCE_LEVEL,
                part_levels: Sequence[str] = ("nucleus", "nucleolus"), min_area: int = 1
                ) -> list[tuple[int, list[tuple[int, str]]]]:
    """The instance trees of a 2D sample: ``[(instance id, [(object id, level name), ...]), ...]``.

    Each tree lists the instance first, then its descendants at ``part_levels`` (by the sample's parent
    links), keeping objects with at least ``min_area`` pixels in ``sample.labels``.
    """
    levels = list(sample.levels)
    if instance_level not in levels:
        raise ValueError(f"the sample has no level {instance_level!r} (levels: {levels})")
    level_of = {int(o.id): o.level_name for o in sample.objects}
    children: dict[int, list[int]] = {}
    for o in sample.objects:
        children.setdefault(int(o.parent), []).append(int(o.id))
    areas: dict[int, int] = {}
    for lab in sample.labels.values():
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        areas.update({int(i): int(c) for i, c in zip(ids, counts)})
    trees = []
    for o in sample.objects:
        if level_of[o.id] != instance_level or areas.get(int(o.id), 0) < min_area:
            continue
        members = [(int(o.id), instance_level)]
        stack = list(children.get(int(o.id), []))
        while stack:
            oid = stack.pop(0)
            if level_of.get(oid) in part_levels and areas.get(oid, 0) >= min_area:
                members.append((oid, level_of[oid]))
            stack.extend(children.get(oid, []))
        trees.append((int(o.id), members))
    return trees


def truth_annotations(sample: Any, *, image_id: int = 0, instance_level: str = INSTANCE_LEVEL,
                      part_levels: Sequence[str] = ("nucleus", "nucleolus"), min_area: int = 1
                      ) -> list[dict[str, Any]]:
    """The pseudo-label annotations (COCO RLE + ``granularity`` + instance fields) of a 2D sample's truth.

    Per instance tree (see :func:`truth_trees`): its parts, then the instance; granularity by the
    sqrt-area rule over the tree's masks; ``level`` records the generator's level name of each mask.
    """
    annotations: list[dict[str, Any]] = []
    next_id = 1
    for instance_index, (_, members) in enumerate(truth_trees(sample, instance_level=instance_level,
                                                              part_levels=part_levels, min_area=min_area)):
        ordered = members[1:] + members[:1]  # parts first, the instance last (as the pseudo-labeller writes)
        masks = [np.asarray(sample.labels[level] == oid) for oid, level in ordered]
        g = sqrt_area_granularity([int(m.sum()) for m in masks])
        h, w = masks[0].shape
        for k, ((oid, level), mask) in enumerate(zip(ordered, masks)):
            is_instance = k == len(ordered) - 1
            annotations.append(mask_to_annotation(
                mask, ann_id=next_id, image_id=image_id, width=w, height=h, is_divide=is_instance,
                granularity=float(g[k]), instance_id=instance_index, is_part=not is_instance, is_conquer=False,
                level=level, object_id=int(oid)))
            next_id += 1
    return annotations


def write_truth_dataset(folder: str | os.PathLike[str], seeds: Sequence[int],
                        shape: tuple[int, int]) -> tuple[Path, Path, int]:
    """Write synthetic fluorescence images and their truth as a fine-tuning dataset.

    ``folder/images/truth_<seed>.tif`` (``shape`` = (H, W) pixels) and ``folder/labels/truth_<seed>.json``
    (the truth in the pseudo-label layout, for ``unsamv2 finetune --pseudo-labels``). Returns the two
    folders and the number of masks written.
    """
    import json

    import tifffile

    from unsamv2_engine.pseudo.pipeline import image_id_for, pseudo_label_document
    from unsamv2_engine.synth import generate_sample

    folder = Path(folder)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    total = 0
    for seed in seeds:
        name = f"truth_{seed}"
        sample = generate_sample(seed, modality="fluorescence", shape=shape)
        tifffile.imwrite(images / f"{name}.tif", sample.image)
        image_id = image_id_for(f"{name}.tif")
        anns = truth_annotations(sample, image_id=image_id)
        total += len(anns)
        doc = pseudo_label_document(anns, file_name=f"{name}.tif", width=shape[1], height=shape[0], image_id=image_id,
                                    info={"description": "ground truth of the synthetic generator (learnability check)",
                                          "generator_seed": seed})
        (labels / f"{name}.json").write_text(json.dumps(doc))
    return images, labels, total
