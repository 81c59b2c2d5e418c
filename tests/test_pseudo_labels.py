"""The divide-and-conquer pseudo-label pipeline and ``unsamv2 pseudo-label`` (docs/model-reference.md §5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import make_cells_image
from unsamv2_engine.granularity_scores import sqrt_area_granularity
from unsamv2_engine.io.coco import decode_rle
from unsamv2_engine.pseudo.backbones import ClassicalBackbone, Sam2Backbone, make_backbone
from unsamv2_engine.pseudo.divide import maskcut, normalized_cut, split_instances
from unsamv2_engine.pseudo.pipeline import PseudoLabelSettings, image_id_for, pseudo_label_folder, pseudo_label_image

SYNTH_SEEDS = (0, 1, 2)
SYNTH_SHAPE = (256, 256)
#: Recall at IoU >= 0.5 of the generator's true masks, classical backbone, default (pixel) settings, seeds 0-2
#: at 256 x 256 (measured: cluster 1.00, cell 0.95, nucleus 0.78, nucleolus 0.00, tissue 0.00; the patch-grid
#: pipeline had 0.58, 0.33, 0.84, 0.06; see docs/pseudo-labels.md). Floors a bit below; tissue and nucleolus
#: are not recovered at this size (no floor).
RECALL_FLOORS = {"cluster": 0.9, "cell": 0.85, "nucleus": 0.7}


# ============================================================================ fixtures
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Three synthetic fluorescence samples written as 16-bit TIFFs, pseudo-labelled with the classical backbone."""
    from unsamv2_engine.synth import generate_sample

    root = tmp_path_factory.mktemp("pseudo_synth")
    images, out = root / "images", root / "labels"
    images.mkdir()
    samples = {}
    for seed in SYNTH_SEEDS:
        sample = generate_sample(seed, shape=SYNTH_SHAPE)
        assert sample.image.dtype == np.uint16
        tifffile.imwrite(images / f"synth_{seed}.tif", sample.image)
        samples[f"synth_{seed}"] = sample
    start = time.perf_counter()
    summary = pseudo_label_folder(images, out)
    seconds = time.perf_counter() - start
    return samples, out, summary, seconds


