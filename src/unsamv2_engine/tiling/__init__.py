"""Microscopy-sized images: a tile grid at full resolution, prompts decoded on demand, whole images tile by tile.

* :mod:`.grid` the overlapping tile grid (tile size, overlap, each tile's core);
* :mod:`.source` lazy 2D views of large arrays (numpy, memmap, zarr, dask) and one global intensity map;
* :mod:`.interactive` :class:`TiledSession`: a click is decoded on a model-input-sized tile at full
  resolution; a mask touching the tile edge is decoded again on a tile centred on the prompts, then on
  coarser views;
* :mod:`.stitch` objects of neighbouring tiles become one object per label (cut objects merged,
  duplicates of the overlap removed);
* :mod:`.auto` whole-image segmentation and hierarchies tile by tile.
"""

from unsamv2_engine.tiling.grid import DEFAULT_OVERLAP, TILE_ABOVE, Tile, default_overlap, tile_grid, wants_tiles

__all__ = ["DEFAULT_OVERLAP", "TILE_ABOVE", "Tile", "default_overlap", "tile_grid", "wants_tiles"]
