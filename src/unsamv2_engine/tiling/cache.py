"""On-disk tile embeddings (``IMAGE.embeddings.zarr``), keyed so that a stale cache is never used.

Layout (zarr format 2): one group per image plane (``plane_0`` for a 2D image, ``plane_<i>`` for
slice ``i`` of a z-stack or time-lapse), each with arrays ``image_embed [T, 256, 64, 64]``,
``high_res_0 [T, 32, 256, 256]``, ``high_res_1 [T, 64, 128, 128]`` (float32, one chunk per tile,
T = tiles of the grid, row by row) and ``done [T]`` (1 once the tile is written: an interrupted
``unsamv2 embed`` resumes where it stopped). The root's ``unsamv2_embeddings`` attribute is the key:

* ``image``: a data signature of the pixels (BLAKE2b of the raw bytes, read block by block, with
  shape and dtype), so an edited image never matches;
* ``contrast_limits`` and ``rgb``: the intensity mapping (what the model saw);
* ``tile_size`` and ``overlap``: the tiling;
* ``model``: a hash of the model's weights (adapter included) and its input size.

:meth:`EmbeddingCache.open` compares the stored key with the wanted one: equal -> reuse (and resume);
different -> the folder is emptied and recomputed, with the reason (which fields differ) in
``stale_reason``. Float32 (exact: a cached tile decodes exactly as a freshly embedded one); about
16 MB per tile for SAM 2.1, so ~1.6 GB for an 8192 x 8192 image with the default tiling.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsamv2_engine.model.decoding import ImageFeatures
from unsamv2_engine.tiling.grid import Tile, tile_grid
from unsamv2_engine.tiling.source import BLOCK_ROWS, ImageSource

FORMAT = 1
KEY_ATTR = "unsamv2_embeddings"


def data_signature(data: Any) -> str:
    """BLAKE2b of an array-like's shape, dtype and bytes, read ``BLOCK_ROWS`` rows at a time."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(int(s) for s in data.shape), np.dtype(data.dtype).str)).encode())
    for y in range(0, int(data.shape[0]), BLOCK_ROWS):
        h.update(np.ascontiguousarray(np.asarray(data[y:y + BLOCK_ROWS])).tobytes())
    return h.hexdigest()


def model_hash(model) -> str:
    """BLAKE2b of the model's weights (as loaded, adapter included) and input size; memoised on the model."""
    cached = getattr(model, "_unsamv2_weights_hash", None)
    if cached is not None:
        return cached
    h = hashlib.blake2b(digest_size=16)
    h.update(str(model.image_size).encode())
    for name, tensor in model.sam.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if tensor.numel() else b"")
    digest = h.hexdigest()
    model._unsamv2_weights_hash = digest
    return digest


def cache_key(source: ImageSource, model, tile_size: int, overlap: int, *, signature: str | None = None) -> dict:
    """The key of one image plane's embeddings (see the module docstring)."""
    return {"format": FORMAT, "image": signature or data_signature(source.data),
            **source.signature_parts(), "tile_size": int(tile_size), "overlap": int(overlap),
            "model": model_hash(model), "model_input": int(model.image_size)}


def default_cache_path(image_path: str | Path) -> Path:
    """``IMAGE.embeddings.zarr`` beside the image."""
    p = Path(image_path)
    return p.with_name(p.name + ".embeddings.zarr")


def _open_group(path, mode):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    except TypeError:  # zarr 2
        return zarr.open_group(str(path), mode=mode)


