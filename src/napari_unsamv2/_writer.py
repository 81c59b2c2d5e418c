"""napari writer: one or more Labels layers -> an UnSAMv2 label hierarchy (``.tif`` / ``.zarr``).

The given Labels layers become the levels of a :class:`~unsamv2_engine.io.hierarchy.Hierarchy`:

- **Level order**: the order napari passes the layers in, except that when every layer carries
  hierarchy metadata from our reader (``metadata["unsamv2_hierarchy"]["level"]``, all distinct)
  the layers are put back in that recorded level order.
- **Granularity and level name** of a layer: from its metadata when present, else the
  granularity is parsed from a name like ``"hierarchy g=0.30"`` (None if there is none) and the
  level name is the layer name without the ``"hierarchy "`` prefix.
- **Table**: rows from the layers' metadata (``table``) are kept for the labels still in the
  pixels (their score, extra columns and parent, when the parent is still an object of a coarser
  level); areas are always recounted; objects without a stored row (painted by hand, or layers
  without metadata) get their parent by containment (≥ 50 % of the object inside one object of
  the next coarser level). Label ids colliding across layers are relabelled level by level (then
  every parent is recomputed).

Only numpy, tifffile (and zarr, for ``.zarr``) are imported; never torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.hierarchy import Hierarchy, granularity_from_name, hierarchy_from_levels
from unsamv2_engine.io.hierarchy import write_hierarchy

__all__ = ["layer_data_to_hierarchy", "write_hierarchy_layers"]

METADATA_KEY = "unsamv2_hierarchy"
SUFFIXES = (".tif", ".tiff", ".zarr")


def write_hierarchy_layers(path: str, layer_data: Sequence[tuple[Any, dict, str]]) -> list[str]:
    """npe2 multi-layer writer hook (``labels+``): write the layers as one hierarchy file.

    A path without a ``.tif`` / ``.tiff`` / ``.zarr`` suffix gets ``.tif``. Returns ``[path]``.
    """
    target = Path(os.fspath(path))
    if target.suffix.lower() not in SUFFIXES:
        target = target.with_name(target.name + ".tif")
    from unsamv2_engine.outputs import check_outputs

    hierarchy = layer_data_to_hierarchy(layer_data)
    check_outputs({"save as": target})  # a folder (other than .zarr) or a read-only place: said before writing
    write_hierarchy(target, hierarchy)
    return [str(target)]


def layer_data_to_hierarchy(
    layer_data: Sequence[tuple[Any, dict, str]], *, containment: float = 0.5
) -> Hierarchy:
    """Stack Labels layer-data tuples ``(data, attributes, "labels")`` into a Hierarchy."""
    items = list(layer_data)
    if not items:
        raise ValueError("No layer to write: select one or more Labels layers.")
    for _, _, layer_type in items:
        if layer_type != "labels":
            raise ValueError(f"A label hierarchy is made of Labels layers only, not {layer_type!r}.")
    infos = [_info(attributes) for _, attributes, _ in items]
    levels = [info.get("level") for info in infos]
    if all(isinstance(level, int) for level in levels) and len(set(levels)) == len(levels):
        order = sorted(range(len(items)), key=lambda k: levels[k])
        items = [items[k] for k in order]
        infos = [infos[k] for k in order]

    images = [_as_array(data) for data, _, _ in items]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"The Labels layers differ in shape {sorted(shapes)}; a hierarchy needs one shape."
        )
    granularities: list[float | None] = []
    names: list[str] = []
    tables: list[list[dict]] = []
    for (_, attributes, _), info in zip(items, infos):
        name = str(attributes.get("name") or "")
        g = info.get("granularity") if "granularity" in info else granularity_from_name(name)
        granularities.append(None if g is None else float(g))
        level_name = info.get("level_name") or _strip_prefix(name)
        names.append(level_name or None)
        tables.append(list(info.get("table") or []))
    if any(name is None for name in names):
        names = None  # defaults from the granularities
    metadata = next((dict(info["metadata"]) for info in infos if info.get("metadata")), {})
    return hierarchy_from_levels(
        images, granularities, names, tables, containment=containment, metadata=metadata
    )


def _info(attributes: dict) -> dict:
    info = (attributes.get("metadata") or {}).get(METADATA_KEY)
    return dict(info) if isinstance(info, dict) else {}


def _as_array(data: Any) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: keep the full-resolution level
        data = data[0]
    array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Labels data must be integers, got dtype {array.dtype}.")
    if array.size and array.min() < 0:
        raise ValueError("Labels must be non-negative (0 = background) to be written.")
    return array


def _strip_prefix(name: str) -> str:
    name = name.strip()
    if name.startswith("hierarchy "):
        name = name[len("hierarchy "):]
    # napari appends " [1]" to duplicate names
    if name.endswith("]") and " [" in name:
        head, _, tail = name.rpartition(" [")
        if tail[:-1].isdigit():
            name = head
    return name
