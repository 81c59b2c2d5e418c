"""Synthetic microscopy generator: determinism, hierarchy invariants, granularity, files, CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unsamv2_engine.granularity_scores import sqrt_area_granularity
from unsamv2_engine.io.coco import decode_rle, encode_rle, read_coco
from unsamv2_engine.synth import (
    LEVELS,
    SynthConfig,
    generate_sample,
    iter_dataset,
    load_sample,
    sample_seeds,
    verify_manifest,
    write_dataset,
    write_sample,
)
from unsamv2_engine.synth.annotations import label_rles

# pycocotools' decode warns under numpy 2 (not our code)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SHAPES = {"2": (192, 192), "3": (8, 64, 64), "t": (4, 96, 96)}


@pytest.fixture(scope="module")
def samples():
    return {nd: generate_sample(11, ndim=nd, shape=shape) for nd, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    return write_dataset(root, 2, 5, shape=(128, 128), progress=False, workers=1)


# ----------------------------------------------------------------------------- helpers


def _frames(sample):
    """(frame key, {level: 2D/3D label image}, records) per frame (one entry for 2D / 3D)."""
    if sample.ndim == "t":
        n = sample.labels["cell"].shape[0]
        return [(t, {k: v[t] for k, v in sample.labels.items()}, [o for o in sample.objects if o.frame == t])
                for t in range(n)]
    return [(None, sample.labels, sample.objects)]


def _check_hierarchy(sample):
    min_size = sample.config.min_size_voxels if sample.ndim == "3" else sample.config.min_size_px
    level_of_id: dict[int, int] = {}
    parent_of_id: dict[int, int] = {}
    for o in sample.objects:  # a level and a parent per id, the same in every frame
        assert level_of_id.setdefault(o.id, o.level) == o.level
        assert parent_of_id.setdefault(o.id, o.parent) == o.parent
        assert o.level_name == LEVELS[o.level]
    for _, labels, records in _frames(sample):
        by_id = {o.id: o for o in records}
        seen: set[int] = set()
        for k, level in enumerate(LEVELS):
            lab = labels[level]
            ids = set(np.unique(lab).tolist()) - {0}
            assert not ids & seen, "ids must be unique across levels"
            seen |= ids
            assert ids == {o.id for o in records if o.level == k}, f"table and {level} labels disagree"
            for i in ids:
                rec = by_id[i]
                mask = lab == i
                assert rec.area == int(mask.sum()) >= min_size
                if k == 0:
                    assert rec.parent == 0 and rec.root == i
                    continue
                parent = by_id[rec.parent]  # the parent is present in the same frame
                assert parent.level < k
                if k != 2:  # only cells may skip a level (isolated cell -> tissue)
                    assert parent.level == k - 1
                assert np.all(labels[LEVELS[parent.level]][mask] == parent.id), f"{i} leaks out of {parent.id}"
                assert rec.root == by_id[parent.id].root


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("ndim", ["2", "3", "t"])
def test_hierarchy_invariants(samples, ndim):
    sample = samples[ndim]
    _check_hierarchy(sample)
    levels_present = {o.level for o in sample.objects}
    assert {0, 2, 3, 4} <= levels_present
    for lab in sample.labels.values():
        assert lab.shape == sample.image.shape[: lab.ndim] and lab.dtype in (np.uint16, np.uint32)


def test_time_lapse_ids_are_stable(samples):
    s = samples["t"]
    frames_of: dict[int, set[int]] = {}
    for o in s.objects:
        frames_of.setdefault(o.id, set()).add(o.frame)
    n_frames = s.image.shape[0]
    assert sum(len(f) == n_frames for f in frames_of.values()) > 0.6 * len(frames_of)
    cells = s.labels["cell"]
    moved = [i for i in np.unique(cells[0]) if i and (cells[-1] == i).any()]
    assert moved, "cells persist across frames with the same id"
    assert not np.array_equal(cells[0], cells[-1]), "cells move"


@pytest.mark.parametrize("ndim", ["2", "3", "t"])
def test_granularity_rule(samples, ndim):
    sample = samples[ndim]
    for _, labels, records in _frames(sample):
        area = {}
        for lab in labels.values():
            ids, counts = np.unique(lab, return_counts=True)
            area.update({int(i): int(c) for i, c in zip(ids, counts) if i})
        trees: dict[int, list] = {}
        for o in records:
            trees.setdefault(o.root, []).append(o)
        for root, members in trees.items():
            expected = sqrt_area_granularity([area[o.id] for o in members])
            got = np.array([o.granularity for o in members])
            np.testing.assert_allclose(got, expected, atol=1e-6)
            by_id = {o.id: o for o in members}
            assert by_id[root].granularity == 1.0
            if len(members) > 1:
                assert min(o.granularity for o in members) == pytest.approx(0.1)
            for o in members:
                assert o.granularity_graco == max(0.1, round(area[o.id] / area[root], 1))
        cells = [o for o in records if o.level >= 2]
        assert all(o.granularity_cell is not None for o in cells)
        assert all(o.granularity_cell == 1.0 for o in records if o.level == 2)


def test_same_seed_same_sample_different_seed_different_image():
    a = generate_sample(3, shape=(96, 96))
    b = generate_sample(3, shape=(96, 96))
    c = generate_sample(4, shape=(96, 96))
    assert np.array_equal(a.image, b.image)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in LEVELS)
    assert a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize(("modality", "ndim", "shape", "dtype", "out_shape"), [
    ("fluorescence", "2", (96, 128), np.uint16, (96, 128)),
    ("brightfield", "2", (96, 128), np.uint8, (96, 128)),
    ("he", "2", (96, 128), np.uint8, (96, 128, 3)),
    ("fluorescence", "3", (6, 64, 80), np.uint16, (6, 64, 80)),
    ("brightfield", "t", (3, 64, 80), np.uint8, (3, 64, 80)),
])
def test_modality_dtype_and_shape(modality, ndim, shape, dtype, out_shape):
    s = generate_sample(1, modality=modality, ndim=ndim, shape=shape)
    assert s.image.dtype == dtype and s.image.shape == out_shape
    assert all(v.shape == shape for v in s.labels.values())
    assert s.axes == {"2": "YX", "3": "ZYX", "t": "TYX"}[ndim] + ("S" if modality == "he" else "")


def test_invalid_requests():
    with pytest.raises(ValueError, match="2D only"):
        generate_sample(0, modality="he", ndim="3", shape=(4, 64, 64))
    with pytest.raises(ValueError, match="modality"):
        generate_sample(0, modality="phase")
    with pytest.raises(ValueError, match="shape"):
        generate_sample(0, ndim="3", shape=(64, 64))
    with pytest.raises(ValueError, match="seed"):
        generate_sample(-1)


def test_fluorescence_channels_and_statistics():
    s = generate_sample(2, shape=(192, 192), config=SynthConfig(channels=True))
    assert s.channels.shape == (4, 192, 192) and s.channels.dtype == np.uint16
    img = s.image.astype(float)
    nuc = s.labels["nucleus"] > 0
    nucleolus = s.labels["nucleolus"] > 0
    cyto = (s.labels["cell"] > 0) & ~nuc
    bg = s.labels["tissue"] == 0
    if not bg.any():
        bg = s.labels["cell"] == 0
    assert img[nuc & ~nucleolus].mean() > img[cyto].mean() > img[bg].mean()
    assert img[nucleolus].mean() < img[nuc & ~nucleolus].mean()  # DAPI-dark nucleoli (medium preset)


def test_he_nuclei_are_hematoxylin_dark():
    from skimage.color import rgb2hed

    s = generate_sample(2, modality="he", shape=(192, 192))
    rgb = s.image.astype(float)
    nuc = s.labels["nucleus"] > 0
    cyto = (s.labels["cell"] > 0) & ~nuc
    glass = s.labels["tissue"] == 0
    hed = rgb2hed(s.image)
    assert hed[..., 0][nuc].mean() > hed[..., 0][cyto].mean()
    assert rgb[nuc].mean() < rgb[cyto].mean()
    assert (rgb[..., 2] / (rgb[..., 0] + 1))[nuc].mean() > (rgb[..., 2] / (rgb[..., 0] + 1))[cyto].mean()
    if glass.any():
        assert rgb[glass].mean() > rgb[cyto].mean()


def test_label_rles_match_encode_rle(samples):
    lab = samples["2"].labels["cell"]
    ids, rles, areas, boxes = label_rles(lab)
    assert ids.tolist() == sorted(set(np.unique(lab).tolist()) - {0})
    for i, rle, a in zip(ids, rles, areas):
        assert rle == encode_rle(lab == i)
        assert a == int((lab == i).sum())


# ----------------------------------------------------------------------------- files


def test_dataset_is_byte_reproducible(tmp_path, dataset):
    again = write_dataset(tmp_path / "again", 2, 5, shape=(128, 128), progress=False, workers=1)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel
    parallel = write_dataset(tmp_path / "parallel", 2, 5, shape=(128, 128), progress=False, workers=2)
    assert (parallel / "manifest.json").read_bytes() == (dataset / "manifest.json").read_bytes()
    other = write_dataset(tmp_path / "other", 1, 6, shape=(128, 128), progress=False, workers=1)
    assert (other / "sample_0000" / "image.tif").read_bytes() != (dataset / "sample_0000" / "image.tif").read_bytes()


def test_manifest_hashes_and_contents(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert verify_manifest(dataset) == []
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert [s["seed"] for s in manifest["samples"]] == sample_seeds(5, 2)
    assert manifest["dataset_seed"] == 5 and manifest["generator_version"]
    assert SynthConfig.from_dict(manifest["config"]) == SynthConfig()
    names = {"image.tif", "image_rgb.png", "hierarchy.csv", "coco.json", "sample.json"}
    names |= {f"labels_{level}.tif" for level in LEVELS}
    assert names <= {p.name for p in (dataset / "sample_0000").iterdir()}
    (dataset / "sample_0001" / "hierarchy.csv").write_text("tampered\n")
    assert verify_manifest(dataset) == ["sample_0001/hierarchy.csv"]
    write_dataset(dataset, 2, 5, shape=(128, 128), progress=False, workers=1)  # restore for other tests


def test_load_sample_round_trip(tmp_path, samples):
    for ndim, sample in samples.items():
        folder = write_sample(sample, tmp_path, f"s{ndim}")
        back = load_sample(folder)
        assert np.array_equal(back.image, sample.image) and back.image.dtype == sample.image.dtype
        for level in LEVELS:
            assert np.array_equal(back.labels[level], sample.labels[level])
            assert back.labels[level].dtype == sample.labels[level].dtype
        assert back.objects == sample.objects
        assert (back.seed, back.modality, back.ndim, back.config) == (sample.seed, sample.modality, ndim,
                                                                        sample.config)
        import tifffile

        with tifffile.TiffFile(folder / "image.tif") as tif:
            assert tif.series[0].axes == sample.axes
            assert json.loads(tif.pages[0].description)["pixel_size_um"] == sample.pixel_size_um
    assert (tmp_path / "st" / "tracks.txt").is_file()
    assert not (tmp_path / "s3" / "image_rgb.png").exists()


@pytest.mark.parametrize("ndim", ["2", "3", "t"])
def test_coco_decodes_to_label_images(tmp_path, samples, ndim):
    sample = samples[ndim]
    doc = read_coco(write_sample(sample, tmp_path, "s") / "coco.json")
    key = {"2": None, "3": "z", "t": "frame"}[ndim]
    planes = {img["id"]: img.get(key) for img in doc["images"]}
    rebuilt = {level: np.zeros_like(v) for level, v in sample.labels.items()}
    gran = {(o.frame, o.id): o.granularity for o in sample.objects}
    for ann in doc["annotations"]:
        mask = decode_rle(ann["segmentation"])
        level = LEVELS[ann["level"]]
        plane = planes[ann["image_id"]]
        target = rebuilt[level] if plane is None else rebuilt[level][plane]
        assert not target[mask].any(), "no overlap within a level"
        target[mask] = ann["label"]
        assert ann["area"] == int(mask.sum()) and ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert ann["granularity"] == gran[(plane if ndim == "t" else None, ann["label"])]
        assert {"instance_id", "parent", "level_name", "granularity_graco"} <= set(ann)
    for level in LEVELS:
        assert np.array_equal(rebuilt[level], sample.labels[level]), level


def test_iter_dataset(dataset):
    loaded = list(iter_dataset(dataset))
    assert [s.extra["name"] for s in loaded] == ["sample_0000", "sample_0001"]
    assert loaded[0].image.shape == (128, 128)
    png = dataset / "sample_0000" / "image_rgb.png"
    from PIL import Image

    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (128, 128)


# ----------------------------------------------------------------------------- CLI, imports


def _parser():
    from unsamv2_engine.cli.synth import register

    parser = argparse.ArgumentParser(prog="unsamv2")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return parser


def test_cli_run_writes_dataset(tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["synth", "-o", str(tmp_path / "cli"), "--n", "1", "--seed", "3", "--modality", "he",
                              "--ndim", "2", "--shape", "96,96", "--quiet"])
    assert args.func(args) == 0
    assert "wrote 1 he" in capsys.readouterr().out
    assert verify_manifest(tmp_path / "cli") == []
    assert load_sample(tmp_path / "cli" / "sample_0000").image.shape == (96, 96, 3)
    args = parser.parse_args(["synth", "-o", str(tmp_path / "bad"), "--n", "1", "--seed", "0", "--ndim", "3",
                              "--shape", "64,64"])
    with pytest.raises(ValueError, match="--shape"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "-o", "x", "--n", "0", "--seed", "0"])


def test_engine_synth_does_not_import_torch():
    code = ("import sys; from unsamv2_engine.synth import generate_sample; import unsamv2_engine.cli.synth; "
            "generate_sample(0, shape=(64, 64)); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
