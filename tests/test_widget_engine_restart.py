"""Issue 11 item 12 in the widget: a dead engine process is detected and the widget offers a restart."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import make_cells_image

pytestmark = pytest.mark.gui
WAIT = 60_000  # ms


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_dead_engine_offers_a_restart(make_napari_viewer, qtbot, checkpoint, monkeypatch):
    from napari_unsamv2._widget import CHECKPOINT_CHOICE, UnSAMv2Widget
    from unsamv2_engine.client import EngineClient, ProcessTransport

    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="cells", rgb=True)
    transport = ProcessTransport(torch_threads=1)
    w = UnSAMv2Widget(viewer, engine=EngineClient(transport))
    viewer.window.add_dock_widget(w)
    w.model_combo.setCurrentText(CHECKPOINT_CHOICE)
    w.checkpoint_edit.setText(str(checkpoint))
    w.device_combo.setCurrentText("cpu")
    try:
        os.kill(transport.pid, signal.SIGKILL)  # the engine dies (as when the system runs out of memory)
        w.load_model()
        qtbot.waitUntil(lambda: not w.restart_button.isHidden(), timeout=WAIT)  # the request failed; no endless wait
        assert "Restart engine" in w.status_label.text() and not w._model_ready
        monkeypatch.setenv("UNSAMV2_ENGINE", "thread")  # the new engine: in-process, to keep the test quick
        w.restart_button.click()
        qtbot.waitUntil(lambda: w._embedded_key is not None, timeout=WAIT)  # a new engine: model loaded, image embedded
        assert w.restart_button.isHidden() and w._model_ready
    finally:
        w.close_engine()
