"""Engine results as napari Labels layers on the image they came from (no Qt, no engine).

Every result covers one plane of the image layer: the plane shown when it was asked for (``leading``
indices of the non-displayed axes). A result that covers the whole plane becomes a layer of the image's
spatial shape with the plane filled in; a result over a box of a large image (a tiled sweep) becomes a
layer of that box of that plane only (``[1, ..., 1, h, w]``), moved into place by its translate, so
nothing of the size of the whole image is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METADATA_KEY = "unsamv2_hierarchy"


def plane_layer(viewer, image, leading: Sequence[int], shape: Sequence[int], labels: np.ndarray, name: str, *,
                box: Sequence[int] | None = None, features: dict | None = None, metadata: dict | None = None,
                opacity: float = 0.6):
    """Add a uint32 Labels layer holding ``labels`` (``[h, w]``) at the plane ``leading`` of ``image``.

    shape: the image's spatial shape (without an RGB axis); box: None when ``labels`` cover the whole
    plane, else the (x0, y0, x1, y1) image pixels they cover.
    """
    scale = np.asarray(image.scale[-len(shape):], float)
    if box is not None:
        data, translate = box_on_plane(image, leading, shape, labels.astype(np.uint32, copy=False), box)
    else:
        data = np.zeros(tuple(shape), np.uint32)
        data[tuple(int(i) for i in leading)] = labels
        translate = np.asarray(image.translate[-len(shape):], float)
    return viewer.add_labels(data, name=name, features=features or {}, scale=scale, translate=translate,
                             metadata=metadata or {}, opacity=opacity)


def box_on_plane(image, leading: Sequence[int], shape: Sequence[int], values: np.ndarray,
                 box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(data ``[1, ..., 1, h, w]``, translate) of a layer showing ``values`` ``[h, w]`` over ``box`` =
    (x0, y0, x1, y1) image pixels at the plane ``leading`` of ``image`` (spatial ``shape``), in world units.
    """
    scale = np.asarray(image.scale[-len(shape):], float)
    translate = np.asarray(image.translate[-len(shape):], float)
    x0, y0, x1, y1 = (int(v) for v in box)
    data = values.reshape((1,) * len(leading) + (y1 - y0, x1 - x0))
    return data, translate + scale * np.array([*(int(i) for i in leading), y0, x0], float)


def hierarchy_layers(viewer, image, leading: Sequence[int], shape: Sequence[int], labels: np.ndarray,
                     granularities: Sequence[float], table: list[dict[str, Any]], prefix: str, extra: dict, *,
                     box: Sequence[int] | None = None) -> list:
    """One Labels layer per level of ``labels`` ``[G, h, w]``, named ``"{prefix} g=…"``, with the table's rows
    as features and the hierarchy in ``metadata["unsamv2_hierarchy"]`` (granularities, table, plane, level,
    box when given, ``extra``), so the writer saves the layers as one hierarchy file.
    """
    meta = {"granularities": list(granularities), "table": table, "plane": list(leading), **extra}
    if box is not None:
        meta["box"] = [int(v) for v in box]
    layers = []
    for level, g in enumerate(granularities):
        rows = [r for r in table if r["level"] == level]
        features = {"index": [r["label"] for r in rows],
                    **{key: [r[key] for r in rows] for key in ("granularity", "parent", "area", "score")}}
        layers.append(plane_layer(viewer, image, leading, shape, labels[level], f"{prefix} g={g:.2f}", box=box,
                                  features=features, metadata={METADATA_KEY: {**meta, "level": level}}))
    return layers


def segmented_layer(viewer, image, leading: Sequence[int], shape: Sequence[int], reply) -> Any:
    """The objects of a whole-image segmentation (:class:`~unsamv2_engine.protocol.Segmented`) as one layer."""
    n = len(reply.scores)
    features = {"index": list(range(1, n + 1)), "granularity": [reply.granularity] * n,
                "score": [float(s) for s in reply.scores], "area": [int(a) for a in reply.areas]}
    return plane_layer(viewer, image, leading, shape, reply.labels, f"all g={reply.granularity:.2f}",
                       features=features)
