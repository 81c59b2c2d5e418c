"""Nesting of a hierarchy: clip children to their parents, and list what is inconsistent."""

from __future__ import annotations

import numpy as np

from unsamv2_engine.hierarchy.model import Hierarchy, coarse_order

__all__ = ["check_nesting", "enforce_nesting"]


def enforce_nesting(h: Hierarchy, *, drop_orphans: bool = False) -> Hierarchy:
    """Return a copy of ``h`` in which every child lies inside its parent.

    Levels are processed from coarsest to finest; pixels of a child outside its (already
    clipped) parent's mask become background. Objects left without a pixel are dropped from the
    labels and the table (with them, children of a vanished parent vanish too). Areas are
    recounted. Objects without a parent are kept unless ``drop_orphans`` (then every object of
    a non-coarsest level whose parent is 0 is removed). A parent id that names no object of the
    table counts as no parent (the row's parent is set to 0). Label ids are not changed.
    """
    labels = h.labels.copy()
    rows = {row["label"]: dict(row) for row in h.table}
    level_of = {label: row["level"] for label, row in rows.items()}
    for row in rows.values():
        if row["parent"] and row["parent"] not in rows:
            row["parent"] = 0
    order = coarse_order(h.granularities)
    coarsest = order[-1]
    for level in reversed(order):  # coarse -> fine
        image = labels[level]
        level_rows = [r for r in rows.values() if r["level"] == level]
        if not level_rows:
            continue
        ids = np.array(sorted(r["label"] for r in level_rows), dtype=np.int64)
        parent = np.array([rows[int(i)]["parent"] for i in ids], dtype=np.int64)
        if drop_orphans and level != coarsest:
            parent = np.where(parent == 0, -1, parent)  # -1: remove every pixel
        idx = np.clip(np.searchsorted(ids, image), 0, len(ids) - 1)
        known = (image != 0) & (ids[idx] == image)
        expected = np.where(known, parent[idx], 0)
        clear = expected == -1
        for parent_level in {level_of[int(p)] for p in parent if p > 0}:
            in_level = np.isin(expected, [p for p in parent if p > 0 and level_of[int(p)] == parent_level])
            clear |= in_level & (labels[parent_level] != expected)
        image[clear] = 0
    # recount areas, drop vanished objects
    for level in range(h.n_levels):
        present, counts = np.unique(labels[level], return_counts=True)
        area = dict(zip(present.tolist(), counts.tolist()))
        for label in [lab for lab, r in rows.items() if r["level"] == level]:
            if label in area and label != 0:
                rows[label]["area"] = int(area[label])
            else:
                del rows[label]
    for row in rows.values():
        if row["parent"] and row["parent"] not in rows:
            row["parent"] = 0
    return Hierarchy(
        labels=labels,
        granularities=list(h.granularities),
        level_names=list(h.level_names),
        table=list(rows.values()),
        metadata=dict(h.metadata),
    )


def check_nesting(h: Hierarchy) -> list[str]:
    """List the problems of a hierarchy (an empty list when it is consistent).

    Checks: a label id used in more than one level; objects in the pixels without a table row
    and rows without pixels; a row's level or area disagreeing with the pixels; a parent that
    is not an object of the table or not on a coarser level; pixels of a child outside its
    parent's mask.
    """
    problems: list[str] = []
    rows = {}
    for row in h.table:
        if row["label"] in rows:
            problems.append(f"label {row['label']} has more than one table row")
        rows[row["label"]] = row
    found: dict[int, tuple[int, int]] = {}  # label -> (level, area)
    for level in range(h.n_levels):
        present, counts = np.unique(h.labels[level], return_counts=True)
        for label, count in zip(present.tolist(), counts.tolist()):
            if label == 0:
                continue
            if label in found:
                problems.append(
                    f"label {label} appears in levels {found[label][0]} and {level}; label ids "
                    f"must be unique across levels"
                )
                continue
            found[label] = (level, count)
    for label, (level, area) in sorted(found.items()):
        row = rows.get(label)
        if row is None:
            problems.append(f"label {label} (level {level}) has no table row")
            continue
        if row["level"] != level:
            problems.append(f"label {label} is in level {level} but its row says level {row['level']}")
        if row["area"] != area:
            problems.append(f"label {label}: the table says area {row['area']}, the pixels {area}")
    for label, row in sorted(rows.items()):
        if label not in found:
            problems.append(f"label {label} (level {row['level']}) has a table row but no pixels")
    rank = {level: k for k, level in enumerate(h.coarseness_order())}
    for label, row in sorted(rows.items()):
        parent = row["parent"]
        if not parent or label not in found:
            continue
        if parent not in found:
            problems.append(f"label {label}: its parent {parent} is not an object of the hierarchy")
            continue
        child_level, parent_level = found[label][0], found[parent][0]
        if rank.get(parent_level, -1) <= rank.get(child_level, -1):
            problems.append(
                f"label {label} (level {child_level}): its parent {parent} is on level "
                f"{parent_level}, which is not coarser"
            )
        inside = h.labels[child_level] == label
        outside = int(np.count_nonzero(inside & (h.labels[parent_level] != parent)))
        if outside:
            problems.append(
                f"label {label} (level {child_level}): {outside} of {int(inside.sum())} pixels lie "
                f"outside its parent {parent} (level {parent_level})"
            )
    return problems
