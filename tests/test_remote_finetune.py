"""Fine-tuning started by a remote client (``FineTune``) on the server's folders, through a real server.

The server listens on 127.0.0.1 (a free port) with ``data_root`` a temporary folder holding two small
synthetic images and their pseudo-labels; the base is a tiny 128-px random-weight checkpoint.
"""

from __future__ import annotations

import threading

import pytest

from tests.conftest import TINY_INPUT
from tests.test_finetune import write_pseudo_labels
from unsamv2_engine import protocol as p
from unsamv2_engine.client import EngineClient, EngineRequestError, RemoteTransport
from unsamv2_engine.remote_server import EngineServer

TOKEN = "finetune-token"
FAST = dict(max_steps=2, batch_size=1, lr=1e-3, val_fraction=0.0, max_masks=2, correction_clicks=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(data root, base checkpoint): root/images, root/labels; the checkpoint outside the root."""
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("data_root")
    write_pseudo_labels(root)
    base = save_checkpoint(build_model("tiny", seed=0, image_size=TINY_INPUT), tmp_path_factory.mktemp("base") / "b.pt")
    return root, base


@pytest.fixture(scope="module")
def server(data):
    from unsamv2_engine.model.checkpoint import load_checkpoint

    root, base = data
    srv = EngineServer(load_checkpoint(base, device="cpu"), port=0, token=TOKEN, data_root=root, checkpoint=base)
    srv.start()
    yield srv
    srv.stop()


def connect(srv) -> EngineClient:
    return EngineClient(RemoteTransport(srv.url, token=TOKEN))


def test_finetune_on_the_server_folder_writes_an_adapter(server, data):
    from unsamv2_engine.model.checkpoint import read_adapter

    root, base = data
    client = connect(server)
    events = []
    done = threading.Event()
    box = []

    def on_reply(reply):
        if isinstance(reply, p.FineTuneEvent):
            events.append(reply.event)
        elif not isinstance(reply, p.Progress):
            box.append(reply)
            done.set()

    try:
        client.submit(p.FineTune("images", "out/lab.pt", pseudo_labels=str(root / "labels"), **FAST), on_reply)
        assert done.wait(600), "no reply to FineTune"
    finally:
        client.close()
    reply = box[0]
    assert isinstance(reply, p.FineTuned), reply
    assert not reply.cancelled and reply.steps == 2 and reply.adapter == str(root / "out" / "lab.pt")
    assert reply.final_loss is not None and reply.workdir == str(root / "out" / "lab_work")
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert {"loss", "max_steps"} <= set(next(e for e in events if e["event"] == "step"))
    adapter = read_adapter(root / "out" / "lab.pt")
    assert adapter["metadata"]["finetune"]["steps"] == 2 and adapter["base"]["source"] == str(base)


def test_paths_outside_the_data_root_are_refused(server, data, tmp_path):
    root, _ = data
    client = connect(server)
    try:
        for request, what in ((p.FineTune("../", "out/x.pt", **FAST), "images folder"),
                              (p.FineTune(str(tmp_path), "out/x.pt", **FAST), "images folder"),
                              (p.FineTune("images", str(tmp_path / "x.pt"), **FAST), "adapter"),
                              (p.FineTune("images", "out/x.pt", pseudo_labels="/etc", **FAST), "pseudo-labels"),
                              (p.FineTune("images", "out/x.pt", workdir="out/../../w", **FAST), "workdir")):
            with pytest.raises(EngineRequestError, match=f"{what} .* is outside the server's data root") as err:
                client.call(request, timeout=60)
            assert err.value.failure.user_error
        with pytest.raises(EngineRequestError, match="no such folder on the server"):
            client.call(p.FineTune("missing", "out/x.pt", **FAST), timeout=60)
        assert not (tmp_path / "x.pt").exists() and not (root / "out" / "x.pt").exists()
        assert client.call(p.LoadModel(model_name="x"), timeout=30).size == "tiny"  # the session goes on
    finally:
        client.close()


def test_a_server_without_data_root_refuses_finetuning(data):
    from unsamv2_engine.model.checkpoint import load_checkpoint

    root, base = data
    srv = EngineServer(load_checkpoint(base, device="cpu"), port=0, checkpoint=base)
    srv.start()
    try:
        client = EngineClient(RemoteTransport(srv.url, token=None))
        try:
            with pytest.raises(EngineRequestError, match="--data-root"):
                client.call(p.FineTune(str(root / "images"), str(root / "x.pt"), **FAST), timeout=60)
        finally:
            client.close()
    finally:
        srv.stop()
    assert not (root / "x.pt").exists()


def test_cancel_stops_a_remote_finetuning_run(server, data):
    root, _ = data
    client = connect(server)
    box = []
    done = threading.Event()

    def on_reply(reply):
        if isinstance(reply, p.FineTuneEvent):
            if reply.event.get("event") == "step":
                client.cancel()
        elif not isinstance(reply, p.Progress):
            box.append(reply)
            done.set()

    try:
        client.submit(p.FineTune("images", "out/cancelled.pt", pseudo_labels="labels",
                                 **{**FAST, "max_steps": 1000}), on_reply)
        assert done.wait(600), "the cancelled run did not answer"
        reply = box[0]
        assert isinstance(reply, p.FineTuned) and reply.cancelled and reply.adapter is None
        assert 1 <= reply.steps < 1000 and reply.checkpoint is not None
        assert not (root / "out" / "cancelled.pt").exists()
        assert client.call(p.LoadModel(model_name="x"), timeout=30).size == "tiny"
    finally:
        client.close()


def test_a_local_engine_answers_finetune_with_a_message():
    from unsamv2_engine.service import EngineService

    reply = EngineService().handle(p.FineTune("images", "x.pt"))
    assert isinstance(reply, p.Failure) and reply.user_error and "--data-root" in reply.message


def test_serve_refuses_a_missing_data_root(tmp_path, capsys):
    from unsamv2_engine.cli import main

    assert main(["serve", "--data-root", str(tmp_path / "nope"), "--checkpoint", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "no such folder" in err
