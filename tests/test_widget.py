"""The dock widget in a real napari viewer (Xvfb): load, click, dial, commit, undo, sweep, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_cells_image, start_widget

pytestmark = pytest.mark.gui
WAIT = 60_000  # ms


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same model through the engine API directly, for exact comparisons."""
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.session import ImageSession

    session = ImageSession(load_checkpoint(checkpoint))
    session.set_image(make_cells_image())
    return session


@pytest.fixture
def widget(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="cells", rgb=True)
    w = start_widget(viewer, qtbot, checkpoint, dock=True, timeout_ms=WAIT)
    yield w
    w.close_engine()


def _wait_preview(qtbot, w, g):
    qtbot.waitUntil(lambda: w._last_decoded is not None and w._last_decoded.granularity == pytest.approx(g),
                    timeout=WAIT)
    return w.viewer.layers["UnSAMv2 preview"].data


def test_click_and_dial_update_the_preview(widget, qtbot, reference):
    assert "tiny" in widget.status_label.text() or "image ready" in widget.status_label.text()
    widget.add_point(40, 40)
    preview = _wait_preview(qtbot, widget, 0.5)
    np.testing.assert_array_equal(preview.astype(bool), reference.predict([[40, 40]], [1], 0.5).mask)
    widget.set_granularity(0.2)
    preview = _wait_preview(qtbot, widget, 0.2)
    np.testing.assert_array_equal(preview.astype(bool), reference.predict([[40, 40]], [1], 0.2).mask)
    widget.nudge(+0.05)
    assert widget.granularity == pytest.approx(0.25)
    _wait_preview(qtbot, widget, 0.25)


def test_negative_points_reach_the_engine(widget, qtbot, reference):
    widget.add_point(40, 40)
    _wait_preview(qtbot, widget, 0.5)
    widget.add_point(60, 95, positive=False)
    expected = reference.predict([[40, 40], [95, 60]], [1, 0], 0.5).mask
    qtbot.waitUntil(lambda: np.array_equal(widget.viewer.layers["UnSAMv2 preview"].data.astype(bool), expected),
                    timeout=WAIT)
    points = widget.viewer.layers["UnSAMv2 prompts"]
    assert list(points.features["polarity"]) == ["positive", "negative"]
    assert widget.toggle_polarity() == "negative"
    assert points.feature_defaults["polarity"][0] == "negative"


def test_commit_paints_an_undoable_object_with_features(widget, qtbot):
    widget.add_point(40, 40)
    widget.set_granularity(0.7)
    preview = _wait_preview(qtbot, widget, 0.7).astype(bool)
    label = widget.commit()
    objects = widget.viewer.layers["UnSAMv2 objects"]
    assert label == 1
    np.testing.assert_array_equal(objects.data == 1, preview)
    row = objects.features.iloc[0]
    assert row["index"] == 1 and row["granularity"] == pytest.approx(0.7) and row["area"] == preview.sum()
    assert len(widget.viewer.layers["UnSAMv2 prompts"].data) == 0  # prompts cleared for the next object
    objects.undo()
    assert objects.data.max() == 0


def test_sweep_adds_nested_levels(widget, qtbot):
    widget.add_point(40, 40)
    _wait_preview(qtbot, widget, 0.5)
    widget.sweep_edit.setText("0.2,0.6,1.0")
    with qtbot.waitSignal(widget.sweep_added, timeout=WAIT) as blocker:
        widget.sweep()
    layers = blocker.args[0]
    assert [layer.name for layer in layers] == ["sweep 1 g=0.20", "sweep 1 g=0.60", "sweep 1 g=1.00"]
    masks = [layer.data > 0 for layer in layers]
    for finer, coarser in zip(masks, masks[1:]):
        assert not np.any(finer & ~coarser), "a finer level leaks outside its parent"
    meta = layers[0].metadata["unsamv2_hierarchy"]
    assert meta["granularities"] == pytest.approx([0.2, 0.6, 1.0])


