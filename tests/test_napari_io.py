"""napari reader, writer and sample data (Qt-free), plus one viewer test under Xvfb."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unsamv2._reader import FEATURE_COLUMNS, METADATA_KEY, get_reader, read_hierarchy_layers
from napari_unsamv2._sample_data import sample_cell, sample_cells, sample_ihc
from napari_unsamv2._writer import layer_data_to_hierarchy, write_hierarchy_layers
from unsamv2_engine.hierarchy import build_hierarchy, check_nesting
from unsamv2_engine.io.hierarchy import read_hierarchy, write_hierarchy

SHAPE = (48, 64)


def disc(cy, cx, r):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return np.hypot(yy - cy, xx - cx) < r


def make_hierarchy():
    return build_hierarchy(
        [[disc(20, 20, 3), disc(30, 42, 3)], [disc(20, 22, 8), disc(30, 42, 7)], [disc(24, 32, 22)]],
        [0.3, 0.6, 0.9],
        scores=[[0.5, 0.25], [0.75, 1.0], [0.125]],
        metadata={"image": "disc test"},
    )


@pytest.fixture(params=[".tif", ".zarr"])
def hierarchy_file(request, tmp_path):
    h = make_hierarchy()
    return h, write_hierarchy(tmp_path / f"h{request.param}", h)


def same_tables(a, b):
    def norm(rows):
        return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]

    return norm(a) == norm(b)


# --------------------------------------------------------------------------- reader


def test_reader_gives_one_labels_layer_per_level(hierarchy_file):
    h, path = hierarchy_file
    reader = get_reader(str(path))
    assert reader is read_hierarchy_layers
    layers = reader(str(path))
    assert len(layers) == 3
    assert [name for _, kw, _ in layers for name in [kw["name"]]] == [
        "hierarchy g=0.30",
        "hierarchy g=0.60",
        "hierarchy g=0.90",
    ]
    for level, (data, kwargs, layer_type) in enumerate(layers):
        assert layer_type == "labels"
        np.testing.assert_array_equal(data, h.labels[level])
        features = kwargs["features"]
        assert tuple(features) == FEATURE_COLUMNS
        # napari maps label value -> features row through the "index" column
        assert features["index"] == sorted(np.unique(data[data > 0]).tolist())
        info = kwargs["metadata"][METADATA_KEY]
        assert info["level"] == level and info["n_levels"] == 3
        assert info["granularity"] == h.granularities[level]
        assert [r["label"] for r in info["table"]] == features["index"]
        assert info["metadata"] == {"image": "disc test"}
    assert layers[0][1]["features"]["parent"] == [3, 4]
    assert layers[1][1]["features"]["score"] == [0.75, 1.0]
    # a list of one path (npe2 may pass lists) works too
    assert get_reader([str(path)]) is read_hierarchy_layers


def test_reader_declines_other_files(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 8, 8), np.uint16), photometric="minisblack")
    image = tmp_path / "image.tiff"
    tifffile.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    other_zarr = tmp_path / "other.zarr"
    other_zarr.mkdir()
    (other_zarr / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    for path in (plain, image, other_zarr, tmp_path / "missing.tif", tmp_path):
        assert get_reader(str(path)) is None
    assert get_reader([str(plain), str(image)]) is None


# --------------------------------------------------------------------------- writer


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_writer_round_trips_reader_layers(hierarchy_file, tmp_path, suffix):
    h, path = hierarchy_file
    layers = read_hierarchy_layers(str(path))
    out = write_hierarchy_layers(str(tmp_path / f"out{suffix}"), list(reversed(layers)))
    assert out == [str(tmp_path / f"out{suffix}")]
    back = read_hierarchy(out[0])  # recorded level order restored despite the reversed input
    np.testing.assert_array_equal(back.labels, h.labels)
    assert back.granularities == h.granularities and back.level_names == h.level_names
    assert same_tables(back.table, h.table)
    assert back.metadata == h.metadata
    assert len(read_hierarchy_layers(out[0])) == 3


def test_writer_without_metadata_recomputes_parents(tmp_path):
    fine = np.zeros(SHAPE, np.int32)
    fine[disc(20, 20, 4)] = 1
    fine[disc(30, 42, 4)] = 2
    coarse = np.zeros(SHAPE, np.uint8)
    coarse[disc(24, 32, 22)] = 1  # id 1 collides with the fine level: relabelled
    layers = [
        (fine, {"name": "nuclei g=0.4"}, "labels"),
        (coarse, {"name": "cells g=0.9 [1]"}, "labels"),
    ]
    h = layer_data_to_hierarchy(layers)
    assert h.granularities == [0.4, 0.9]
    assert h.level_names == ["nuclei g=0.4", "cells g=0.9"]
    assert h.parents == {1: 3, 2: 3, 3: 0}
    assert check_nesting(h) == []
    out = write_hierarchy_layers(str(tmp_path / "noext"), layers)
    assert out == [str(tmp_path / "noext.tif")]
    assert get_reader(out[0]) is read_hierarchy_layers


def test_writer_keeps_edited_layers_consistent(hierarchy_file, tmp_path):
    h, path = hierarchy_file
    layers = read_hierarchy_layers(str(path))
    data = layers[0][0].copy()
    data[data == 1] = 0  # object 1 erased by hand
    data[40:44, 5:9] = 50  # a new object, outside every coarser object
    layers[0] = (data, layers[0][1], "labels")
    back = layer_data_to_hierarchy(layers)
    assert 1 not in back.parents and back.parents[2] == 4 and back.parents[50] == 0
    assert next(r for r in back.table if r["label"] == 50)["area"] == 16
    with pytest.raises(ValueError, match="Labels layers only"):
        layer_data_to_hierarchy([(data, {}, "image")])


# --------------------------------------------------------------------------- sample data


def test_scikit_image_samples():
    (ihc, kw, kind), = sample_ihc()
    assert kind == "image" and kw["name"] == "immunohistochemistry" and kw["rgb"]
    assert ihc.shape == (512, 512, 3) and ihc.dtype == np.uint8
    (cell, kw, kind), = sample_cell()
    assert kind == "image" and kw["name"] == "cell"
    assert cell.shape == (660, 550) and cell.dtype == np.uint8


def test_synthetic_cells_sample():
    (image, kw, kind), = sample_cells()
    assert kind == "image" and kw["name"] == "synthetic cells"
    assert image.shape[:2] == (512, 512)


def test_io_modules_do_not_import_torch():
    code = (
        "import sys, napari_unsamv2._reader, napari_unsamv2._writer, napari_unsamv2._sample_data; "
        "assert 'torch' not in sys.modules and 'sam2' not in sys.modules and 'napari' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- viewer


@pytest.mark.gui
def test_viewer_opens_a_hierarchy_with_the_plugin(make_napari_viewer, tmp_path):
    h = make_hierarchy()
    path = write_hierarchy(tmp_path / "h.zarr", h)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-unsamv2")
    assert [layer.name for layer in layers] == ["hierarchy g=0.30", "hierarchy g=0.60", "hierarchy g=0.90"]
    assert all(layer._type_string == "labels" for layer in layers)
    fine = layers[0]
    np.testing.assert_array_equal(fine.data, h.labels[0])
    assert list(fine.features["index"]) == [1, 2] and list(fine.features["parent"]) == [3, 4]
    assert fine.metadata[METADATA_KEY]["granularity"] == 0.3
    # the layers written back through the plugin's writer give the same hierarchy
    out = viewer.layers.save(str(tmp_path / "saved.tif"), selected=False, plugin="napari-unsamv2")
    assert out == [str(tmp_path / "saved.tif")]
    back = read_hierarchy(out[0])
    np.testing.assert_array_equal(back.labels, h.labels)
    assert back.parents == h.parents
