"""Microscopy-sized layers in the dock widget (issue 15), in a real napari viewer (Xvfb).

A layer plane with a side above the engine's rule (:data:`unsamv2_engine.tiling.grid.TILE_ABOVE`, 2048 px)
goes to a tiled session in the engine: clicks are decoded on 256-px tiles of the 256-px test model
(re-centred, then coarser views), the mask comes back over its view's box in image coordinates;
dask layers are read one plane at a time; a sweep's levels come back over a box around the click and become
layers of that box only; ``IMAGE.embeddings.zarr`` beside a TIFF is used; whole-image
segmentation reports progress per tile and a cancel keeps the finished tiles.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import start_widget

pytestmark = pytest.mark.gui
WAIT = 60_000  # ms
H, W = 2080, 2120  # > TILE_ABOVE: tiled; 11 x 11 tiles of 256 px (overlap 64)
CLICK_RC = (1500, 1700)  # (row, col)


def large_image() -> np.ndarray:
    """A uint8 ``[H, W]`` field of bright round cells (radius 20 px) on a dim background."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W), 25, np.uint8)
    rng = np.random.default_rng(1)
    centres = rng.integers(40, [H - 40, W - 40], size=(60, 2)).tolist() + [list(CLICK_RC)]
    for cy, cx in centres:
        y0, x0 = max(cy - 25, 0), max(cx - 25, 0)
        d = np.hypot(yy[y0:cy + 25, x0:cx + 25] - cy, xx[y0:cy + 25, x0:cx + 25] - cx)
        img[y0:cy + 25, x0:cx + 25][d < 20] = 200
    return img


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return large_image()


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint_256):
    return tiny_checkpoint_256


@pytest.fixture(scope="module")
def model(checkpoint):
    """The widget's model, loaded here too for the reference TiledSession."""
    from unsamv2_engine.model.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def reference(model, image):
    """The expected results: one TiledSession on ``image`` (its views stay in memory from test to test)."""
    from unsamv2_engine.tiling.interactive import TiledSession

    return TiledSession(model, image)


def service_of(w):
    """The engine service behind the widget's in-process engine (its tiled sessions, by image key)."""
    return w.engine._transport.service


def click_and_wait(w, qtbot, rc=CLICK_RC):
    w.add_point(*rc)
    qtbot.waitUntil(lambda: w._last_decoded is not None, timeout=WAIT)
    return w._last_decoded


def test_click_on_a_large_layer_is_decoded_on_tiles_in_image_coordinates(make_napari_viewer, qtbot, checkpoint,
                                                                          reference, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="big")
    w = start_widget(viewer, qtbot, checkpoint)
    try:
        assert "tiled" in w.status_label.text() or "tiles" in w.status_label.text()
        tiled = service_of(w)._tiled[w._embedded_key]
        assert tiled.session.embedded == 0  # nothing embedded before the first click
        reply = click_and_wait(w, qtbot)
        expected = reference.predict([CLICK_RC[::-1]], [1], 0.5)
        assert reply.box == expected.box and reply.step == expected.step
        np.testing.assert_array_equal(reply.mask, expected.mask)
        full = expected.full_mask((H, W))
        assert full.any()
        # the preview holds the reply's box only, placed on the image by its translate
        preview = viewer.layers["UnSAMv2 preview"]
        x0, y0, x1, y1 = expected.box
        assert preview.data.shape == (y1 - y0, x1 - x0)
        np.testing.assert_allclose(preview.translate, [y0, x0])
        np.testing.assert_array_equal(preview.data.astype(bool), expected.mask)
        label = w.commit()
        objects = viewer.layers["UnSAMv2 objects"]
        assert objects.data.shape == (H, W)
        np.testing.assert_array_equal(objects.data == label, full)
        assert objects.features.iloc[0]["area"] == full.sum()
    finally:
        w.close_engine()


class PlaneReads:
    """A 3-plane stack whose reads are recorded by plane; converting it whole raises."""

    def __init__(self, planes: np.ndarray) -> None:
        self.planes = planes
        self.shape, self.dtype, self.ndim = planes.shape, planes.dtype, planes.ndim
        self.read: list[int] = []

    def __getitem__(self, key):
        z = key[0]
        self.read.extend(range(*z.indices(len(self.planes))) if isinstance(z, slice) else [int(z)])
        return self.planes[key]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole stack was converted to numpy")


def test_a_dask_stack_is_read_one_plane_at_a_time(make_napari_viewer, qtbot, checkpoint, reference, image):
    import dask.array as da

    source = PlaneReads(np.stack([np.zeros_like(image), image, image[::-1].copy()]))
    stack = da.from_array(source, chunks=(1, 1024, 1024), asarray=False)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="lazy", contrast_limits=(0, 255))
    viewer.dims.set_current_step(0, 1)
    source.read.clear()
    w = start_widget(viewer, qtbot, checkpoint)
    try:
        assert "@1|" in w._embedded_key
        assert set(source.read) == {1}, "the widget read planes it does not show"
        reply = click_and_wait(w, qtbot)
        expected = reference.predict([CLICK_RC[::-1]], [1], 0.5)
        assert reply.box == expected.box
        np.testing.assert_array_equal(reply.mask, expected.mask)
        assert set(source.read) == {1}
        # a sweep: one layer per level holding the sweep's box of this plane only, placed by its translate
        w.sweep_edit.setText("0.2,0.9")
        with qtbot.waitSignal(w.sweep_added, timeout=WAIT) as added:
            w.sweep()
        levels = reference.sweep([CLICK_RC[::-1]], [1], [0.2, 0.9])
        x0, y0, x1, y1 = (min(r.box[0] for r in levels), min(r.box[1] for r in levels),
                          max(r.box[2] for r in levels), max(r.box[3] for r in levels))
        for layer, level in zip(added.args[0], levels):
            assert layer.data.shape == (1, y1 - y0, x1 - x0)
            np.testing.assert_allclose(layer.translate, [1, y0, x0])
            assert layer.metadata["unsamv2_hierarchy"]["box"] == [x0, y0, x1, y1]
            # the level's mask, clipped to its parent: never more than the decoded mask, never outside the box
            assert not (layer.data[0].astype(bool) & ~level.full_mask(image.shape)[y0:y1, x0:x1]).any()
        assert added.args[0][-1].data.any()
        assert set(source.read) == {1}
        viewer.dims.set_current_step(0, 2)
        qtbot.waitUntil(lambda: w._embedded_key is not None and "@2|" in w._embedded_key, timeout=WAIT)
        assert set(source.read) == {1, 2}
    finally:
        w.close_engine()