class EmbeddingCache:
    """Tile embeddings of one image plane on disk; use :meth:`open`."""

    def __init__(self, path: Path, group, key: dict, tiles: list[Tile], stale_reason: str | None) -> None:
        self.path = path
        self.group = group
        self.key = key
        self.tiles = tiles
        self.index = {t.box: i for i, t in enumerate(tiles)}
        self.stale_reason = stale_reason

    @classmethod
    def open(cls, path: str | Path, key: dict, image_hw: tuple[int, int], *, plane: int = 0) -> EmbeddingCache:
        """Open (or create) the cache at ``path`` for ``key``; a mismatching cache is emptied and recomputed."""
        path = Path(path)
        tiles = tile_grid(image_hw, key["tile_size"], key["overlap"])
        reason = None
        root = None
        if path.exists():
            try:
                root = _open_group(path, "r+")
                stored = dict(root.attrs.get(KEY_ATTR, {}))
            except Exception:  # noqa: BLE001 - not a zarr group: start afresh
                stored = {}
            plane_key = stored.get(f"plane_{plane}")
            if plane_key is not None and plane_key != _jsonable(key):
                diff = sorted(k for k in set(plane_key) | set(key) if plane_key.get(k) != _jsonable(key).get(k))
                reason = f"the cache at {path} was made for another {', '.join(diff)}: recomputing"
                del root[f"plane_{plane}"]
            elif not stored and path.is_dir() and any(p.name not in (".zgroup", ".zattrs", "zarr.json")
                                                      for p in path.iterdir()):
                raise ValueError(f"{path} exists and is not an embedding cache: give another path "
                                 "(e.g. IMAGE.embeddings.zarr) or delete it")
        if root is None:
            root = _open_group(path, "w")
        stored = dict(root.attrs.get(KEY_ATTR, {}))
        stored[f"plane_{plane}"] = _jsonable(key)
        root.attrs[KEY_ATTR] = stored
        group = root.require_group(f"plane_{plane}")
        return cls(path, group, key, tiles, reason)

    @staticmethod
    def mismatch(path: str | Path, key: dict, *, plane: int = 0) -> str | None:
        """Why the cache at ``path`` cannot serve ``key`` (read only: nothing is written or deleted), or None
        when it can. A missing folder, a folder that is not a cache, or a cache of another image, intensity
        mapping, tiling or model gives the reason, naming the fields that differ.
        """
        path = Path(path)
        if not path.exists():
            return f"{path} does not exist"
        try:
            stored = dict(_open_group(path, "r").attrs.get(KEY_ATTR, {}))
        except Exception:  # noqa: BLE001 - not a zarr group
            stored = {}
        if not stored:
            return f"{path} is not an embedding cache (made by 'unsamv2 embed')"
        plane_key = stored.get(f"plane_{plane}")
        if plane_key is None:
            return f"{path} holds no embeddings of plane {plane} (run 'unsamv2 embed --frame {plane}')"
        want = _jsonable(key)
        diff = sorted(k for k in set(plane_key) | set(want) if plane_key.get(k) != want.get(k))
        if diff:
            text = f"{path} was made for another {', '.join(diff)}"
            if "contrast_limits" in diff and plane_key.get("contrast_limits") is not None:
                lo, hi = plane_key["contrast_limits"]
                text += f" (it was made with contrast limits {lo:g}, {hi:g}: set these to use it)"
            return text
        return None

    # ------------------------------------------------------------------ tiles
    def done(self) -> np.ndarray:
        """Bool ``[T]``: tiles already stored."""
        if "done" not in self.group:
            return np.zeros(len(self.tiles), bool)
        return np.asarray(self.group["done"][:]).astype(bool)

    def lookup(self, tile: Tile) -> ImageFeatures | None:
        """The stored embedding of a grid tile, or None."""
        i = self.index.get(tile.box)
        if i is None or "done" not in self.group or not self.group["done"][i]:
            return None
        g = self.group
        t = [torch.from_numpy(np.asarray(g[name][i:i + 1])) for name in ("image_embed", "high_res_0", "high_res_1")]
        return ImageFeatures(image_embed=t[0], high_res=(t[1], t[2]))

    def put(self, tile: Tile, features: ImageFeatures) -> None:
        i = self.index[tile.box]
        parts = {"image_embed": features.image_embed, "high_res_0": features.high_res[0],
                 "high_res_1": features.high_res[1]}
        for name, t in parts.items():
            arr = t.detach().float().cpu().numpy()
            if name not in self.group:
                _create(self.group, name, (len(self.tiles), *arr.shape[1:]), (1, *arr.shape[1:]), np.float32)
            self.group[name][i:i + 1] = arr
        if "done" not in self.group:
            _create(self.group, "done", (len(self.tiles),), (len(self.tiles),), np.uint8)
        self.group["done"][i] = 1

    def lookup_to(self, device) -> callable:
        """A lookup returning features on ``device`` (for :class:`~unsamv2_engine.tiling.interactive.TiledSession`)."""
        def look(tile: Tile):
            f = self.lookup(tile)
            if f is None:
                return None
            return ImageFeatures(f.image_embed.to(device), tuple(x.to(device) for x in f.high_res))
        return look


def _create(group, name, shape, chunks, dtype):
    create = getattr(group, "create_array", None)
    if create is not None:
        return create(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def _jsonable(key: dict) -> dict:
    import json

    return json.loads(json.dumps(key))


def embed_tiles(model, source: ImageSource, cache: EmbeddingCache, *, progress=None, cancel=None) -> int:
    """Embed every tile the cache does not hold yet (resumable); returns the number embedded now."""
    from unsamv2_engine.session import ImageSession

    session = ImageSession(model)
    done = cache.done()
    n = 0
    for i, tile in enumerate(cache.tiles):
        if done[i]:
            continue
        if cancel is not None and cancel():
            break
        session.set_image(source.window(tile.box))
        cache.put(tile, session.features)
        n += 1
        if progress is not None:
            progress(int(done.sum()) + n, len(cache.tiles))
    return n
