"""COCO RLE round trips and the sqrt-area granularity rule (docs/model-reference.md §5.4), on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from unsamv2_engine.granularity_scores import sqrt_area_granularity
from unsamv2_engine.io.coco import coco_document, decode_rle, encode_rle, mask_to_annotation, read_coco, write_coco


def test_sqrt_area_rule_hand_computed():
    # areas 4, 16, 100: sqrt 2, 4, 10 -> 0.1, 0.1 + 0.9 * 2/8, 1.0
    g = sqrt_area_granularity([16, 100, 4])
    np.testing.assert_allclose(g, [0.1 + 0.9 * 2 / 8, 1.0, 0.1], atol=1e-9)


def test_sqrt_area_rule_edge_cases():
    assert sqrt_area_granularity([50]).tolist() == [1.0]          # an instance with no parts
    assert sqrt_area_granularity([7, 7, 7]).tolist() == [1.0, 1.0, 1.0]
    assert sqrt_area_granularity([]).size == 0
    g = sqrt_area_granularity([0, 9, 36])
    r = np.sqrt(np.array([0, 9, 36]) + 1e-10)  # the rule adds 1e-10 inside each sqrt
    assert g[0] == 0.1 and g[2] == 1.0 and g[1] == pytest.approx(0.1 + 0.9 * (r[1] - r[0]) / (r[2] - r[0]), abs=1e-12)
    with pytest.raises(ValueError):
        sqrt_area_granularity(np.ones((2, 2)))


def test_rle_round_trip_and_annotation(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    box = np.zeros((10, 20), bool)
    box[2:5, 3:9] = True
    ann = mask_to_annotation(box, ann_id=7, image_id=3, granularity=0.4)
    assert ann["area"] == 18 and ann["bbox"] == [3.0, 2.0, 6.0, 3.0] and ann["granularity"] == 0.4
    doc = coco_document([{"id": 3, "width": 20, "height": 10, "file_name": "x.tif"}], [ann])
    back = read_coco(write_coco(tmp_path / "a.json", doc))
    np.testing.assert_array_equal(decode_rle(back["annotations"][0]["segmentation"]), box)


def test_uncompressed_rle_is_accepted():
    mask = np.zeros((4, 3), bool)
    mask[1:3, 1] = True
    # column-major runs: 5 zeros, 2 ones, 5 zeros
    np.testing.assert_array_equal(decode_rle({"size": [4, 3], "counts": [5, 2, 5]}), mask)


def test_single_image_dict_layout_is_read(tmp_path):
    path = tmp_path / "sa_1.json"
    path.write_text('{"image": {"id": 1, "width": 4, "height": 4}, "annotations": []}')
    assert read_coco(path)["images"][0]["id"] == 1
