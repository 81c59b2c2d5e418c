"""Tests for unsamv2_engine.io: image reading, label TIFFs, CSV and JSON outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from unsamv2_engine.io import (
    ImageReadError,
    read_image,
    read_labels,
    write_json,
    write_labels,
    write_table_csv,
)

# --------------------------------------------------------------------------- read_image


def test_read_tiff_grey_uint16(tmp_path):
    data = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, data)
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, data)


def test_read_tiff_squeezes_singleton_axes(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    path = tmp_path / "single.tiff"
    tifffile.imwrite(path, data)
    out = read_image(str(path))
    assert out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, data[0])


def test_read_tiff_one_row_stays_2d(tmp_path):
    data = np.arange(6, dtype=np.uint8).reshape(1, 6)
    path = tmp_path / "row.tif"
    tifffile.imwrite(path, data)
    assert read_image(path).shape == (1, 6)


def test_read_tiff_rgb_and_stack(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)

    stack = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), stack)


def test_read_png_rgb_and_grey(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)

    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), grey)


def test_read_png_16bit_stays_uint16(tmp_path):
    data = np.array([[0, 1, 300], [40000, 65535, 7]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, data)


def test_read_png_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = [10, 20, 30]
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])

    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, rgba[..., 0])


def test_read_png_palette_becomes_rgb(tmp_path):
    img = Image.new("P", (3, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 2, 1, 0])
    img.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 255])


def test_read_jpeg_and_bmp(tmp_path):
    rgb = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    out = read_image(tmp_path / "photo.jpg")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 3  # lossy

    Image.fromarray(rgb).save(tmp_path / "img.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "img.bmp"), rgb)


def test_read_unknown_suffix_tries_pil_then_tifffile(tmp_path):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    tifffile.imwrite(tmp_path / "image.tif", data)
    (tmp_path / "image.dat").write_bytes((tmp_path / "image.tif").read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / "image.dat"), data)

    Image.fromarray(data.astype(np.uint8)).save(tmp_path / "image.png")
    (tmp_path / "other").write_bytes((tmp_path / "image.png").read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / "other"), data)


@pytest.mark.parametrize("name", ["broken.tif", "broken.png", "broken.jpg", "broken.xyz"])
def test_corrupt_file_raises_image_read_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match=name) as info:
        read_image(path)
    assert isinstance(info.value, ValueError)


def test_truncated_png_raises_image_read_error(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "full.png")
    raw = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "nope.tif"
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(path)
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_labels(path)


def test_directory_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- labels


def test_labels_round_trip_2d_with_metadata(tmp_path):
    labels = np.zeros((5, 6), dtype=np.int64)
    labels[1:3, 1:4] = 1
    labels[4, 5] = 7
    meta = {
        "granularities": [np.float32(0.25), 0.5],
        "model": "unsamv2-tiny",
        "points": np.array([[1, 2], [3, 4]]),
    }
    path = tmp_path / "nested" / "dir" / "labels.tif"
    write_labels(path, labels, metadata=meta)
    out, read_meta = read_labels(path)
    assert out.dtype == np.uint8 and out.shape == (5, 6)
    np.testing.assert_array_equal(out, labels)
    assert read_meta == {
        "granularities": [0.25, 0.5],
        "model": "unsamv2-tiny",
        "points": [[1, 2], [3, 4]],
    }
    assert not list(path.parent.glob("*.partial"))


def test_labels_round_trip_stack_of_three_pages(tmp_path):
    labels = np.arange(3 * 4 * 3, dtype=np.uint16).reshape(3, 4, 3)
    path = tmp_path / "stack.tiff"
    write_labels(path, labels, metadata={"granularities": [0.1, 0.5, 0.9]})
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert json.loads(tif.pages[0].description) == {"granularities": [0.1, 0.5, 0.9]}
    out, meta = read_labels(path)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    assert meta == {"granularities": [0.1, 0.5, 0.9]}


def test_labels_without_metadata(tmp_path):
    labels = np.eye(4, dtype=np.int32)
    write_labels(tmp_path / "l.tif", labels)
    out, meta = read_labels(tmp_path / "l.tif")
    np.testing.assert_array_equal(out, labels)
    assert meta == {}


def test_read_labels_of_foreign_tiff_gives_empty_metadata(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.ones((2, 2), np.uint8), description="hello")
    out, meta = read_labels(tmp_path / "f.tif")
    assert out.shape == (2, 2) and meta == {}


@pytest.mark.parametrize(
    ("max_label", "dtype"),
    [(0, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16),
     (65536, np.uint32), (70000, np.uint32)],
)
def test_label_dtype_selection(tmp_path, max_label, dtype):
    labels = np.zeros((2, 3), dtype=np.int64)
    labels[1, 2] = max_label
    write_labels(tmp_path / "l.tif", labels)
    out, _ = read_labels(tmp_path / "l.tif")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, labels)


def test_bool_labels_written_as_uint8(tmp_path):
    labels = np.array([[True, False], [False, True]])
    write_labels(tmp_path / "b.tif", labels)
    out, _ = read_labels(tmp_path / "b.tif")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels.astype(np.uint8))


def test_float_labels_raise(tmp_path):
    with pytest.raises(ValueError, match="astype"):
        write_labels(tmp_path / "l.tif", np.ones((2, 2), np.float32))
    assert not (tmp_path / "l.tif").exists()


def test_negative_labels_raise(tmp_path):
    with pytest.raises(ValueError, match="non-negative"):
        write_labels(tmp_path / "l.tif", np.array([[-1, 0]], np.int16))


def test_too_large_labels_raise(tmp_path):
    with pytest.raises(ValueError, match="uint32"):
        write_labels(tmp_path / "l.tif", np.array([[2**32, 0]], np.int64))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2, 2)])
def test_bad_label_shapes_raise(tmp_path, shape):
    with pytest.raises(ValueError, match="shape"):
        write_labels(tmp_path / "l.tif", np.zeros(shape, np.uint8))


@pytest.mark.parametrize("name", ["labels.png", "labels", "labels.tif.gz"])
def test_non_tiff_suffix_refused(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.tif"):
        write_labels(tmp_path / name, np.zeros((2, 2), np.uint8))
    assert not (tmp_path / name).exists()


def test_unserialisable_metadata_raises(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        write_labels(tmp_path / "l.tif", np.zeros((2, 2), np.uint8), metadata={"f": object()})
    with pytest.raises(ValueError, match="dict"):
        write_labels(tmp_path / "l.tif", np.zeros((2, 2), np.uint8), metadata=[1, 2])


def test_read_labels_corrupt_file(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_labels(tmp_path / "bad.tif")


# --------------------------------------------------------------------------- CSV, JSON


def test_write_table_csv_default_columns(tmp_path):
    rows = [
        {"id": np.int64(1), "area": np.float32(2.5), "bbox": np.array([0, 1, 2, 3])},
        {"id": 2, "score": float("nan"), "area": 10},
    ]
    path = tmp_path / "out" / "table.csv"
    write_table_csv(path, rows)
    with path.open(newline="") as handle:
        got = list(csv.DictReader(handle))
    assert list(got[0]) == ["id", "area", "bbox", "score"]
    assert got[0] == {"id": "1", "area": "2.5", "bbox": "[0, 1, 2, 3]", "score": ""}
    assert got[1] == {"id": "2", "area": "10", "bbox": "", "score": ""}


def test_write_table_csv_explicit_columns(tmp_path):
    path = tmp_path / "t.csv"
    write_table_csv(path, [{"a": 1, "b": 2, "c": 3}], columns=["c", "a"])
    assert path.read_text().splitlines() == ["c,a", "3,1"]


def test_write_table_csv_empty(tmp_path):
    write_table_csv(tmp_path / "e.csv", [], columns=["id", "area"])
    assert (tmp_path / "e.csv").read_text().splitlines() == ["id,area"]


def test_write_json_converts_numpy(tmp_path):
    obj = {
        "n": np.int32(3),
        "x": np.float64(0.5),
        "flag": np.bool_(True),
        "arr": np.arange(3, dtype=np.uint8),
        "nested": ({"bad": float("inf")}, tmp_path / "p"),
    }
    path = tmp_path / "sub" / "out.json"
    write_json(path, obj)
    text = path.read_text()
    assert text.endswith("\n") and '\n  "n": 3' in text
    assert json.loads(text) == {
        "n": 3,
        "x": 0.5,
        "flag": True,
        "arr": [0, 1, 2],
        "nested": [{"bad": None}, str(tmp_path / "p")],
    }


def test_write_json_rejects_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "x.json", {"a": object()})
