"""Large-image commands with the tiny model: `unsamv2 embed` (cache reuse, resume, invalidation),
tiled `auto` / `hierarchy` into OME-Zarr and tiled TIFF, lazy zarr / TIFF inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from unsamv2_engine.cli import build_parser, main
from unsamv2_engine.io.omezarr import LeadingPlane, open_lazy_image, open_zarr_image, write_label_pyramid
from unsamv2_engine.session import ImageSession
from unsamv2_engine.tiling.cache import EmbeddingCache, cache_key, data_signature, embed_tiles
from unsamv2_engine.tiling.grid import tile_grid
from unsamv2_engine.tiling.source import ImageSource

SMALL = ["--points-per-side", 4, "--points-per-batch", 16, "--pred-iou-thresh", 0, "--stability-thresh", 0,
         "--stability-offset", 0.05, "--mask-threshold", 0.2, "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint):

    folder = tmp_path_factory.mktemp("large")
    img = np.zeros((1000, 1300), np.uint16)  # two 1024-px tiles (--tile-size 1024), each resized to the model input
    rng = np.random.default_rng(0)
    for cy, cx in rng.integers(20, 980, (40, 2)):
        img[cy - 8:cy + 8, cx - 8:cx + 8] = 3000
    tifffile.imwrite(folder / "big.tif", img)
    return {"ckpt": tiny_checkpoint,
            "tif": folder / "big.tif", "img": img, "dir": folder}


@pytest.fixture(scope="module")
def model(files):
    from unsamv2_engine.model.checkpoint import load_checkpoint

    return load_checkpoint(files["ckpt"], source=str(files["ckpt"]), device=torch.device("cpu"), adapter=None,
                           allow_base_mismatch=False)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class CountEmbeddings:
    def __init__(self, monkeypatch):
        self.n = 0
        original = ImageSession.set_image

        def counting(session, image, **kw):
            self.n += 1
            return original(session, image, **kw)

        monkeypatch.setattr(ImageSession, "set_image", counting)


# ---------------------------------------------------------------------------------------------- lazy inputs
def test_tiff_is_memory_mapped_and_zarr_is_read_lazily(files, tmp_path):
    arr = open_lazy_image(files["tif"])
    assert isinstance(arr, np.memmap) and arr.shape == (1000, 1300)
    import zarr

    z = zarr.open_array(str(tmp_path / "stack.zarr"), mode="w", shape=(3, 1000, 1300), chunks=(1, 256, 256),
                        dtype=np.uint16)
    z[1] = files["img"]
    plane = open_lazy_image(tmp_path / "stack.zarr", frame=1)
    assert isinstance(plane, LeadingPlane) and plane.shape == (1000, 1300)
    assert np.array_equal(plane[10:300, 20:400], files["img"][10:300, 20:400])
    with pytest.raises(ValueError, match="--frame"):
        open_lazy_image(tmp_path / "stack.zarr")


def test_label_pyramid_is_ngff_and_levels_are_nearest_neighbour(tmp_path):
    labels = np.arange(300 * 500, dtype=np.uint32).reshape(300, 500) % 7
    path = write_label_pyramid(tmp_path / "l.ome.zarr", (300, 500),
                               lambda b: labels[b[1]:b[3], b[0]:b[2]], chunk=128, metadata={"x": 1})
    meta = json.loads((path / ".zattrs").read_text())
    ms = meta["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[1, 1], [2, 2], [4, 4]]
    assert meta["unsamv2"] == {"x": 1} and "image-label" in meta
    assert np.array_equal(open_zarr_image(path)[:], labels)
    import zarr

    g = zarr.open_group(str(path), mode="r")
    assert np.array_equal(g["1"][:], labels[::2, ::2]) and np.array_equal(g["2"][:], labels[::4, ::4])


# ---------------------------------------------------------------------------------------------- cache
def test_cache_reuse_equals_fresh_embedding_and_invalidates(files, model, tmp_path):
    img = files["img"]
    source = ImageSource(img)
    key = cache_key(source, model, 1024, 256)
    cache = EmbeddingCache.open(tmp_path / "c.zarr", key, img.shape)
    assert cache.stale_reason is None and not cache.done().any()
    assert embed_tiles(model, source, cache, cancel=lambda: cache.done().sum() >= 1) == 1  # interrupted
    again = EmbeddingCache.open(tmp_path / "c.zarr", key, img.shape)
    assert again.done().sum() == 1 and embed_tiles(model, source, again) == 1  # resumed
    tile = tile_grid(img.shape, 1024, 256)[1]
    fresh = ImageSession(model)
    fresh.set_image(source.window(tile.box))
    stored = again.lookup(tile)
    assert torch.equal(stored.image_embed, fresh.features.image_embed)
    assert all(torch.equal(a, b) for a, b in zip(stored.high_res, fresh.features.high_res))
    # other contrast limits, edited pixels, another tiling: never reused
    for other in (cache_key(ImageSource(img, contrast_limits=(0, 1000)), model, 1024, 256),
                  cache_key(ImageSource(img + 1), model, 1024, 256),
                  cache_key(source, model, 1024, 128)):
        stale = EmbeddingCache.open(tmp_path / "c.zarr", other, img.shape)
        assert stale.stale_reason and not stale.done().any() and stale.lookup(tile) is None
    assert data_signature(img) != data_signature(img[::-1])


def test_cache_refuses_a_folder_that_is_not_a_cache(files, model, tmp_path):
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "precious.txt").write_text("keep me")
    key = cache_key(ImageSource(files["img"]), model, 1024, 256)
    with pytest.raises(ValueError, match="not an embedding cache"):
        EmbeddingCache.open(tmp_path / "mine.zarr", key, files["img"].shape)
    assert (tmp_path / "mine.zarr" / "precious.txt").exists()


# ---------------------------------------------------------------------------------------------- commands
def test_embed_then_tiled_auto_reuses_the_cache(files, tmp_path, capsys, monkeypatch):
    emb = tmp_path / "big.embeddings.zarr"
    code, out, err = _run(capsys, "embed", files["tif"], "-o", emb, "--tile-size", 1024, "--checkpoint", files["ckpt"],
                            "--device", "cpu")
    assert code == 0 and "2 tiles" in out and "2 embedded now" in out and "embedding" in err
    code, out, err = _run(capsys, "embed", files["tif"], "-o", emb, "--tile-size", 1024, "--checkpoint", files["ckpt"],
                            "--device", "cpu")
    assert code == 0 and "0 embedded now, 2 reused" in out
    counter = CountEmbeddings(monkeypatch)
    out = tmp_path / "labels.ome.zarr"
    code, _, err = _run(capsys, "auto", files["tif"], "-g", 0.3, "-o", out, "--embeddings", emb,
                        "--tile-size", 1024, "--checkpoint", files["ckpt"], *SMALL)
    assert code == 0, err
    assert counter.n == 0, "every tile came from the cache"
    labels = open_zarr_image(out)
    assert labels.shape == (1000, 1300)
    meta = json.loads((out / ".zattrs").read_text())["unsamv2"]
    assert meta["tiles"] == 2 and meta["tile_size"] == 1024
    # another contrast mapping: the cache is stale, recomputed (and said so)
    code, _, err = _run(capsys, "auto", files["tif"], "-g", 0.3, "-o", tmp_path / "l2.ome.zarr", "--embeddings", emb,
                        "--tile-size", 1024, "--contrast-limits", "0,1000", "--checkpoint", files["ckpt"], *SMALL)
    assert code == 0 and "contrast_limits" in err and "recomputing" in err and counter.n == 2


def test_tiled_hierarchy_to_tiff_and_zarr(files, tmp_path, capsys):
    tif = tmp_path / "tree.tif"
    code, _, err = _run(capsys, "hierarchy", files["tif"], "--granularities", "0.3,1.0", "-o", tif,
                        "--tile-size", 1024, "--table", tmp_path / "tree.csv", "--checkpoint", files["ckpt"], *SMALL)
    assert code == 0, err
    pages = tifffile.imread(tif)
    assert pages.shape == (2, 1000, 1300)
    code, _, err = _run(capsys, "hierarchy", files["tif"], "--granularities", "0.3,1.0", "-o", tmp_path / "t.ome.zarr",
                        "--tile-size", 1024, "--checkpoint", files["ckpt"], *SMALL)
    assert code == 0, err
    z = open_zarr_image(tmp_path / "t.ome.zarr")
    assert z.shape == (2, 1000, 1300) and np.array_equal(z[:], pages)
    header = (tmp_path / "tree.csv").read_text().splitlines()[0]
    assert "parent" in header and "granularity" in header


def test_small_images_keep_the_regular_path(files):
    from unsamv2_engine.cli.embed import wants_tiles

    args = build_parser().parse_args(["auto", str(files["tif"]), "-g", "0.5", "-o", "x.tif"])
    assert not wants_tiles(args)
    args = build_parser().parse_args(["auto", str(files["tif"]), "-g", "0.5", "-o", "x.ome.zarr"])
    assert wants_tiles(args)


def test_tiled_segment_decodes_a_click_on_one_tile(files, tmp_path, capsys, monkeypatch):
    counter = CountEmbeddings(monkeypatch)
    out = tmp_path / "mask.tif"
    code, stdout, err = _run(capsys, "segment", files["tif"], "--point", "1200,500", "-g", 0.3, "-o", out,
                             "--tile-size", 1024, "--checkpoint", files["ckpt"], "--device", "cpu",
                             "--json", tmp_path / "m.json")
    assert code == 0, err
    mask = tifffile.imread(out)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert mask.shape == (1000, 1300)
    x0, y0, x1, y1 = meta["view_box"]
    assert x0 <= 1200 < x1 and y0 <= 500 < y1
    # a full-resolution tile, or (the random model's mask touched the tile edge) a coarser view, said so
    assert (meta["view_step"] == 1 and x1 - x0 == 1024) or ("larger than one tile" in meta["note"])
    assert counter.n == meta["tiles_embedded"] >= 1 and "tile(s) embedded" in stdout


def test_tiled_sweep_writes_each_level_decoded_on_its_view(files, model, tmp_path, capsys):
    """``unsamv2 sweep`` on a tiled image: page i is the click decoded at g_i as TiledSession decodes it, at full
    image size, written tile by tile; the pages' views and steps are in the JSON and the CSV.
    """
    from unsamv2_engine.tiling.interactive import TiledSession

    out, gs = tmp_path / "sweep.tif", [0.2, 0.9]
    code, stdout, err = _run(capsys, "sweep", files["tif"], "--point", "1200,500", "--granularities", "0.2,0.9",
                             "-o", out, "--tile-size", 1024, "--checkpoint", files["ckpt"], "--device", "cpu",
                             "--json", tmp_path / "s.json", "--table", tmp_path / "s.csv")
    assert code == 0, err
    pages = tifffile.imread(out)
    meta = json.loads((tmp_path / "s.json").read_text())
    expected = TiledSession(model, files["img"], tile_size=1024).sweep([[1200, 500]], [1], gs)
    assert pages.shape == (2, 1000, 1300) and pages.dtype == np.uint8
    for page, level, row in zip(pages, expected, meta["pages"]):
        np.testing.assert_array_equal(page.astype(bool), level.full_mask((1000, 1300)))
        assert row["view_box"] == list(level.box) and row["view_step"] == level.step and row["area"] == level.area
    with tifffile.TiffFile(out) as tif:
        assert json.loads(tif.pages[0].description)["granularities"] == gs and tif.pages[0].is_tiled
    assert "2 pages" in stdout and (tmp_path / "s.csv").read_text().count("\n") == 3
