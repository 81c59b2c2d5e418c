"""The protocol, the engine service, and the thread/process transports (latest-wins decoding)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tests.conftest import make_cells_image
from unsamv2_engine import protocol as p
from unsamv2_engine.client import EngineClient, EngineRequestError, ProcessTransport, ThreadTransport
from unsamv2_engine.hierarchy import check_nesting, sweep_hierarchy
from unsamv2_engine.service import EngineService
from unsamv2_engine.session import ImageSession

POINTS = np.array([[40.0, 40.0]])
LABELS = np.array([1])


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture
def client(tiny_model):
    c = EngineClient(ThreadTransport(EngineService(tiny_model)))
    yield c
    c.close()


def test_service_answers_like_the_session(tiny_model):
    service = EngineService(tiny_model)
    image = make_cells_image()
    embedded = service.handle(p.SetImage("img", image))
    assert isinstance(embedded, p.ImageEmbedded) and embedded.image_hw == (96, 128) and not embedded.cached
    assert service.handle(p.SetImage("img", image)).cached
    decoded = service.handle(p.Predict("img", POINTS, LABELS, 0.4))
    session = ImageSession(tiny_model)
    session.set_image(image)
    np.testing.assert_array_equal(decoded.mask, session.predict(POINTS, LABELS, 0.4).mask)
    sweep = service.handle(p.SweepRequest("img", POINTS, LABELS, [0.2, 0.9]))
    assert sweep.masks.shape == (2, 96, 128) and sweep.granularities == pytest.approx([0.2, 0.9])
    assert sweep.labels is None and sweep.table is None  # nest=False: the masks only
    nested = service.handle(p.SweepRequest("img", POINTS, LABELS, [0.9, 0.2], nest=True))
    expected = sweep_hierarchy(nested.masks, [0.9, 0.2], nested.scores)  # the engine nests as the function does
    np.testing.assert_array_equal(nested.labels, expected.labels)
    assert nested.table == expected.table and check_nesting(expected) == []


def test_service_turns_errors_into_replies(tiny_model):
    service = EngineService(tiny_model)
    missing = service.handle(p.Predict("nope", POINTS, LABELS, 0.4))
    assert isinstance(missing, p.Failure) and missing.user_error and "SetImage" in missing.message
    service.handle(p.SetImage("img", make_cells_image()))
    bad = service.handle(p.Predict("img", POINTS, LABELS, 3.0))
    assert isinstance(bad, p.Failure) and bad.kind == "PromptError" and bad.user_error
    empty = EngineService().handle(p.Predict("img", POINTS, LABELS, 0.4))
    assert isinstance(empty, p.Failure) and "no model loaded" in empty.message


def test_embedding_cache_is_bounded(tiny_model):
    service = EngineService(tiny_model, cache_size=2)
    image = make_cells_image()
    for key in ("a", "b", "c"):
        service.handle(p.SetImage(key, image))
    assert isinstance(service.handle(p.Predict("a", POINTS, LABELS, 0.5)), p.Failure)  # evicted
    assert isinstance(service.handle(p.Predict("c", POINTS, LABELS, 0.5)), p.Decoded)


def test_latest_decode_wins(client):
    client.call(p.SetImage("img", make_cells_image()))
    replies, done = [], threading.Event()
    requests = [p.Predict("img", POINTS, LABELS, g) for g in (0.1, 0.3, 0.5, 0.7, 0.9)]

    def on_reply(reply):
        replies.append(reply)
        if reply.request_id == requests[-1].request_id:
            done.set()

    for r in requests:
        client.submit(r, on_reply)
    assert done.wait(30)
    got = [r.request_id for r in replies]
    assert got == [requests[0].request_id, requests[-1].request_id]  # the three in between were superseded
    assert replies[-1].granularity == pytest.approx(0.9)


def test_call_raises_on_failure(client):
    with pytest.raises(EngineRequestError, match="not embedded"):
        client.call(p.Predict("missing", POINTS, LABELS, 0.5), timeout=30)


def test_process_engine_loads_a_checkpoint_and_decodes(checkpoint, tiny_model, tmp_path, monkeypatch):
    """A real engine process: load from a file, embed, decode; its answer equals the in-process one."""
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "empty-cache"))  # inherited by the engine process
    transport = ProcessTransport(torch_threads=1)
    client = EngineClient(transport)
    try:
        loaded = client.call(p.LoadModel(checkpoint=str(checkpoint), device="cpu"), timeout=120)
        assert loaded.has_granularity and loaded.size == "tiny"
        assert transport.pid != os.getpid()
        client.call(p.SetImage("img", make_cells_image()), timeout=120)
        decoded = client.call(p.Predict("img", POINTS, LABELS, 0.6), timeout=60)
        local = EngineService(tiny_model)
        local.handle(p.SetImage("img", make_cells_image()))
        expected = local.handle(p.Predict("img", POINTS, LABELS, 0.6))
        assert (decoded.mask != expected.mask).mean() < 1e-3
        with pytest.raises(EngineRequestError) as err:
            client.call(p.LoadModel(model_name="unsamv2-plus", download=False), timeout=60)
        assert err.value.failure.user_error and "models --download unsamv2-plus" in str(err.value)
        assert client.call(p.Predict("img", POINTS, LABELS, 0.6), timeout=60).mask.shape == (96, 128)
    finally:
        client.close()
    assert not transport._process.is_alive()


FAST = {"preset": "cpu", "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def test_segment_all_and_hierarchy_through_the_service(tiny_model):
    from unsamv2_engine.automatic import AutomaticSegmenter, AutoSettings
    from unsamv2_engine.hierarchy import Hierarchy, check_nesting

    service = EngineService(tiny_model)
    image = make_cells_image()
    service.handle(p.SetImage("img", image))
    progress = []
    seg = service.handle(p.SegmentAll("img", 0.5, FAST), progress.append)
    assert isinstance(seg, p.Segmented) and seg.labels.shape == (96, 128)
    direct = AutomaticSegmenter(tiny_model,
                                AutoSettings.cpu().with_(**{k: v for k, v in FAST.items() if k != "preset"}))
    np.testing.assert_array_equal(seg.labels, direct.generate(image, 0.5).label_image())
    assert progress and progress[-1].done == progress[-1].total == 16
    built = service.handle(p.BuildHierarchy("img", [0.3, 1.0], FAST))
    assert isinstance(built, p.HierarchyBuilt) and built.labels.shape == (2, 96, 128)
    assert check_nesting(Hierarchy(built.labels, built.granularities, ["a", "b"], built.table, {})) == []


def test_a_running_whole_image_job_can_be_cancelled(client):
    client.call(p.SetImage("img", make_cells_image()), timeout=60)
    replies, done = [], threading.Event()

    def on_reply(reply):
        replies.append(reply)
        if isinstance(reply, p.Progress) and reply.done >= 8:
            client.cancel()
        if isinstance(reply, p.Failure):
            done.set()

    client.submit(p.SegmentAll("img", 0.5, {**FAST, "points_per_side": 16}), on_reply)
    assert done.wait(120)
    assert replies[-1].kind == "Cancelled" and replies[-1].user_error
    assert max(r.done for r in replies if isinstance(r, p.Progress)) < 256
    assert isinstance(client.call(p.Predict("img", POINTS, LABELS, 0.5), timeout=60), p.Decoded)  # still serving


def test_cancel_reaches_a_busy_engine_process(checkpoint):
    client = EngineClient(ProcessTransport(torch_threads=1))
    try:
        client.call(p.LoadModel(checkpoint=str(checkpoint), device="cpu"), timeout=120)
        client.call(p.SetImage("img", make_cells_image()), timeout=120)
        done = threading.Event()
        replies = []

        def on_reply(reply):
            replies.append(reply)
            if isinstance(reply, p.Progress) and reply.done >= 8:
                client.cancel()
            if not isinstance(reply, p.Progress):
                done.set()

        client.submit(p.SegmentAll("img", 0.5, {**FAST, "points_per_side": 16}), on_reply)
        assert done.wait(180)
        assert isinstance(replies[-1], p.Failure) and replies[-1].kind == "Cancelled"
    finally:
        client.close()