def test_bad_input_is_a_notification_not_a_crash(widget, qtbot):
    widget.sweep_edit.setText("0.05,2")
    widget.add_point(40, 40)
    widget.sweep()  # refused in the widget: nothing is sent
    from napari_unsamv2._widget import CHECKPOINT_CHOICE

    widget.model_combo.setCurrentText(CHECKPOINT_CHOICE)
    widget.checkpoint_edit.setText("/nonexistent/model.pt")
    widget.load_model()
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("error"), timeout=WAIT)
    assert "nonexistent" in widget.status_label.text()


def test_stack_prompts_on_the_current_slice(make_napari_viewer, qtbot, checkpoint, reference):
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    grey = make_cells_image()[..., 0]
    stack = np.stack([np.zeros_like(grey), grey, np.zeros_like(grey)])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
        w.checkpoint_edit.setText(str(checkpoint))
        w.load_model()
        qtbot.waitUntil(lambda: w._embedded_key is not None and "@1|" in w._embedded_key, timeout=WAIT)
        w.add_point(40, 40)
        preview = _wait_preview(qtbot, w, 0.5)
        assert preview.shape == stack.shape and preview[0].sum() == 0 and preview[2].sum() == 0
        assert preview[1].any()
        viewer.dims.set_current_step(0, 2)
        qtbot.waitUntil(lambda: w._embedded_key is not None and "@2|" in w._embedded_key, timeout=WAIT)
    finally:
        w.close_engine()


def test_segment_all_and_build_hierarchy(widget, qtbot):
    from unsamv2_engine.hierarchy import Hierarchy, check_nesting

    widget.preset_combo.setCurrentText("cpu")
    widget._whole_image_settings = lambda: {"preset": "cpu", "points_per_side": 4, "pred_iou_thresh": 0.0,
                                            "stability_score_thresh": 0.0}
    with qtbot.waitSignal(widget.whole_image_added, timeout=WAIT) as blocker:
        widget.segment_all()
    (layer,) = blocker.args[0]
    assert layer.name == "all g=0.50" and layer.data.max() >= 1
    assert list(layer.features["index"]) == list(range(1, len(layer.features) + 1))
    assert widget.segment_all_button.isEnabled() and not widget.cancel_button.isEnabled()

    widget.sweep_edit.setText("0.3,1.0")
    with qtbot.waitSignal(widget.whole_image_added, timeout=WAIT) as blocker:
        widget.build_hierarchy()
    levels = blocker.args[0]
    assert [lyr.name for lyr in levels] == ["hierarchy 1 g=0.30", "hierarchy 1 g=1.00"]
    meta = levels[0].metadata["unsamv2_hierarchy"]
    h = Hierarchy(np.stack([lyr.data for lyr in levels]), meta["granularities"], ["a", "b"], meta["table"], {})
    assert check_nesting(h) == []


def test_whole_image_job_can_be_cancelled_from_the_widget(widget, qtbot):
    widget._whole_image_settings = lambda: {"preset": "cpu", "points_per_side": 24}
    widget.segment_all()
    assert widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress_bar.maximum() == 1000 and widget.progress_bar.value() > 0, timeout=WAIT)
    widget.cancel_job()
    qtbot.waitUntil(lambda: widget.status_label.text() == "cancelled", timeout=WAIT)
    assert widget.segment_all_button.isEnabled()


def test_clear_removes_prompts_and_preview_even_with_a_decode_in_flight(widget, qtbot):
    widget.add_point(40, 40)
    _wait_preview(qtbot, widget, 0.5)
    widget.set_granularity(0.8)  # a decode is now in flight
    widget.clear()
    qtbot.wait(1500)  # let the in-flight reply arrive
    assert len(widget.viewer.layers["UnSAMv2 prompts"].data) == 0
    assert widget.viewer.layers["UnSAMv2 preview"].data.max() == 0


