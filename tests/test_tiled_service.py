"""Large images behind the protocol (issue 15): the engine service's tiled sessions, over the wire too."""

from __future__ import annotations

import numpy as np

from unsamv2_engine import protocol as p
from unsamv2_engine import wire


def cells(h: int = 600, w: int = 700) -> np.ndarray:
    """uint8 ``[h, w]``: bright disks (radius 18 px) holding brighter nuclei, on a dim background."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 20, np.uint8)
    for cy, cx in [(100, 120), (300, 250), (250, 520), (480, 400), (128, 640)]:
        d = np.hypot(yy - cy, xx - cx)
        img[d < 18] = 140
        img[d < 7] = 230
    return img


def test_a_server_refuses_to_read_the_clients_files(tiny_model, tmp_path):
    from unsamv2_engine.service import EngineService

    reply = EngineService(tiny_model, allow_paths=False).handle(
        p.SetImage("k", None, image_path=str(tmp_path / "big.tif")))
    assert isinstance(reply, p.Failure) and reply.user_error and "send the image's pixels" in reply.message


def test_tiled_replies_travel_over_the_wire():
    request = p.SetImage("big@", None, (0.0, 4000.0), False, image_path="/data/big.tif", frame=2, tiled=True,
                         tile_size=1024, overlap=256)
    assert wire.decode(wire.encode(request)) == request
    decoded = p.Decoded(7, "big@", np.ones((3, 4), bool), None, 0.5, 0.3, 0.1, box=(10, 20, 14, 23), step=2,
                        note="n", views_embedded=1)
    back = wire.decode(wire.encode(decoded))
    assert back.box == (10, 20, 14, 23) and back.step == 2 and back.views_embedded == 1
    np.testing.assert_array_equal(back.mask, decoded.mask)


def test_tiled_hierarchy_is_nested_with_ids_unique_across_levels(tiny_model):
    from unsamv2_engine.hierarchy import Hierarchy, check_nesting
    from unsamv2_engine.service import EngineService

    service = EngineService(tiny_model)
    embedded = service.handle(p.SetImage("k", cells(), tiled=True))
    assert embedded.tiled and embedded.tiles == 12 and embedded.tile_size == 256
    progress = []
    reply = service.handle(p.BuildHierarchy("k", [0.3, 1.0], {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                               "stability_score_thresh": 0.0}), progress.append)
    assert isinstance(reply, p.HierarchyBuilt), reply
    assert [m.done for m in progress] == list(range(1, 13)) and reply.tiles_done == reply.tiles_total == 12
    assert len(reply.table) >= 2
    h = Hierarchy(reply.labels, reply.granularities, ["fine", "coarse"], reply.table, {})
    assert check_nesting(h) == []


def test_a_sweep_on_a_tiled_image_says_what_to_do(tiny_model):
    from unsamv2_engine.service import EngineService

    service = EngineService(tiny_model)
    service.handle(p.SetImage("k", cells(), tiled=True))
    reply = service.handle(p.SweepRequest("k", np.array([[120.0, 100.0]]), np.array([1]), [0.2, 0.8]))
    assert isinstance(reply, p.Failure) and "not available on a large (tiled) image" in reply.message