def _documents(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def _recall(samples, documents) -> dict[str, tuple[int, int]]:
    """Per level: (true masks matched at IoU >= 0.5 by some pseudo-label, true masks)."""
    from unsamv2_engine.evaluate.metrics import best_iou_per_truth

    counts: dict[str, list[int]] = {}
    for stem, sample in samples.items():
        proposals = [decode_rle(a["segmentation"]) for a in documents[stem]["annotations"]]
        for level, labels in sample.labels.items():
            truths = [labels == object_id for object_id in np.unique(labels[labels > 0])]
            best = best_iou_per_truth(proposals, truths)
            hit_total = counts.setdefault(level, [0, 0])
            hit_total[0] += int(np.sum(best >= 0.5))
            hit_total[1] += len(truths)
    return {level: (h, t) for level, (h, t) in counts.items()}


# ============================================================================ synthetic nested structure
@pytest.mark.slow
def test_classical_pipeline_recovers_nested_structure(synthetic_run):
    samples, out, summary, seconds = synthetic_run
    assert sorted(summary.done) == [f"synth_{s}.tif" for s in SYNTH_SEEDS] and not summary.failed
    recall = _recall(samples, _documents(out))
    table = ", ".join(f"{level} {h}/{t} = {h / t:.2f}" for level, (h, t) in recall.items())
    print(f"\nrecall@IoU0.5 (classical, {len(samples)} images, {seconds:.1f} s): {table}")
    for level, floor in RECALL_FLOORS.items():
        hits, total = recall[level]
        assert hits / total >= floor, f"{level}: recall {hits}/{total} below {floor} ({table})"


@pytest.mark.slow
def test_parts_nest_in_their_instance_and_granularity_follows_sqrt_area_rule(synthetic_run):
    _, out, _, _ = synthetic_run
    for stem, doc in _documents(out).items():
        anns = doc["annotations"]
        by_instance: dict[int, list[dict]] = {}
        for ann in anns:
            by_instance.setdefault(ann["instance_id"], []).append(ann)
        assert sorted(by_instance) == list(range(len(by_instance))) and by_instance, stem
        order = [a["instance_id"] for a in anns]
        assert order == sorted(order), "annotations are grouped by instance"
        for members in by_instance.values():
            *parts, instance = members  # parts of an instance, then the instance
            assert instance["is_divide"] and not instance["is_part"] and instance["granularity"] == 1.0
            assert all(p["is_part"] and not p["is_divide"] for p in parts)
            inst_mask = decode_rle(instance["segmentation"])
            masks = [decode_rle(p["segmentation"]) for p in parts]
            for mask in masks:
                assert (mask & inst_mask).sum() / mask.sum() > 0.8  # conquer > 0.9, divide parts > 0.8
            areas = [int(m.sum()) for m in masks] + [int(inst_mask.sum())]
            assert areas == [a["area"] for a in members]
            stored = np.array([a["granularity"] for a in members])
            np.testing.assert_allclose(stored, sqrt_area_granularity(areas), rtol=0, atol=1e-12)
            if parts:
                assert stored[int(np.argmin(areas))] == pytest.approx(0.1)
                by_area = stored[np.argsort(areas, kind="stable")]
                assert np.all(np.diff(by_area) >= -1e-12), "granularity grows with area"


@pytest.mark.slow
def test_json_matches_the_authors_format(synthetic_run):
    samples, out, _, _ = synthetic_run
    doc = json.loads((out / "synth_0.json").read_text())
    assert set(doc) == {"info", "licenses", "categories", "image", "annotations"}
    assert doc["categories"][0]["id"] == 1 and doc["categories"][0]["name"] == "fg"
    assert doc["info"]["backbone"] == "classical" and "CascadePSP" in doc["info"]["refinement"]
    assert doc["info"]["source_dtype"] == "uint16"
    image = doc["image"]
    assert image == {"id": image_id_for("synth_0.tif"), "file_name": "synth_0.tif", "width": 256, "height": 256}
    types = {"id": int, "image_id": int, "category_id": int, "iscrowd": int, "area": int, "bbox": list,
             "segmentation": dict, "width": int, "height": int, "is_divide": bool, "granularity": float,
             "instance_id": int, "is_part": bool, "is_conquer": bool}
    ids = [a["id"] for a in doc["annotations"]]
    assert len(set(ids)) == len(ids)
    for ann in doc["annotations"]:
        for key, kind in types.items():
            assert isinstance(ann[key], kind), (key, ann[key])
        assert ann["image_id"] == image["id"] and ann["category_id"] == 1 and ann["iscrowd"] == 0
        assert (ann["width"], ann["height"]) == (256, 256) and ann["segmentation"]["size"] == [256, 256]
        assert isinstance(ann["segmentation"]["counts"], str)
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode("ascii")}
        mask = mask_utils.decode(rle).astype(bool)  # pycocotools round trip
        assert int(mask.sum()) == ann["area"] > 0
        np.testing.assert_allclose(mask_utils.toBbox(rle), ann["bbox"])
        assert ann["is_part"] != ann["is_divide"]
        assert not (ann["is_conquer"] and ann["is_divide"])
        assert 0.1 - 1e-9 <= ann["granularity"] <= 1.0
    overlay = np.asarray(Image.open(out / "overlays" / "synth_0.png"))
    assert overlay.shape == (256, 256, 3)


# ============================================================================ building blocks
def test_classical_backbone_is_deterministic_and_normalised():
    """Shape, determinism and zero-mean channels (its speed is measured in benchmarks/bench_pseudo_labels.py)."""
    rng = np.random.default_rng(0)
    image = (rng.random((512, 480, 3)) * 255).astype(np.uint8)
    backbone = ClassicalBackbone()
    first = backbone.features(image)
    assert first.shape == (32, 30, 3 + 4 * len(backbone.scales)) and first.dtype == np.float32
    np.testing.assert_array_equal(first, backbone.features(image))
    np.testing.assert_allclose(first.reshape(-1, first.shape[-1]).mean(0), 0, atol=1e-4)


