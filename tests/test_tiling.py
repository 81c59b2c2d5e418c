"""Tiling of large images: the grid, on-demand decoding of clicks, whole-image stitching, OME-Zarr output.

The stitching tests use a stub segmenter (allowed by issue 15: masks must be predictable to test that
objects straddling tile borders come back whole, once): it returns the connected components of a
threshold of each tile. The real model runs in the interactive tests and in one small tiled `auto`.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unsamv2_engine.automatic.segmenter import AutoMasks
from unsamv2_engine.tiling.auto import segment_tiled
from unsamv2_engine.tiling.grid import tile_grid
from unsamv2_engine.tiling.interactive import TiledSession, centred_window, touches_inner_edge
from unsamv2_engine.tiling.source import ImageSource, block_reduce, finite_range
from unsamv2_engine.tiling.stitch import Piece, stitch


# ---------------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("hw,tile,overlap", [((1500, 1300), 512, 128), ((512, 512), 512, 64), ((300, 2000), 512, 0),
                                             ((2048, 2048), 1024, 256)])
def test_grid_covers_image_and_cores_partition_it(hw, tile, overlap):
    tiles = tile_grid(hw, tile, overlap)
    cover = np.zeros(hw, np.int32)
    cores = np.zeros(hw, np.int32)
    for t in tiles:
        x0, y0, x1, y1 = t.box
        assert x1 - x0 == min(tile, hw[1]) and y1 - y0 == min(tile, hw[0])
        cover[y0:y1, x0:x1] += 1
        cx0, cy0, cx1, cy1 = t.core
        assert x0 <= cx0 < cx1 <= x1 and y0 <= cy0 < cy1 <= y1
        cores[cy0:cy1, cx0:cx1] += 1
    assert cover.min() >= 1
    assert (cores == 1).all()


def test_grid_refuses_bad_settings():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((2000, 2000), 512, 400)
    with pytest.raises(ValueError, match="too small"):
        tile_grid((2000, 2000), 8, 0)


# ---------------------------------------------------------------------------------------------- source
def test_source_uses_one_global_intensity_map():
    img = np.zeros((600, 600), np.uint16)
    img[:300] = 1000
    img[300:] = 3000
    img[0, 0] = 0
    src = ImageSource(img)
    assert src.contrast_limits == (0.0, 3000.0)
    # the same value maps to the same grey in every window (a per-tile min/max would make both 0 or 255)
    top = src.window((10, 10, 100, 100))
    bottom = src.window((10, 400, 100, 500))
    assert top[5, 5, 0] == 85 and bottom[5, 5, 0] == 255
    assert finite_range(np.array([[np.nan, 2.0], [np.inf, -1.0]])) == (-1.0, 2.0)
    assert block_reduce(np.full((5, 5, 3), 9, np.uint8), 2).shape == (3, 3, 3)


class RowReads:
    """A uint16 image that records the rows of every read; converting it whole raises."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.rows_read: list[int] = []

    def __getitem__(self, key):
        rows = key[0]
        self.rows_read.append(len(range(*rows.indices(self.shape[0]))))
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole image was read at once")


def test_a_coarse_window_is_read_in_bands_and_equals_reducing_it_whole():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (203, 157)).astype(np.uint16)
    lazy = RowReads(img)
    src = ImageSource(lazy, contrast_limits=(0, 4000))
    box = (3, 5, 157, 203)
    banded = src.window(box, 4, band_pixels=4 * 154 * 3)  # bands of 12 rows
    whole = block_reduce(ImageSource(img, contrast_limits=(0, 4000)).window(box), 4)
    np.testing.assert_array_equal(banded, whole)
    assert banded.shape == (50, 39, 3) and max(lazy.rows_read) == 12


def test_centred_window_stays_inside():
    assert centred_window((10, 10), 100, (1000, 800)) == (0, 0, 100, 100)
    assert centred_window((795, 500), 100, (1000, 800)) == (700, 450, 800, 550)
    assert centred_window((400, 400), 4000, (1000, 800)) == (0, 0, 800, 1000)
    m = np.zeros((10, 10), bool)
    m[0, 3] = True
    assert touches_inner_edge(m, (0, 5, 10, 15), (100, 100)) and not touches_inner_edge(m, (0, 0, 10, 10), (100, 100))


