"""The tile grid: overlapping full-resolution windows of the model's input size.

A tile is ``tile_size`` x ``tile_size`` pixels (the model input, 1024 for SAM 2.1, so the model sees
the image at its native resolution); neighbouring tiles overlap by ``overlap`` pixels (default
:func:`default_overlap`: a quarter of the tile, :data:`DEFAULT_OVERLAP` = 256 px for 1024-px tiles;
objects up to about that size that cross a border are whole in one of the two tiles). The last tile
of a row or column is shifted back so that it ends on the image border
(tiles never leave the image, unless the image is smaller than one tile). Each tile has a *core*:
the overlap is split at its middle, so the cores of all tiles partition the image exactly; an object
is owned by the tile whose core holds its centre.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OVERLAP = 256
#: Images with a side above this many pixels take the tiled path (``unsamv2 auto`` / ``segment`` / ``hierarchy``,
#: the engine service, the napari widget): the squashed path would shrink them more than 2x into the 1024-px
#: model input.
TILE_ABOVE = 2048


def wants_tiles(image_hw: tuple[int, ...], threshold: int | None = None) -> bool:
    """Whether an image of ``image_hw`` = (H, W, ...) px takes the tiled path: a side above ``threshold``
    (None: :data:`TILE_ABOVE`, 2048 px).
    """
    limit = TILE_ABOVE if threshold is None else int(threshold)
    return max(int(s) for s in tuple(image_hw)[:2]) > limit


def default_overlap(tile_size: int) -> int:
    """The overlap used when none is given: a quarter of the tile (256 px for the 1024-px tiles of SAM 2.1)."""
    return int(tile_size) // 4


@dataclass(frozen=True)
class Tile:
    """One window of the grid. index: (row, col); box and core: (x0, y0, x1, y1) pixels, end exclusive."""

    index: tuple[int, int]
    box: tuple[int, int, int, int]
    core: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    def interior_edges(self, image_hw: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): whether that edge of the tile lies inside the image (not on its border)."""
        x0, y0, x1, y1 = self.box
        return x0 > 0, y0 > 0, x1 < image_hw[1], y1 < image_hw[0]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    ends = [min(s + tile, length) for s in starts]
    cuts = [0] + [(starts[i + 1] + ends[i]) // 2 for i in range(len(starts) - 1)] + [length]
    return list(zip(cuts[:-1], cuts[1:]))


def tile_grid(image_hw: tuple[int, int], tile_size: int = 1024, overlap: int | None = None) -> list[Tile]:
    """Tiles covering an image of ``image_hw`` = (H, W), row by row (overlap None: :func:`default_overlap`)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    overlap = default_overlap(tile_size) if overlap is None else int(overlap)
    if tile_size < 32:
        raise ValueError(f"tile size {tile_size} is too small: use at least 32 px (the model input, e.g. 1024, is "
                         "best)")
    if not 0 <= overlap < tile_size // 2 + 1 or overlap >= tile_size:
        raise ValueError(f"overlap {overlap} must be in [0, tile_size / 2] (tile size {tile_size})")
    if h < 1 or w < 1:
        raise ValueError(f"empty image {w}x{h}")
    ys, xs = _starts(h, tile_size, overlap), _starts(w, tile_size, overlap)
    ycores, xcores = _cores(ys, tile_size, h), _cores(xs, tile_size, w)
    tiles = []
    for r, (y0, (cy0, cy1)) in enumerate(zip(ys, ycores)):
        for c, (x0, (cx0, cx1)) in enumerate(zip(xs, xcores)):
            box = (x0, y0, min(x0 + tile_size, w), min(y0 + tile_size, h))
            tiles.append(Tile((r, c), box, (cx0, cy0, cx1, cy1)))
    return tiles
