"""Qt-free layer <-> request conversions of the plugin."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unsamv2 import _layers as L


def test_prompt_from_points_2d_swaps_to_xy():
    xy, labels = L.prompt_from_points(np.array([[10.0, 20.0], [30.5, 5.0]]), [L.POSITIVE, L.NEGATIVE], ())
    np.testing.assert_array_equal(xy, [[20.0, 10.0], [5.0, 30.5]])
    np.testing.assert_array_equal(labels, [1, 0])


def test_prompt_from_points_keeps_the_current_plane_only():
    pts = np.array([[2, 10, 20], [3, 11, 21], [2.2, 12, 22]])
    xy, labels = L.prompt_from_points(pts, [L.POSITIVE] * 3, (2,))
    np.testing.assert_array_equal(xy, [[20, 10], [22, 12]])
    assert labels.tolist() == [1, 1]


def test_prompt_from_no_points():
    xy, labels = L.prompt_from_points(np.zeros((0, 2)), [], ())
    assert xy.shape == (0, 2) and labels.shape == (0,)
    with pytest.raises(ValueError, match="polarity"):
        L.prompt_from_points(np.zeros((2, 2)), [L.POSITIVE], ())


def test_planes_and_leading_indices():
    stack = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert L.leading_indices((1, 2, 0, 0), 4, rgb=False) == (1, 2)
    np.testing.assert_array_equal(L.plane_of(stack, (1, 2), rgb=False), stack[1, 2])
    rgb_stack = np.zeros((3, 8, 9, 3))
    assert L.leading_indices((2, 0, 0), 4, rgb=True) == (2,)
    assert L.plane_of(rgb_stack, (2,), rgb=True).shape == (8, 9, 3)
    assert L.leading_indices((0, 0), 2, rgb=False) == ()
    with pytest.raises(ValueError, match="leading indices"):
        L.plane_of(stack, (1,), rgb=False)


def test_plane_indices_write_into_an_nd_label_array():
    labels = np.zeros((3, 4, 5), np.uint32)
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2] = True
    labels[L.plane_indices(mask, (2,))] = 7
    assert labels[2].sum() == 14 and labels[:2].sum() == 0


def test_parent_label():
    plane = np.zeros((10, 10), np.uint32)
    plane[:, :6] = 3
    inside = np.zeros((10, 10), bool)
    inside[2:4, 2:4] = True
    straddling = np.zeros((10, 10), bool)
    straddling[2:4, 4:9] = True  # 2 of 5 columns inside
    assert L.parent_label(plane, inside) == 3
    assert L.parent_label(plane, straddling) == 0
    assert L.parent_label(np.zeros((10, 10), np.uint32), inside) == 0


def test_append_row_adds_columns():
    table = L.append_row({}, {"index": 1, "score": 0.5})
    table = L.append_row(table, {"index": 2, "parent": 1})
    assert table == {"index": [1, 2], "score": [0.5, None], "parent": [None, 1]}


def test_parse_granularity_list():
    assert L.parse_granularity_list("0.2, 0.5,1") == [0.2, 0.5, 1.0]
    assert L.parse_granularity_list("0.1:1.0:10") == [round(0.1 * i, 10) for i in range(1, 11)]
    for bad in ("", "0.1:1", "0.05,0.5", "a,b"):
        with pytest.raises(ValueError):
            L.parse_granularity_list(bad)


def test_image_key_names_layer_and_plane():
    assert L.image_key("cells", 42, (3, 1)) == "cells#42@3,1"
    assert L.image_key("cells", 42, ()) == "cells#42@"