# ---------------------------------------------------------------------------------------------- interactive
class OracleSession(TiledSession):
    """Decodes a view as the model would if it were perfect: the connected component of ``image > 0`` under
    the first positive prompt, seen at the view's resolution. Tests the choice of views, not the model.
    """

    def _decode_on(self, box, step, tile, pts, lab, granularity, options):
        from unsamv2_engine.session import Prediction

        x0, y0, x1, y1 = box
        view = self.source.window(box, step)[..., 0] > 0
        comp, _ = ndimage.label(view)
        px, py = ((pts[lab == 1][0] - [x0, y0]) / step).astype(int)
        small = comp == comp[py, px]
        full = np.repeat(np.repeat(small, step, 0), step, 1)[:y1 - y0, :x1 - x0]
        self.embedded += 1
        return Prediction(full, np.zeros((256, 256), np.float32), 1.0, 1.0, granularity)


def _disc_image(hw, discs):
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    img = np.zeros(hw, np.uint8)
    for cy, cx, r in discs:
        img[np.hypot(yy - cy, xx - cx) < r] = 200
    return img


def test_click_on_small_object_is_decoded_at_full_resolution_on_one_tile(tiny_model):
    img = _disc_image((1200, 1500), [(300, 700, 10)])
    sess = OracleSession(tiny_model, img, tile_size=256, overlap=64)
    pred = sess.predict([[700, 300]], [1], 0.3)
    assert pred.step == 1 and not pred.touches_edge and "full resolution" in pred.note
    full = pred.full_mask(img.shape[:2])
    assert (full == (img > 0)).all()


def test_object_across_a_tile_edge_is_decoded_on_a_centred_tile(tiny_model):
    # grid tiles x 0..256 and 224..480: a disc over x 200..290 is cut in both
    img = _disc_image((1024, 1024), [(128, 245, 45)])
    sess = OracleSession(tiny_model, img, tile_size=256, overlap=32)
    pred = sess.predict([[245, 128]], [1], 0.5)
    assert pred.step == 1 and "centred on the prompts" in pred.note
    assert (pred.full_mask(img.shape) == (img > 0)).all()


def test_object_larger_than_a_tile_is_decoded_on_a_coarser_view(tiny_model):
    img = _disc_image((2000, 2000), [(1000, 1000, 300)])
    sess = OracleSession(tiny_model, img, tile_size=256, overlap=32)
    pred = sess.predict([[1000, 1000]], [1], 1.0)
    assert pred.step == 4 and not pred.touches_edge and "reduced 4x" in pred.note
    truth = img > 0
    full = pred.full_mask(img.shape)
    # precise to about `step` pixels along the outline
    assert (full ^ truth).sum() < 0.05 * truth.sum()
    assert sess.embedded == 4  # grid tile, centred tile, 2x view, 4x view


def test_real_model_click_returns_a_full_resolution_mask_in_image_coordinates(tiny_model_256):
    # the tests' model takes 256 px: this image is 1.6 x 2 model inputs, as 1600x2100 is at 1024 px
    img = np.zeros((400, 525), np.uint16)
    img[175:180, 375:380] = 4000
    sess = TiledSession(tiny_model_256, img, max_step=2, overlap=64)
    pred = sess.predict([[377, 177]], [1], 0.2)
    x0, y0, x1, y1 = pred.box
    assert pred.mask.shape == (y1 - y0, x1 - x0) and pred.mask.dtype == bool
    assert x0 <= 377 < x1 and y0 <= 177 < y1
    assert pred.step in (1, 2) and sess.embedded >= 1
    n = sess.embedded
    again = sess.predict([[377, 177]], [1], 0.2)  # the same views: embeddings reused from memory
    assert sess.embedded == n and np.array_equal(again.mask, pred.mask)


# ---------------------------------------------------------------------------------------------- stitching
class ThresholdSegmenter:
    """Stub of AutomaticSegmenter for the stitching tests: objects = connected components of
    ``tile > 150`` for g < 0.5 (nuclei) and of ``tile > 50`` for g >= 0.5 (cells).
    """

    def generate_levels(self, rgb, levels, *, cancel=None, features=None):
        out = []
        for g in levels:
            comp, n = ndimage.label(rgb[..., 0] > (150 if g < 0.5 else 50))
            masks = np.stack([comp == i for i in range(1, n + 1)]) if n else np.zeros((0, *rgb.shape[:2]), bool)
            out.append(AutoMasks(g, masks, np.ones(n, np.float32), np.ones(n, np.float32), np.zeros((n, 4)),
                                 np.zeros((n, 2))))
        return out


def _cells_image(hw=(1300, 1500)):
    """Cells (grey 100) with nuclei (grey 220) placed on and around the borders of a 512/128 grid,
    plus a long bar (longer than a tile) and a cell larger than the overlap.
    """
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    img = np.zeros(hw, np.uint8)
    cells = []
    for cy, cx in [(200, 384), (200, 448), (430, 420), (448, 900), (800, 770), (1000, 1230), (1100, 200)]:
        r = int(rng.integers(25, 45))
        img[np.hypot(yy - cy, xx - cx) < r] = 100
        img[np.hypot(yy - cy, xx - cx) < r / 3] = 220
        cells.append((cy, cx, r))
    img[640:660, 100:1400] = 100      # a bar across three tiles
    img[900:1180, 500:800] = 100      # a cell larger than the overlap
    img[1000:1030, 620:660] = 220     # its nucleus
    return img


