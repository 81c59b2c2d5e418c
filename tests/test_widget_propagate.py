"""The "Propagate through slices" panel in a real napari viewer (Xvfb), against the engine's direct result.

One test goes the user's way: the tiny random hiera-tiny checkpoint loaded by the widget (the shared
128-px test checkpoint). The others inject an engine holding the same hiera-tiny architecture with a 128 px input
(``tests.test_video._small_input_model``), because each tracked slice at 1024 px costs seconds on a
CPU; the widget code under test is the same. Every result is compared with a direct
:class:`~unsamv2_engine.video.VideoSession` on the same model, prompts, contrast limits and threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unsamv2 import _layers as L
from unsamv2_engine.video import ObjectPrompt, VideoSession

pytestmark = pytest.mark.gui
WAIT = 240_000  # ms
N_SLICES = 6  # the 1024 px test uses the first 3


@pytest.fixture(scope="module")
def sample():
    from unsamv2_engine.synth import generate_sample

    return generate_sample(seed=0, modality="fluorescence", ndim="3", shape=(N_SLICES, 64, 80))


def _cell_centre(sample, z: int) -> tuple[int, int]:
    """(row, col) at the centre of the cell on slice z (the synthetic frames hold one large cell)."""
    yy, xx = np.nonzero(sample.labels["cell"][z])
    k = np.argmin(np.hypot(yy - yy.mean(), xx - xx.mean()))
    return int(yy[k]), int(xx[k])


def _points(sample, z: int, where: str) -> tuple[int, int]:
    """A (row, col) click on slice z: the cell's centre, or near a corner of the frame."""
    h, w = sample.image.shape[1:]
    return {"cell": _cell_centre(sample, z), "top-left": (6, 6), "bottom-right": (h - 7, w - 7)}[where]


@pytest.fixture(scope="module")
def small_model():
    from tests.test_video import _small_input_model

    return _small_input_model()


def _prompt(sample, spec) -> ObjectPrompt:
    """Spec = (object id, slice, g, [(where, positive), ...]) as an engine prompt."""
    object_id, z, g, clicks = spec
    rc = np.array([_points(sample, z, where) for where, _ in clicks], np.float32)
    return ObjectPrompt(object_id, z, rc[:, ::-1].copy(), np.array([int(pos) for _, pos in clicks], np.int32), g)


def _click(widget, sample, spec) -> None:
    """The same prompt as clicks on its slice, for its object."""
    object_id, z, _, clicks = spec
    widget.propagate_panel.object_spin.setValue(object_id)
    widget.viewer.dims.set_current_step(0, z)
    for where, positive in clicks:
        widget.add_point(*_points(sample, z, where), positive=positive)


def _propagate(qtbot, widget):
    with qtbot.waitSignal(widget.propagate_panel.propagated, timeout=WAIT) as blocker:
        assert widget.propagate_panel.propagate() is not None
        assert not widget.propagate_panel.propagate_button.isEnabled()  # one propagation at a time
    assert widget.propagate_panel.propagate_button.isEnabled()
    return blocker.args[0]


def _reference(model, layer, prompts, direction="both"):
    """The engine's direct result on the image layer's stack, with its contrast limits (what the widget sends)."""
    contrast = tuple(float(c) for c in layer.contrast_limits)
    session = VideoSession(model, layer.data, contrast_limits=contrast, mask_threshold=0.0)
    session.add_prompts(prompts)
    return session, session.propagate(direction)


@pytest.fixture
def small_widget(make_napari_viewer, small_model, sample):
    """The widget on the stack, with an engine that already holds ``small_model``."""
    from napari_unsamv2._widget import UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.service import EngineService

    viewer = make_napari_viewer()
    viewer.add_image(sample.image, name="stack")
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport(EngineService(small_model))))
    viewer.window.add_dock_widget(w)
    yield w
    w.close_engine()


@pytest.mark.slow
def test_tiny_checkpoint_propagates_the_stack_like_the_engine(make_napari_viewer, qtbot, tiny_checkpoint, sample):
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.model.checkpoint import load_checkpoint

    checkpoint = tiny_checkpoint
    viewer = make_napari_viewer()
    image = viewer.add_image(sample.image[:3], name="stack")
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
        w.checkpoint_edit.setText(str(checkpoint))
        w.device_combo.setCurrentText("cpu")
        w.load_model()
        qtbot.waitUntil(lambda: w._model_ready, timeout=WAIT)
        spec = (1, 1, 0.5, [("cell", True)])
        _click(w, sample, spec)
        w.propagate_panel.direction_combo.setCurrentText("forward")  # slices 1 and 2: keeps the test short
        layer = _propagate(qtbot, w)
        _, expected = _reference(load_checkpoint(checkpoint), image, [_prompt(sample, spec)], "forward")
    finally:
        w.close_engine()
    assert layer.name == "UnSAMv2 propagated" and layer.data.shape == image.data.shape
    np.testing.assert_array_equal(layer.data, expected.labels)
    assert layer.data[1].any() and not layer.data[0].any()
    assert w.propagate_panel.status_label.text().startswith("1 object(s) through 3 slices")


