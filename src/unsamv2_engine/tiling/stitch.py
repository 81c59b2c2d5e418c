"""From the objects of overlapping tiles to one object per label across the whole image.

Every object of a tile is a :class:`Piece`: its box in image pixels and its mask cropped to it.
A piece is *cut* when it touches an edge of its tile that lies inside the image (the object may go on
in the next tile), else *whole*. Rules, in order:

1. cut pieces of neighbouring tiles that cover the same pixels of their shared overlap (intersection
   >= ``match`` of the smaller piece there) belong to the same object: they are grouped;
2. a group that a whole piece of some tile covers (each way >= ``match`` on the group's tile area) is
   that whole piece; any other group becomes one object, the union of its pieces (an object cut by a
   border is merged);
3. a whole piece is kept by the tile whose *core* holds its box centre (the cores partition the
   image, so the copy of an object found again in the overlap of the next tile is dropped);
4. kept objects of IoU > ``duplicate_iou`` (the same object found twice) keep the higher score.

Memory is the sum of the objects' box areas, at one bit a pixel, never the image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from unsamv2_engine.tiling.grid import Tile

Box = tuple[int, int, int, int]


class Piece:
    """An object found in one tile: box (x0, y0, x1, y1) image pixels end exclusive, mask bool over the box.

    The mask is kept bit-packed (``np.packbits``, 1 bit a pixel: a 16384^2 image's thousands of objects
    cost an eighth of their box areas in bytes); ``mask`` unpacks it on access, assigning packs it again.
    ``cut``: the piece touches an inner edge of its tile; ``merged_from``: how many pieces were united.
    """

    __slots__ = ("_area", "_packed", "_shape", "box", "cut", "merged_from", "score", "tile")

    def __init__(self, box: Box, mask: np.ndarray, score: float, tile: Tile | None = None, cut: bool = False,
                 merged_from: int = 1) -> None:
        self.box, self.score, self.tile, self.cut, self.merged_from = box, score, tile, cut, merged_from
        self.mask = mask

    @property
    def mask(self) -> np.ndarray:
        """The unpacked mask, bool ``[y1 - y0, x1 - x0]``: a fresh array (writing into it does not change the piece)."""
        return np.unpackbits(self._packed, axis=1, count=self._shape[1]).view(bool)

    @mask.setter
    def mask(self, value: np.ndarray) -> None:
        value = np.asarray(value, bool)
        self._shape = value.shape
        self._packed = np.packbits(value, axis=1)
        self._area = int(np.count_nonzero(value))

    @property
    def area(self) -> int:
        return self._area

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed mask."""
        return int(self._packed.nbytes)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def __repr__(self) -> str:
        return f"Piece(box={self.box}, area={self.area}, score={self.score:.3f}, cut={self.cut})"


def pieces_of_tile(masks: np.ndarray, scores: Sequence[float], tile: Tile, image_hw: tuple[int, int]) -> list[Piece]:
    """Pieces of one tile's masks ``[N, h, w]`` (tile coordinates) cropped to their boxes."""
    out = []
    left, top, right, bottom = tile.interior_edges(image_hw)
    tx, ty = tile.box[:2]
    for m, s in zip(masks, scores):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        cut = bool((left and x0 == 0) or (top and y0 == 0) or (right and x1 == m.shape[1])
                   or (bottom and y1 == m.shape[0]))
        out.append(Piece((tx + x0, ty + y0, tx + x1, ty + y1), m[y0:y1, x0:x1], float(s), tile, cut))
    return out