def _canonical(labels):
    """Label image -> set of frozensets of flat pixel indices (label values do not matter)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.flatnonzero(np.diff(flat[order])) + 1
    return {frozenset(chunk.tolist()) for chunk in np.split(order, bounds) if flat[chunk[0]] != 0}


@pytest.mark.parametrize("overlap", [128, 64])
def test_tiled_auto_labels_are_seamless(overlap):
    img = _cells_image()
    result = segment_tiled(None, img, [0.3, 0.8], tile_size=512, overlap=overlap, segmenter=ThresholdSegmenter())
    assert result.complete and result.tiles_total == len(tile_grid(img.shape, 512, overlap))
    for li, thr in enumerate([150, 50]):
        truth, n = ndimage.label(img > thr)
        got = result.label_image(li)
        assert len(result.levels[li]) == n, "one label per object: cut objects merged, overlap duplicates removed"
        assert _canonical(got) == _canonical(truth)


def test_tiled_hierarchy_keeps_nesting():
    img = _cells_image()
    result = segment_tiled(None, img, [0.3, 0.8], tile_size=512, overlap=128, segmenter=ThresholdSegmenter(),
                           hierarchy=True)
    nuclei, cells = result.label_image(0), result.label_image(1)
    parents = result.levels[0].parents
    assert all(p > 0 for p in parents)
    for i, p in enumerate(parents):
        inside = cells[nuclei == i + 1]
        assert (inside == p).all()
    rows = result.table()
    assert {r["level"] for r in rows} == {0, 1} and all(r["parent"] > 0 for r in rows if r["level"] == 0)


def test_stitch_merges_cut_pieces_and_drops_overlap_duplicates():
    tiles = tile_grid((100, 180), 100, 20)
    left, right = tiles
    # an object at x 70..110 (crosses the shared overlap 80..100): cut in the left tile, whole in the right
    a = Piece((70, 10, 100, 20), np.ones((10, 30), bool), 0.9, left, cut=True)
    b = Piece((70, 10, 110, 20), np.ones((10, 40), bool), 0.8, right, cut=False)
    # a long object cut in both tiles
    c = Piece((10, 50, 100, 60), np.ones((10, 90), bool), 0.9, left, cut=True)
    d = Piece((80, 50, 170, 60), np.ones((10, 90), bool), 0.7, right, cut=True)
    objs = stitch([a, b, c, d], cell=100)
    assert sorted(o.box for o in objs) == [(10, 50, 170, 60), (70, 10, 110, 20)]


def test_cancel_keeps_finished_tiles():
    img = _cells_image()
    seen = []
    result = segment_tiled(None, img, [0.8], tile_size=512, overlap=128, segmenter=ThresholdSegmenter(),
                           progress=lambda d, t, tile: seen.append((d, t)), cancel=lambda: len(seen) >= 2)
    n = len(tile_grid(img.shape, 512, 128))
    assert not result.complete and result.tiles_done == 2 and seen == [(1, n), (2, n)]
    assert len(result.levels[0]) > 0


def test_tiled_auto_with_the_real_model_runs_on_a_uint16_image(tiny_model_256):
    from unsamv2_engine.automatic.settings import AutoSettings

    img = np.zeros((275, 275), np.uint16)  # 2 x 2 tiles of the tests' 256-px model
    img[125:135, 250:260] = 3000
    result = segment_tiled(tiny_model_256, img, [0.5], settings=AutoSettings.cpu().with_(points_per_side=4),
                           overlap=32)
    assert result.complete and result.tiles_total == 4
    labels = result.label_image(0)
    assert labels.shape == img.shape and labels.max() == len(result.levels[0])


def test_pieces_keep_their_masks_at_one_bit_a_pixel():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 101)) > 0.5
    piece = Piece((5, 7, 106, 44), mask, 0.5)
    np.testing.assert_array_equal(piece.mask, mask)
    assert piece.area == int(mask.sum()) and piece.nbytes == 37 * 13  # 101 bits -> 13 bytes a row
    piece.mask[:] = False  # a copy: the piece is unchanged
    assert piece.area == int(mask.sum()) and np.array_equal(piece.mask, mask)
    piece.mask = np.zeros_like(mask)
    assert piece.area == 0 and not piece.mask.any()