@pytest.mark.slow
def test_two_objects_then_a_correction_follow_the_engine(small_widget, qtbot, small_model, sample):
    w = small_widget
    w.set_granularity(0.6)
    specs = [(1, 1, 0.6, [("cell", True)]), (2, 2, 0.6, [("top-left", True)])]
    for spec in specs:
        _click(w, sample, spec)
    layer = _propagate(qtbot, w)
    session, expected = _reference(small_model, w.image_layer(), [_prompt(sample, s) for s in specs])
    assert layer.data.shape == sample.image.shape and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.data, expected.labels)
    assert set(np.unique(layer.data)) == {0, 1, 2}  # both objects, each with its id
    assert list(layer.features["index"]) == [1, 2] and list(layer.features["granularity"]) == [0.6, 0.6]
    assert list(layer.features["prompted"]) == ["1", "2"]
    meta = layer.metadata["unsamv2_propagation"]
    assert meta["object_ids"] == [1, 2] and meta["granularities"] == {1: 0.6, 2: 0.6}
    np.testing.assert_allclose(meta["scores"], expected.scores)
    assert meta["frames_done"] == [True] * N_SLICES and not meta["cancelled"]
    first = np.array(layer.data)

    # correct object 1 on slice 0, where it was tracked: a positive point elsewhere, a negative on the cell
    correction = (1, 0, 0.6, [("bottom-right", True), ("cell", False)])
    _click(w, sample, correction)
    layer = _propagate(qtbot, w)
    session.clear()
    session.add_prompts([_prompt(sample, s) for s in specs + [correction]])
    corrected = session.propagate("both")
    np.testing.assert_array_equal(layer.data, corrected.labels)
    assert not np.array_equal(layer.data[0], first[0]), "the re-prompted slice did not change"
    assert list(layer.features["prompted"]) == ["0,1", "2"]


@pytest.mark.slow
def test_cancel_keeps_the_finished_slices(small_widget, qtbot, small_model, sample):
    w = small_widget
    # the stack twice over: 12 slices, so that the cancel has 11 slices' time to reach the engine before the end
    w.image_layer().data = np.concatenate([sample.image, sample.image])
    n_slices = 2 * N_SLICES
    spec = (1, 0, 0.5, [("cell", True)])
    _click(w, sample, spec)
    w.propagate_panel.direction_combo.setCurrentText("forward")
    panel = w.propagate_panel
    with qtbot.waitSignal(panel.propagated, timeout=WAIT) as blocker:
        panel.propagate()
        # cancel after the first slice: the engine stops before one of the slices still to go
        qtbot.waitUntil(lambda: panel.progress_bar.maximum() == n_slices and panel.progress_bar.value() >= 1,
                        timeout=WAIT)
        panel.cancel()
    layer = blocker.args[0]
    meta = layer.metadata["unsamv2_propagation"]
    done = np.array(meta["frames_done"])
    assert meta["cancelled"] and done[0] and not done.all()
    assert panel.status_label.text().startswith("cancelled") and panel.propagate_button.isEnabled()
    _, expected = _reference(small_model, w.image_layer(), [_prompt(sample, spec)], "forward")
    np.testing.assert_array_equal(layer.data[done], expected.labels[done])  # tracking forward: same slices
    assert not layer.data[~done].any()  # unfinished slices keep what the layer had: nothing yet

    # a run after the cancel completes; the engine still holds the stack, so it is not sent again
    with qtbot.waitSignal(panel.propagated, timeout=WAIT) as blocker:
        panel.propagate()
        assert "sending the stack" not in panel.status_label.text()
    np.testing.assert_array_equal(blocker.args[0].data, expected.labels)
    image = w.image_layer()
    image.data = image.data.copy()  # new data: a new stack key, the stack travels again
    with qtbot.waitSignal(panel.propagated, timeout=WAIT):
        panel.propagate()
        assert "sending the stack" in panel.status_label.text()
        panel.cancel()  # what this run had to show is shown; no need to track the whole stack again