def intersect(a: Box, b: Box) -> Box | None:
    """The intersection of two ``(x0, y0, x1, y1)`` boxes, or None when they do not overlap."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _crop(p: Piece, box: Box) -> np.ndarray:
    return p.mask[box[1] - p.box[1]:box[3] - p.box[1], box[0] - p.box[0]:box[2] - p.box[0]]


def overlap_pixels(a: Piece, b: Piece, within: Box | None = None) -> tuple[int, int, int]:
    """(|a and b|, |a|, |b|) counted inside ``within`` (default: everywhere)."""
    region_a = a.box if within is None else intersect(a.box, within)
    region_b = b.box if within is None else intersect(b.box, within)
    na = 0 if region_a is None else int(_crop(a, region_a).sum())
    nb = 0 if region_b is None else int(_crop(b, region_b).sum())
    both = intersect(a.box, b.box)
    if both is not None and within is not None:
        both = intersect(both, within)
    inter = 0 if both is None else int((_crop(a, both) & _crop(b, both)).sum())
    return inter, na, nb


def candidate_pairs(boxes: Sequence[Box], cell: int) -> Iterable[tuple[int, int]]:
    """Index pairs of boxes that intersect (bucketed on a ``cell``-px grid; each pair once)."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        for r in range(y0 // cell, (y1 - 1) // cell + 1):
            for c in range(x0 // cell, (x1 - 1) // cell + 1):
                buckets[(r, c)].append(i)
    seen = set()
    for members in buckets.values():
        for ii, i in enumerate(members):
            for j in members[ii + 1:]:
                pair = (i, j) if i < j else (j, i)
                if pair not in seen and intersect(boxes[i], boxes[j]) is not None:
                    seen.add(pair)
                    yield pair


def merge_pieces(pieces: Sequence[Piece]) -> Piece:
    """One piece, the union of ``pieces`` (score: area-weighted mean)."""
    box = (min(p.box[0] for p in pieces), min(p.box[1] for p in pieces),
           max(p.box[2] for p in pieces), max(p.box[3] for p in pieces))
    mask = np.zeros((box[3] - box[1], box[2] - box[0]), bool)
    for p in pieces:
        mask[p.box[1] - box[1]:p.box[3] - box[1], p.box[0] - box[0]:p.box[2] - box[0]] |= p.mask
    areas = np.array([p.area for p in pieces], np.float64)
    score = float(np.average([p.score for p in pieces], weights=areas)) if areas.sum() else pieces[0].score
    return Piece(box, mask, score, None, False, sum(p.merged_from for p in pieces))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _in_core(p: Piece) -> bool:
    x, y = p.centre
    cx0, cy0, cx1, cy1 = p.tile.core
    return cx0 <= x < cx1 and cy0 <= y < cy1


def stitch(pieces: Sequence[Piece], *, cell: int = 1024, match: float = 0.5, duplicate_iou: float = 0.5) -> list[Piece]:
    """Objects of the whole image from the pieces of all tiles (see the module docstring for the rules)."""
    cut = [p for p in pieces if p.cut]
    whole = [p for p in pieces if not p.cut]
    # 1. group cut pieces of different tiles agreeing on their shared overlap
    uf = _UnionFind(len(cut))
    for i, j in candidate_pairs([p.box for p in cut], cell):
        a, b = cut[i], cut[j]
        if a.tile is b.tile:
            continue
        shared = intersect(a.tile.box, b.tile.box)
        if shared is None:
            continue
        inter, na, nb = overlap_pixels(a, b, shared)
        if inter and inter >= match * min(na, nb):
            uf.union(i, j)
    groups: dict[int, list[Piece]] = defaultdict(list)
    for i, p in enumerate(cut):
        groups[uf.find(i)].append(p)
    # 2. a group covered by a whole piece is that piece; else the union of the group
    forced: set[int] = set()
    merged: list[Piece] = []
    pairs = defaultdict(list)
    all_boxes = [p.box for p in whole] + [p.box for p in cut]
    for i, j in candidate_pairs(all_boxes, cell):
        if i < len(whole) <= j:
            pairs[j - len(whole)].append(i)
    group_of = {id(p): uf.find(i) for i, p in enumerate(cut)}
    absorbed: dict[int, int] = {}
    for ci, p in enumerate(cut):
        for wi in pairs.get(ci, []):
            w = whole[wi]
            inter, n_cut, n_whole = overlap_pixels(p, w, p.tile.box)
            if inter and inter >= match * n_cut and inter >= match * n_whole:
                absorbed.setdefault(group_of[id(p)], wi)
    for root, members in groups.items():
        if root in absorbed:
            forced.add(absorbed[root])
        else:
            merged.append(merge_pieces(members))
    # 3. whole pieces: owned by the tile whose core holds their centre
    kept = [w for i, w in enumerate(whole) if i in forced or w.tile is None or _in_core(w)]
    objects = kept + merged
    # 4. the same object twice: keep the higher score (whole before merged at equal score)
    drop: set[int] = set()
    for i, j in candidate_pairs([o.box for o in objects], cell):
        inter, na, nb = overlap_pixels(objects[i], objects[j])
        if inter and inter / (na + nb - inter) > duplicate_iou:
            drop.add(j if objects[i].score >= objects[j].score else i)
    return [o for k, o in enumerate(objects) if k not in drop]


def paint(objects: Sequence[Piece], labels: Sequence[int], box: Box, dtype=np.uint32) -> np.ndarray:
    """Label block over ``box`` from objects (painted in the order given: later ones on top)."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), dtype)
    for o, lab in zip(objects, labels):
        both = intersect(o.box, box)
        if both is None:
            continue
        view = out[both[1] - y0:both[3] - y0, both[0] - x0:both[2] - x0]
        view[_crop(o, both)] = lab
    return out


class SpatialIndex:
    """Objects bucketed on a ``cell``-px grid, to paint blocks without scanning every object."""

    def __init__(self, objects: Sequence[Piece], cell: int) -> None:
        self.cell = cell
        self.buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, o in enumerate(objects):
            x0, y0, x1, y1 = o.box
            for r in range(y0 // cell, (y1 - 1) // cell + 1):
                for c in range(x0 // cell, (x1 - 1) // cell + 1):
                    self.buckets[(r, c)].append(i)

    def query(self, box: Box) -> list[int]:
        x0, y0, x1, y1 = box
        found: set[int] = set()
        for r in range(y0 // self.cell, (y1 - 1) // self.cell + 1):
            for c in range(x0 // self.cell, (x1 - 1) // self.cell + 1):
                found.update(self.buckets.get((r, c), ()))
        return sorted(found)