def test_a_multiscale_layer_uses_its_full_resolution_level(make_napari_viewer, qtbot, checkpoint, image):
    import dask.array as da

    level0 = da.from_array(image, chunks=1024)
    viewer = make_napari_viewer()
    viewer.add_image([level0, level0[::2, ::2], level0[::4, ::4]], name="pyramid", multiscale=True,
                     contrast_limits=(0, 255))
    w = start_widget(viewer, qtbot, checkpoint)
    try:
        assert service_of(w)._tiled[w._embedded_key].session.image_hw == (H, W)
        assert f"({W}x{H})" in w.status_label.text()
    finally:
        w.close_engine()


@pytest.fixture
def tiff_with_cache(tmp_path, image, model):
    """``big.tif`` and ``big.tif.embeddings.zarr`` beside it holding the grid tile of the click
    (as ``unsamv2 embed`` writes it, for the tiling and model the widget uses).
    """
    import tifffile

    from unsamv2_engine.io.omezarr import open_lazy_image
    from unsamv2_engine.session import ImageSession
    from unsamv2_engine.tiling.cache import EmbeddingCache, cache_key, default_cache_path
    from unsamv2_engine.tiling.interactive import TiledSession
    from unsamv2_engine.tiling.source import ImageSource

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image)
    source = ImageSource(open_lazy_image(path))
    cache = EmbeddingCache.open(default_cache_path(path), cache_key(source, model, 256, 64), (H, W))
    tile = TiledSession(model, source).grid_tile_for(np.array([CLICK_RC[::-1]], np.float32))
    session = ImageSession(model)
    session.set_image(source.window(tile.box))
    cache.put(tile, session.features)
    return path, cache


def test_embeddings_beside_a_tiff_are_used(make_napari_viewer, qtbot, checkpoint, model, tiff_with_cache):
    from unsamv2_engine.tiling.interactive import TiledSession

    path, cache = tiff_with_cache
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari")
    assert str(layer.source.path) == str(path)
    w = start_widget(viewer, qtbot, checkpoint)
    try:
        assert "using the embeddings" in w.status_label.text() and "1 of 121 tiles stored" in w.status_label.text()
        tiled = service_of(w)._tiled[w._embedded_key]
        assert isinstance(tiled.session.source.data, np.memmap)  # the engine read the file itself, lazily
        reply = click_and_wait(w, qtbot)
        fresh = TiledSession(model, layer.data)
        expected = fresh.predict([CLICK_RC[::-1]], [1], 0.5)
        np.testing.assert_array_equal(reply.mask, expected.mask)  # float32 cache: bit for bit as fresh
        assert reply.views_embedded == fresh.embedded - 1  # the grid tile came from the cache
    finally:
        w.close_engine()


def test_a_stale_cache_is_neither_used_nor_changed(make_napari_viewer, qtbot, checkpoint, tiff_with_cache):
    import zarr

    path, cache = tiff_with_cache
    root = zarr.open_group(str(cache.path), mode="r+")
    key = dict(root.attrs["unsamv2_embeddings"])
    key["plane_0"] = {**key["plane_0"], "overlap": 32}  # as made by 'unsamv2 embed --overlap 32'
    root.attrs["unsamv2_embeddings"] = key
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari")
    w = start_widget(viewer, qtbot, checkpoint)
    try:
        text = w.status_label.text()
        assert "embedding cache not used" in text and "overlap" in text
        assert service_of(w)._tiled[w._embedded_key].cache is None
        assert int(np.asarray(cache.done()).sum()) == 1  # left as it was
    finally:
        w.close_engine()


def test_segment_all_reports_each_tile_and_cancel_keeps_finished_tiles(make_napari_viewer, qtbot, checkpoint, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="big")
    w = start_widget(viewer, qtbot, checkpoint)
    events = []
    w.job_progress.connect(events.append)
    w._whole_image_settings = lambda: {"preset": "cpu", "points_per_side": 2, "pred_iou_thresh": 0.0,
                                       "stability_score_thresh": 0.0}
    try:
        w.segment_all()
        qtbot.waitUntil(lambda: len(events) >= 2, timeout=WAIT)
        assert w.status_label.text().startswith("tile ") and w.progress_bar.maximum() == 1000
        w.cancel_job()
        with qtbot.waitSignal(w.whole_image_added, timeout=WAIT) as blocker:
            pass
        (layer,) = blocker.args[0]
        done = [e.done for e in events]
        assert all(e.stage == "tiles" and e.total == 121 for e in events) and done == list(range(1, len(done) + 1))
        assert f"cancelled after {done[-1]} of 121 tiles" in w.status_label.text()
        assert layer.data.shape == (H, W) and layer.data.max() >= 1  # the finished tiles' objects
        assert w.segment_all_button.isEnabled()
    finally:
        w.close_engine()