def test_prompts_layer_follows_the_dimensions_of_the_chosen_image(make_napari_viewer):
    """A prompts layer made for a 2D image is replaced when a stack is chosen (and back)."""
    from napari_unsamv2._widget import PROMPTS_LAYER, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="flat", rgb=True)
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        w.image_combo.setCurrentText("flat")
        w.add_point(10, 12)
        assert viewer.layers[PROMPTS_LAYER].ndim == 2
        viewer.add_image(np.zeros((4, 96, 128), np.uint16), name="stack")
        w.image_combo.setCurrentText("stack")
        assert viewer.layers[PROMPTS_LAYER].ndim == 3 and len(viewer.layers[PROMPTS_LAYER].data) == 0
        w.add_point(20, 30)  # would fail with a shape error on a 2D prompts layer
        assert viewer.layers[PROMPTS_LAYER].data.tolist() == [[0, 20, 30]]
        w.image_combo.setCurrentText("flat")
        assert viewer.layers[PROMPTS_LAYER].ndim == 2
    finally:
        w.close_engine()


def test_preview_prompt_holds_only_the_current_objects_points(make_napari_viewer):
    """Points of several objects (for propagation) share the prompts layer; the 2D preview uses the
    current object's points only.
    """
    from napari_unsamv2._widget import UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="cells", rgb=True)
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        w.add_point(40, 40)                      # object 1, positive
        w.add_point(45, 50, positive=False)      # object 1, negative
        w.propagate_panel.object_spin.setValue(2)
        w.add_point(60, 100)                     # object 2
        xy, labels, _ = w.current_prompt()
        assert xy.tolist() == [[100.0, 60.0]] and labels.tolist() == [1]
        w.propagate_panel.object_spin.setValue(1)
        xy, labels, _ = w.current_prompt()
        assert sorted(map(tuple, xy.tolist())) == [(40.0, 40.0), (50.0, 45.0)] and sorted(labels.tolist()) == [0, 1]
    finally:
        w.close_engine()


def test_contrast_and_data_changes_reembed_what_the_model_sees(make_napari_viewer, qtbot, checkpoint):
    """Regression (issue 15): the embedding key was the layer name, id() and plane, so after a contrast change
    of a uint16 layer (or an edit of its data) the model kept seeing the old image.
    """
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.session import ImageSession

    image = (make_cells_image()[..., 0].astype(np.uint16) * 16)
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="u16", contrast_limits=(0, 4000))
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    reference = ImageSession(load_checkpoint(checkpoint))
    try:
        w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
        w.checkpoint_edit.setText(str(checkpoint))
        w.load_model()
        qtbot.waitUntil(lambda: w._embedded_key is not None, timeout=WAIT)
        first = w._embedded_key
        w.add_point(40, 40)
        _wait_preview(qtbot, w, 0.5)

        layer.contrast_limits = (1500, 2500)
        qtbot.waitUntil(lambda: w._embedded_key not in (None, first), timeout=WAIT)
        reference.set_image(image, contrast_limits=(1500, 2500))
        expected = reference.predict([[40, 40]], [1], 0.5).mask
        qtbot.waitUntil(lambda: np.array_equal(viewer.layers["UnSAMv2 preview"].data.astype(bool), expected),
                        timeout=WAIT)

        second = w._embedded_key
        edited = image.copy()
        edited[:, :64] = 0
        layer.data = edited
        qtbot.waitUntil(lambda: w._embedded_key not in (None, first, second), timeout=WAIT)
        reference.set_image(edited, contrast_limits=tuple(layer.contrast_limits))
        expected = reference.predict([[40, 40]], [1], 0.5).mask
        qtbot.waitUntil(lambda: np.array_equal(viewer.layers["UnSAMv2 preview"].data.astype(bool), expected),
                        timeout=WAIT)
    finally:
        w.close_engine()