def test_2d_images_and_missing_prompts_are_notifications(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    from napari_unsamv2._widget import UnSAMv2Widget
    from tests.conftest import make_cells_image
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="cells", rgb=True)
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        before = len(notification_manager.records)
        assert w.propagate_panel.propagate() is None
        assert "single 2D image" in str(notification_manager.records[-1].message)
        assert not w.propagate_panel.axis_combo.isEnabled() and w.propagate_panel.axis_combo.count() == 0

        viewer.add_image(np.zeros((2, 3, 32, 40), np.uint16), name="tzyx")
        w.image_combo.setCurrentText("tzyx")
        combo = w.propagate_panel.axis_combo
        assert combo.isEnabled() and [combo.itemData(i) for i in range(combo.count())] == [0, 1]
        assert combo.currentData() == 1  # z of a t,z,y,x layer
        assert w.propagate_panel.propagate() is None
        assert "no prompts" in str(notification_manager.records[-1].message)
        assert len(notification_manager.records) == before + 2 and not w._pending  # nothing was sent
    finally:
        w.close_engine()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["t,z,y,x along t", "z,y,x,rgb"])
def test_4d_and_rgb_stacks_propagate_their_substack(make_napari_viewer, qtbot, small_model, sample, layout):
    from napari_unsamv2._widget import UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport
    from unsamv2_engine.service import EngineService

    viewer = make_napari_viewer()
    zyx = sample.image[:3]
    if layout.startswith("t"):
        image = viewer.add_image(np.stack([zyx[:, ::-1], zyx]), name="tzyx")  # [2 t, 3 z, H, W]
        substack = image.data[:, 1]  # every t at z = 1
    else:
        grey = ((zyx - zyx.min()) * (255.0 / np.ptp(zyx))).astype(np.uint8)
        image = viewer.add_image(np.stack([grey, grey // 2, 255 - grey], axis=-1), name="rgb", rgb=True)
        substack = image.data
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport(EngineService(small_model))))
    try:
        w.propagate_panel.axis_combo.setCurrentIndex(0)  # t of the 4D layer, z (the only choice) of the RGB one
        viewer.dims.set_current_step(1, 1)
        viewer.dims.set_current_step(0, 1)
        w.add_point(*_cell_centre(sample, 1))
        layer = _propagate(qtbot, w)
    finally:
        w.close_engine()
    rgb = image.rgb
    contrast = None if rgb else tuple(float(c) for c in image.contrast_limits)
    session = VideoSession(small_model, substack, channel_axis=3 if rgb else None, contrast_limits=contrast,
                           mask_threshold=0.0)
    row, col = _cell_centre(sample, 1)
    session.add_prompts([ObjectPrompt(1, 1, np.array([[col, row]], np.float32), np.array([1]), 0.5)])
    expected = session.propagate("both")
    assert layer.data.shape == (image.data.shape[:-1] if rgb else image.data.shape)
    if rgb:
        np.testing.assert_array_equal(layer.data, expected.labels)
    else:
        np.testing.assert_array_equal(layer.data[:, 1], expected.labels)
        assert not layer.data[:, [0, 2]].any()  # other z positions are left alone
        assert layer.metadata["unsamv2_propagation"]["position"] == [None, 1]


@pytest.mark.gui
def test_each_object_keeps_the_dial_value_it_was_given(make_napari_viewer):
    """The dial follows the current object: object 1 at 0.3, object 2 at 0.9, back to 1 shows 0.3."""
    from napari_unsamv2._widget import UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ThreadTransport

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 40), np.uint16), name="stack")
    w = UnSAMv2Widget(viewer, engine=EngineClient(ThreadTransport()))
    try:
        w.set_granularity(0.3)
        w.propagate_panel.object_spin.setValue(2)
        assert w.granularity == pytest.approx(0.3)  # a new object starts from the dial as it is
        w.set_granularity(0.9)
        w.propagate_panel.object_spin.setValue(1)
        assert w.granularity == pytest.approx(0.3)
        assert w.object_granularities() == pytest.approx({1: 0.3, 2: 0.9})
        w.add_point(10, 12)
        w.propagate_panel.object_spin.setValue(2)
        w.add_point(20, 30)
        found = w.prompt_points(w.image_layer())
        prompts = L.object_prompts(*found, (0,), 0, w.granularity, w.object_granularities())
        assert {pr.object_id: pr.granularity for pr in prompts} == pytest.approx({1: 0.3, 2: 0.9})
    finally:
        w.close_engine()