def test_normalized_cut_separates_two_regions_exactly():
    rng = np.random.default_rng(1)
    feats = np.zeros((12, 16, 8))
    inside = np.zeros((12, 16), bool)
    inside[3:9, 4:11] = True
    feats[inside] = [1, 0.2, 0, 0, 0, 0, 0, 0]
    feats[~inside] = [0, 0, 1, 0.3, 0, 0, 0, 0]
    feats += rng.normal(0, 0.05, feats.shape)
    eigvec, side = normalized_cut(feats)
    assert np.array_equal(side, inside) or np.array_equal(side, ~inside)
    assert np.isfinite(eigvec).all()
    instances = maskcut(feats, n_instances=3)
    assert len(instances) >= 1 and np.array_equal(instances[0], inside)  # the object, not the border side


def test_maskcut_finds_several_instances():
    feats = np.zeros((20, 20, 4))
    feats[...] = [0, 0, 1, 0]
    squares = [(slice(2, 7), slice(2, 7)), (slice(11, 17), slice(12, 18))]
    feats[squares[0]] = [1, 0, 0, 0]
    feats[squares[1]] = [0, 1, 0, 0.2]
    found = maskcut(feats, n_instances=5)
    truth = []
    for sl in squares:
        m = np.zeros((20, 20), bool)
        m[sl] = True
        truth.append(m)
    assert len(found) == 2
    assert all(any(np.array_equal(f, t) for f in found) for t in truth)


def test_split_instances_applies_the_divide_rules():
    big = np.zeros((100, 100), bool)
    big[10:60, 10:60] = True  # 25 % of the image
    inner = np.zeros_like(big)
    inner[20:30, 20:30] = True  # inside big
    small_alone = np.zeros_like(big)
    small_alone[80:90, 80:90] = True  # 1 %: too small to be an instance
    duplicate = big.copy()
    duplicate[10, 10] = False  # the same object found twice
    instances = split_instances([big, inner, small_alone, duplicate], sources=["maskcut", "maskcut", "model", "model"])
    assert len(instances) == 1
    assert np.array_equal(instances[0].mask, big) and instances[0].source == "maskcut"
    assert len(instances[0].parts) == 1 and np.array_equal(instances[0].parts[0], inner)
    assert split_instances([big, inner], min_instance_fraction=0.3) == []


def test_make_backbone_errors():
    assert make_backbone(None).name == "classical"
    with pytest.raises(ValueError, match="--dino-weights"):
        make_backbone("dino")
    with pytest.raises(ValueError, match="checkpoint"):
        make_backbone("sam2")
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("resnet")
    with pytest.raises(ValueError, match="thetas"):
        PseudoLabelSettings(thetas=())
    with pytest.raises(ValueError, match="thetas"):
        PseudoLabelSettings().with_(thetas=[2.0])
    with pytest.raises(ValueError, match="max_side"):
        PseudoLabelSettings(max_side=8)


