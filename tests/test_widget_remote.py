"""The widget with the "server" engine: connect, status, the dial over the network, a lost server,
a wrong token, reconnecting. Servers listen on 127.0.0.1 only and are stopped by the tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_cells_image
from unsamv2_engine.remote_server import EngineServer

pytestmark = pytest.mark.gui
WAIT = 120_000  # ms
TOKEN = "widget-token"


@pytest.fixture
def server(tiny_model):
    srv = EngineServer(tiny_model, port=0, token=TOKEN)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def widget(make_napari_viewer, monkeypatch):
    from napari_unsamv2._widget import SERVER_ENGINE, UnSAMv2Widget

    monkeypatch.delenv("UNSAMV2_SERVER", raising=False)
    monkeypatch.delenv("UNSAMV2_TOKEN", raising=False)
    viewer = make_napari_viewer()
    viewer.add_image(make_cells_image(), name="cells", rgb=True)
    w = UnSAMv2Widget(viewer)
    viewer.window.add_dock_widget(w)
    w.engine_combo.setCurrentText(SERVER_ENGINE)
    yield w
    w.close_engine()


def test_the_widget_drives_a_server_and_reconnects(widget, server, tiny_model, qtbot):
    from unsamv2_engine.session import ImageSession

    assert not widget.model_combo.isEnabled() and widget.server_edit.isEnabled()
    assert widget.load_button.text() == "Connect to server"
    widget.server_edit.setText(server.url)
    widget.token_edit.setText(TOKEN)
    widget.load_model()
    qtbot.waitUntil(lambda: widget._embedded_key is not None, timeout=WAIT)
    assert server.n_sessions == 1
    widget.add_point(40, 40)
    qtbot.waitUntil(lambda: widget._last_decoded is not None, timeout=WAIT)
    session = ImageSession(tiny_model)
    session.set_image(make_cells_image())
    np.testing.assert_array_equal(widget.viewer.layers["UnSAMv2 preview"].data.astype(bool),
                                  session.predict([[40, 40]], [1], 0.5).mask)
    assert widget._last_decoded.low_res_logits is None  # the widget asks for masks only

    server.stop()  # the server goes away: the widget says so and forgets its embeddings
    widget.set_granularity(0.3)
    qtbot.waitUntil(lambda: "reconnect" in widget.status_label.text(), timeout=WAIT)
    assert widget._embedded_key is None and not widget._model_ready

    again = EngineServer(tiny_model, port=0, token=TOKEN)  # "restarted" (on another free port)
    again.start()
    try:
        widget.server_edit.setText(again.url)
        statuses = []
        widget.model_loaded.connect(lambda reply: statuses.append(widget.status_label.text()))
        widget.load_model()  # the same button reconnects
        qtbot.waitUntil(lambda: widget._embedded_key is not None, timeout=WAIT)
        assert f"on cpu (granularity module); engine: server {again.url}, cpu" in statuses[0]
    finally:
        widget.close_engine()
        again.stop()


def test_a_wrong_token_or_no_server_is_a_message(widget, server, qtbot):
    widget.server_edit.setText(server.url)
    widget.token_edit.setText("wrong")
    widget.load_model()
    assert "refused the token" in widget.status_label.text() and widget._engine is None
    widget.server_edit.setText("http://nope")
    widget.load_model()
    assert "must start with ws://" in widget.status_label.text()
    widget.server_edit.setText("")
    widget.load_model()
    assert "give the server's URL" in widget.status_label.text()
    assert server.n_sessions == 0


def test_the_finetune_panel_runs_on_the_server_folder(widget, tmp_path, qtbot, tiny_checkpoint):
    """With the server engine, the panel sends FineTune with server paths (relative to --data-root) instead of
    starting a local process; the adapter is written on the server and the panel says so.
    """
    from napari_unsamv2._finetune_job import RemoteFinetuneJob
    from tests.test_finetune import write_pseudo_labels
    from unsamv2_engine.model.checkpoint import load_checkpoint

    root = tmp_path / "root"
    write_pseudo_labels(root)
    base = tiny_checkpoint
    srv = EngineServer(load_checkpoint(base, device="cpu"), port=0, token=TOKEN, data_root=root, checkpoint=base)
    srv.start()
    try:
        panel = widget.finetune_panel
        assert "on the server" in panel.where_label.text()
        widget.server_edit.setText(srv.url)
        widget.token_edit.setText(TOKEN)
        panel.images_edit.setText("images")
        panel.labels_edit.setText("labels")
        panel.steps_spin.setValue(1)
        results = []
        panel.job_finished.connect(results.append)
        job = panel.start()
        assert isinstance(job, RemoteFinetuneJob) and job.request().images == "images"
        qtbot.waitUntil(lambda: bool(results), timeout=WAIT)
        assert results[0].status == "done", results[0].message
        assert results[0].adapter == str(root / "images" / "unsamv2_adapter.pt")
        assert (root / "images" / "unsamv2_adapter.pt").exists()
        assert "adapter written on the server" in panel.status_label.text()
        panel.images_edit.setText("../outside")
        results.clear()
        panel.start()
        qtbot.waitUntil(lambda: bool(results), timeout=WAIT)
        assert results[0].status == "failed" and "outside the server's data root" in results[0].message
    finally:
        srv.stop()
