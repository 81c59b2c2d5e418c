"""Qt-free conversions of the "Propagate through slices" panel: points -> ObjectPrompts, keys, results."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unsamv2 import _layers as L
from unsamv2_engine import protocol as p

POS, NEG = L.POSITIVE, L.NEGATIVE


def test_propagation_axes_and_substack_index():
    assert L.propagation_axes(2, rgb=False) == () and L.propagation_axes(3, rgb=True) == ()
    assert L.propagation_axes(3, rgb=False) == (0,) and L.propagation_axes(4, rgb=True) == (0,)
    assert L.propagation_axes(4, rgb=False) == (0, 1)
    tzyx = np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6)
    np.testing.assert_array_equal(tzyx[L.substack_index((1, 2), axis=0)], tzyx[:, 2])
    np.testing.assert_array_equal(tzyx[L.substack_index((1, 2), axis=1)], tzyx[1])
    rgb_stack = np.zeros((4, 5, 6, 3))
    assert rgb_stack[L.substack_index((2,), 0)].shape == (4, 5, 6, 3)
    with pytest.raises(ValueError, match="leading axis"):
        L.substack_index((1,), axis=1)


def test_object_prompts_group_by_object_and_slice_with_xy_order():
    points = np.array([[1, 10, 20], [1, 12, 22], [3.2, 30, 40], [1, 50, 60], [2.9, 5, 6]])
    prompts = L.object_prompts(points, [POS, NEG, POS, POS, NEG], [1, 1, 1, 2, 1], (1,), 0, 0.6)
    assert [(pr.object_id, pr.frame) for pr in prompts] == [(1, 1), (1, 3), (2, 1)]
    first, second, other = prompts
    np.testing.assert_array_equal(first.points_xy, [[20, 10], [22, 12]])
    assert first.labels.tolist() == [1, 0] and first.points_xy.dtype == np.float32
    np.testing.assert_array_equal(second.points_xy, [[40, 30], [6, 5]])  # 3.2 and 2.9 both round to slice 3
    assert second.labels.tolist() == [1, 0]
    assert other.labels.tolist() == [1] and {pr.granularity for pr in prompts} == {0.6}


def test_object_prompts_take_each_objects_own_granularity():
    points = np.array([[0, 10, 20], [1, 12, 22], [0, 30, 40]])
    prompts = L.object_prompts(points, [POS, POS, POS], [1, 1, 2], (0,), 0, 0.5, per_object={2: 0.9})
    assert [(pr.object_id, pr.frame, pr.granularity) for pr in prompts] == [(1, 0, 0.5), (1, 1, 0.5), (2, 0, 0.9)]


def test_object_prompts_keep_the_substack_of_a_4d_layer():
    # t, z, y, x: propagate along t (axis 0) at z = 2, or along z (axis 1) at t = 1
    points = np.array([[0, 2, 10, 11], [3, 2, 12, 13], [1, 4, 14, 15], [1, 2, 16, 17]])
    along_t = L.object_prompts(points, [POS] * 4, [1] * 4, (1, 2), 0, 0.5)
    assert [pr.frame for pr in along_t] == [0, 1, 3]  # the point at z = 4 is elsewhere
    along_z = L.object_prompts(points, [POS] * 4, [1] * 4, (1, 2), 1, 0.5)
    assert [pr.frame for pr in along_z] == [2, 4]
    np.testing.assert_array_equal(along_z[1].points_xy, [[15, 14]])


@pytest.mark.parametrize("points, polarity, objects, message", [
    (np.zeros((0, 3)), [], [], "no prompts"),
    (np.array([[0, 1, 1]]), [POS], [0], ">= 1"),
    (np.array([[0, 1, 1], [2, 3, 3]]), [POS, NEG], [1, 1], "only negative points on slice 2"),
    (np.array([[0, 1, 1]]), [POS, POS], [1], "polarity"),
])
def test_object_prompts_refuse_what_the_engine_cannot_use(points, polarity, objects, message):
    with pytest.raises(ValueError, match=message):
        L.object_prompts(points, polarity, objects, (0,), 0, 0.5)


def test_points_on_other_positions_only_are_no_prompts():
    with pytest.raises(ValueError, match="no prompts on this stack"):
        L.object_prompts(np.array([[0, 5, 1, 1]]), [POS], [1], (0, 2), 0, 0.5)


def test_stack_key_changes_with_the_data_axis_and_position():
    data = np.zeros((3, 16, 16), np.uint16)
    sig = L.data_signature(data)
    assert sig == L.data_signature(data)
    key = L.stack_key("stack", 7, (1,), 0, sig)
    assert key == "stack#7@*|" + sig
    data[1, 8, 8] = 5  # an edit of a sampled pixel
    assert L.data_signature(data) != sig
    assert L.data_signature(data.copy()) != L.data_signature(data)  # another array
    assert L.stack_key("s", 7, (1, 2), 0, sig) != L.stack_key("s", 7, (1, 3), 0, sig)
    assert L.stack_key("s", 7, (1, 2), 0, sig) != L.stack_key("s", 7, (1, 2), 1, sig)
    big = np.zeros((50, 512, 512), np.uint8)
    assert L.data_signature(big).startswith("50x512x512:|u1:")


def test_write_propagated_keeps_unfinished_slices():
    volume = np.full((2, 3, 4, 5), 9, np.uint32)  # t, z, y, x
    labels = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5)  # the t-substack at z = 1
    L.write_propagated(volume, L.substack_index((0, 1), 0), labels, np.array([True, False]))
    np.testing.assert_array_equal(volume[0, 1], labels[0])
    assert (volume[1, 1] == 9).all() and (volume[:, 0] == 9).all() and (volume[:, 2] == 9).all()
    with pytest.raises(ValueError, match="do not fit"):
        L.write_propagated(volume, L.substack_index((0, 1), 1), labels, np.array([True, True]))


def test_features_and_metadata_of_a_result():
    labels = np.zeros((3, 4, 4), np.uint16)
    labels[0, :2, :2] = 1
    labels[1, :2, :2] = 1
    labels[1, 3, 3] = 4
    scores = np.array([[0.5, np.nan], [0.7, 0.9], [np.nan, np.nan]], np.float32)
    rows = L.propagation_features(labels, [1, 4], scores, {1: 0.3, 4: 0.3}, {1: [0], 4: [1, 2]})
    assert rows["index"] == [1, 4] and rows["granularity"] == [0.3, 0.3]
    assert rows["score"] == pytest.approx([0.6, 0.9]) and rows["slices"] == [2, 1] and rows["area"] == [8, 1]
    assert rows["prompted"] == ["0", "1,2"]
    reply = p.Propagated(5, "k", labels, scores, scores, [1, 4], np.array([True, True, False]), 0, True, 1.5)
    meta = L.propagation_metadata(reply, leading=(2, 1), axis=1, direction="forward", granularity=0.3,
                                  mask_threshold=0.0)
    assert meta["axis"] == 1 and meta["position"] == [2, None] and meta["object_ids"] == [1, 4]
    assert meta["granularities"] == {1: 0.3, 4: 0.3} and meta["frames_done"] == [True, True, False]
    assert meta["cancelled"] and len(meta["scores"]) == 3 and np.isnan(meta["scores"][2][0])


def test_feature_defaults_with_keeps_the_other_columns():
    import pandas as pd

    defaults = pd.DataFrame({L.POLARITY: [POS], L.OBJECT: [3]})
    assert L.feature_defaults_with(defaults, **{L.POLARITY: NEG}) == {L.POLARITY: NEG, L.OBJECT: 3}