@pytest.mark.slow
def test_sam2_backbone_and_pipeline_with_a_model(tiny_model):
    backbone = make_backbone(None, model=tiny_model)
    assert isinstance(backbone, Sam2Backbone) and backbone.patch_size == 16
    image = make_cells_image()  # 96 x 128, long side resized to the model input, in cells of 16 px
    feats = backbone.features(image)
    cols = tiny_model.image_size // 16
    assert feats.shape == (cols * 3 // 4, cols, 256) and feats.dtype == np.float32 and np.isfinite(feats).all()
    settings = PseudoLabelSettings(local_size=256, max_instances=2, model_points_per_side=4)
    anns = pseudo_label_image(image, backbone, model=tiny_model, settings=settings, image_id=7)
    assert isinstance(anns, list)
    for ann in anns:  # random weights: arbitrary masks, check structure only
        assert ann["image_id"] == 7 and ann["segmentation"]["size"] == [96, 128]
        assert 0.1 - 1e-9 <= ann["granularity"] <= 1.0 and ann["is_part"] != ann["is_divide"]
    assert sum(a["is_divide"] for a in anns) == len({a["instance_id"] for a in anns})


# ============================================================================ folder runs
def _cells_folder(root: Path, n: int = 2) -> Path:
    images = root / "images"
    images.mkdir()
    base = make_cells_image()
    for k in range(n):
        Image.fromarray(np.roll(base, 9 * k, axis=1)).save(images / f"cells_{k}.png")
    return images


def test_folder_run_is_resumable_and_records_bad_images(tmp_path):
    images = _cells_folder(tmp_path)
    (images / "broken.png").write_bytes(b"this is not a PNG")
    tifffile.imwrite(images / "stack.tif", np.zeros((3, 40, 40), np.uint16))
    (images / "notes.txt").write_text("ignored")
    out = tmp_path / "labels"
    seen = []
    summary = pseudo_label_folder(images, out, progress=lambda done, total, name: seen.append((done, total, name)))
    assert sorted(summary.done) == ["cells_0.png", "cells_1.png"] and summary.skipped == []
    assert set(summary.failed) == {"broken.png", "stack.tif"}
    assert "broken.png" in summary.failed["broken.png"] and "stack" in summary.failed["stack.tif"]
    assert [s[:2] for s in seen] == [(i, 4) for i in range(1, 5)]
    assert summary.n_masks == sum(len(json.loads((out / f"cells_{k}.json").read_text())["annotations"])
                                  for k in range(2))
    assert (out / "overlays" / "cells_0.png").is_file()
    assert not list(out.glob(".*tmp"))  # no temporary files left
    stamps = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    again = pseudo_label_folder(images, out)
    assert again.done == [] and sorted(again.skipped) == ["cells_0.png", "cells_1.png"]
    assert set(again.failed) == {"broken.png", "stack.tif"}
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_max_side_gives_masks_at_full_resolution(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    big = np.asarray(Image.fromarray(make_cells_image()).resize((384, 288), Image.Resampling.BILINEAR))
    Image.fromarray(big).save(images / "big.png")
    out = tmp_path / "labels"
    summary = pseudo_label_folder(images, out, settings=PseudoLabelSettings(max_side=96), overlays=False)
    assert summary.done == ["big.png"] and not (out / "overlays").exists()
    doc = json.loads((out / "big.json").read_text())
    assert doc["image"]["width"] == 384 and doc["image"]["height"] == 288 and doc["annotations"]
    for ann in doc["annotations"]:
        mask = decode_rle(ann["segmentation"])
        assert mask.shape == (288, 384) and mask.sum() == ann["area"]


def test_cancel_stops_between_images(tmp_path):
    images = _cells_folder(tmp_path, n=3)
    cancel = threading.Event()
    summary = pseudo_label_folder(images, tmp_path / "labels", overlays=False, cancel=cancel,
                                  progress=lambda done, total, name: cancel.set())
    assert summary.cancelled and summary.done == ["cells_0.png"]
    assert [p.name for p in (tmp_path / "labels").glob("*.json")] == ["cells_0.json"]


# ============================================================================ command line
def test_cli_end_to_end_and_errors(tmp_path, capsys):
    from unsamv2_engine.cli import main

    images = _cells_folder(tmp_path, n=1)
    out = tmp_path / "labels"
    assert main(["pseudo-label", str(images), "-o", str(out), "-q", "--max-instances", "4",
                 "--thetas", "0.9,0.7,0.5", "--nucleoli", "auto"]) == 0
    assert (out / "cells_0.json").is_file() and (out / "overlays" / "cells_0.png").is_file()
    doc = json.loads((out / "cells_0.json").read_text())
    assert doc["info"]["settings"]["thetas"] == [0.9, 0.7, 0.5] and doc["info"]["settings"]["max_instances"] == 4
    assert doc["info"]["settings"]["nucleoli"] == "auto"
    assert "wrote 1 pseudo-label file" in capsys.readouterr().out

    assert main(["pseudo-label", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["pseudo-label", str(images), "-o", str(out), "--backbone", "sam2"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    assert main(["pseudo-label", str(bad), "-o", str(tmp_path / "bad_out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "every image failed" in err
    assert main(["pseudo-label", str(images), "-o", str(out), "--thetas", "0.9,x"]) == 2


def test_cli_help_does_not_import_torch():
    code = ("import sys, contextlib, io\nfrom unsamv2_engine.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['pseudo-label', '--help']) == 0\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
