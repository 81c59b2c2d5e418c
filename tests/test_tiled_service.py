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


def test_a_server_refuses_to_read_the_clients_files(tiny_model_256, tmp_path):
    from unsamv2_engine.service import EngineService

    reply = EngineService(tiny_model_256, allow_paths=False).handle(
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


def test_tiled_hierarchy_is_nested_with_ids_unique_across_levels(tiny_model_256):
    from unsamv2_engine.hierarchy import Hierarchy, check_nesting
    from unsamv2_engine.service import EngineService

    service = EngineService(tiny_model_256)
    # 2 x 2 tiles of 256 px (overlap 64); the cell at (300, 250) lies across the tiles' shared columns
    embedded = service.handle(p.SetImage("k", cells(440, 440), tiled=True))
    assert embedded.tiled and embedded.tiles == 4 and embedded.tile_size == 256
    progress = []
    reply = service.handle(p.BuildHierarchy("k", [0.3, 1.0], {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                               "stability_score_thresh": 0.0}), progress.append)
    assert isinstance(reply, p.HierarchyBuilt), reply
    assert [m.done for m in progress] == list(range(1, 5)) and reply.tiles_done == reply.tiles_total == 4
    assert len(reply.table) >= 2
    h = Hierarchy(reply.labels, reply.granularities, ["fine", "coarse"], reply.table, {})
    assert check_nesting(h) == []


def test_a_sweep_on_a_tiled_image_is_each_levels_click_nested_in_a_box(tiny_model_256):
    """A sweep on a large image: every level is the click decoded at that g on its own view (as a Predict
    would be), the masks and nested labels cover the union of those views only, and it all goes over the wire.
    """
    from unsamv2_engine.hierarchy import Hierarchy, check_nesting
    from unsamv2_engine.service import EngineService
    from unsamv2_engine.tiling.interactive import TiledSession, union_box

    image, gs, point = cells(), [0.2, 0.5, 0.9], np.array([[250.0, 300.0]])
    service = EngineService(tiny_model_256)
    service.handle(p.SetImage("k", image, tiled=True))
    reply = service.handle(p.SweepRequest("k", point, np.array([1]), gs, nest=True))
    assert isinstance(reply, p.SweepDecoded), reply
    reference = TiledSession(tiny_model_256, image).sweep(point, [1], gs)
    assert reply.box == union_box(r.box for r in reference) and reply.steps == [r.step for r in reference]
    x0, y0, x1, y1 = reply.box
    assert reply.masks.shape == reply.labels.shape == (3, y1 - y0, x1 - x0)
    for level, ref in enumerate(reference):
        np.testing.assert_array_equal(reply.masks[level], ref.full_mask(image.shape)[y0:y1, x0:x1])
        assert reply.areas[level] == ref.area
    assert check_nesting(Hierarchy(reply.labels, gs, ["a", "b", "c"], reply.table, {})) == []
    back = wire.decode(wire.encode(reply))
    assert back.box == reply.box and back.steps == reply.steps and back.note == reply.note
    np.testing.assert_array_equal(back.labels, reply.labels)
