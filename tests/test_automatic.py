"""Whole-image segmentation: box NMS against torchvision, the segmenter against upstream AMG, hierarchies, CLI.

Models are hiera-tiny with random weights. At 256 px their logits lie in about [-0.2, 0.3], so the UnSAMv2
runs use ``mask_threshold=0.2`` with a small stability offset (masks of varied sizes) and zero
quality thresholds (random weights would fail the authors' filters). The CLI tests run the real
command: each call loads the checkpoint file and embeds the image itself. Two tests go further: the
upstream comparison hands sam2's predictor our embedding, and the crop-layer test reuses the full
image's embedding for its crops (see their docstrings).
Runtime: about 40 s on 2 cores.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.utils.amg import batched_mask_to_box, generate_crop_boxes

from tests.conftest import make_cells_image
from unsamv2_engine.automatic import AutoMasks, AutomaticSegmenter, AutoSettings, Cancelled
from unsamv2_engine.automatic.cleanup import remove_small_regions, remove_small_regions_all
from unsamv2_engine.automatic.hierarchy import hierarchy_to_coco, levels_to_hierarchy, masks_to_coco
from unsamv2_engine.cli import build_parser, main
from unsamv2_engine.hierarchy import TABLE_COLUMNS, check_nesting
from unsamv2_engine.io import read_labels
from unsamv2_engine.io.coco import decode_rle
from unsamv2_engine.io.hierarchy import read_hierarchy
from unsamv2_engine.nms import greedy_nms
from unsamv2_engine.session import ImageSession

REPO = Path(__file__).resolve().parents[1]
GRANULARITIES = [0.3, 0.6, 1.0]
# Small grid, no quality filters, a mask threshold inside the random model's logit range.
# Decoder calls cost about the same for 1 or 16 points on a CPU: batches of 16 keep them few.
SMALL = AutoSettings(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                     stability_score_offset=0.05, mask_threshold=0.2, use_m2m=False)
SMALL_ARGS = ["--points-per-side", 4, "--points-per-batch", 16, "--pred-iou-thresh", 0, "--stability-thresh", 0,
              "--stability-offset", 0.05, "--mask-threshold", 0.2, "--device", "cpu"]


# ============================================================================ shared work
def _segmenter(model, settings: AutoSettings) -> AutomaticSegmenter:
    return AutomaticSegmenter(model, settings, decode_batch=settings.points_per_batch)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny UnSAMv2 checkpoint file, the cells image as PNG and a uniform image."""
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("auto")
    model = build_model("tiny", seed=0, image_size=256)
    paths = {"ckpt": save_checkpoint(model, folder / "unsamv2_tiny.pt", kind="unsamv2"),
             "cells": folder / "cells.png", "flat": folder / "flat.png"}
    Image.fromarray(make_cells_image()).save(paths["cells"])
    Image.fromarray(np.full((40, 50), 90, np.uint8)).save(paths["flat"])
    return paths


@pytest.fixture(scope="module")
def model(files):
    """The checkpoint file loaded as the CLI loads it."""
    from unsamv2_engine.model.checkpoint import load_checkpoint

    return load_checkpoint(files["ckpt"], source=str(files["ckpt"]))


@pytest.fixture(scope="module")
def levels(model) -> list[AutoMasks]:
    """The cells image at 0.3, 0.6 and 1.0 (one embedding for the three levels)."""
    return _segmenter(model, SMALL).generate_levels(make_cells_image(), GRANULARITIES)


@pytest.fixture(scope="module")
def hierarchy(levels):
    return levels_to_hierarchy(levels)


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ============================================================================ box NMS vs torchvision
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_greedy_nms_matches_torchvision(threshold):
    """The one box NMS of the engine (per crop and across crops) keeps what torchvision keeps."""
    from unsamv2_engine.upstream import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    gen = torch.Generator().manual_seed(int(threshold * 10))
    xy = torch.rand(80, 2, generator=gen) * 100
    wh = torch.rand(80, 2, generator=gen) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1).round()  # integer corners: many equal IoUs
    boxes[40:50] = boxes[:10]  # duplicate boxes
    scores = (torch.rand(80, generator=gen) * 8).round() / 8  # many tied scores
    assert greedy_nms(boxes, scores, threshold).tolist() == torchvision.ops.nms(boxes, scores, threshold).tolist()
    expected = torchvision.ops.nms(boxes, scores, threshold).tolist()
    assert greedy_nms(boxes.long(), scores, threshold).tolist() == expected
    assert greedy_nms(torch.zeros(0, 4), torch.zeros(0), threshold).numel() == 0


# ============================================================================ equivalence with upstream AMG
def test_segmenter_equals_upstream_amg_on_sam21():
    """Plain SAM 2.1 (3 candidates per point), same settings: the same masks and scores as sam2's AMG."""
    from unsamv2_engine.model import build_model
    from unsamv2_engine.upstream import ensure_torchvision_importable

    ensure_torchvision_importable()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    sam21 = build_model("tiny", granularity=False, seed=0, image_size=256)
    image = make_cells_image()
    common = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  stability_score_offset=1.0, mask_threshold=0.0, box_nms_thresh=1.0, use_m2m=False)
    ours = _segmenter(sam21, AutoSettings(**common)).generate(image, None)
    # Upstream decodes from the same embedding (its image predictor's set_image is replaced by the
    # features computed above); the encoders are compared in test_upstream_equivalence.py.
    session = ImageSession(sam21)
    session.set_image(image)  # the same embedding as the run above (a deterministic encoder)

    def set_image(predictor, img):
        predictor.reset_predictor()
        predictor._orig_hw = [img.shape[:2]]
        predictor._features = {"image_embed": session.features.image_embed,
                               "high_res_feats": list(session.features.high_res)}
        predictor._is_image_set = True

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAM2ImagePredictor, "set_image", set_image)
        upstream = SAM2AutomaticMaskGenerator(sam21.sam, **common).generate(image)

    assert len(ours) == len(upstream) == 8 * 8 * 3
    np.testing.assert_allclose(np.sort(ours.scores), np.sort([a["predicted_iou"] for a in upstream]), atol=1e-5)
    np.testing.assert_allclose(np.sort(ours.stability), np.sort([a["stability_score"] for a in upstream]), atol=1e-5)
    theirs = np.stack([a["segmentation"] for a in upstream])
    flat_ours = ours.masks.reshape(len(ours), -1).astype(np.float32)
    flat_theirs = theirs.reshape(len(theirs), -1).astype(np.float32)
    inter = flat_ours @ flat_theirs.T
    union = flat_ours.sum(1)[:, None] + flat_theirs.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    best = iou.max(axis=1)
    assert best.min() > 0.999
    assert np.mean(best == 1.0) >= 0.9  # exact for most
    # the grid points that produced the masks are the same points
    ours_pts = sorted(map(tuple, np.round(ours.points, 3)))
    theirs_pts = sorted(tuple(np.round(a["point_coords"][0], 3)) for a in upstream)
    assert ours_pts == theirs_pts


# ============================================================================ results on the UnSAMv2 model
def test_auto_masks_shapes_and_label_image(levels):
    h, w = make_cells_image().shape[:2]
    for result, g in zip(levels, GRANULARITIES):
        n = len(result)
        assert n > 1 and result.granularity == g
        assert result.masks.dtype == bool and result.masks.shape == (n, h, w)
        assert result.scores.shape == result.stability.shape == (n,) and result.points.shape == (n, 2)
        assert np.all(np.diff(result.scores) <= 0)  # by decreasing score
        assert np.array_equal(result.boxes, batched_mask_to_box(torch.from_numpy(result.masks)).numpy())
        assert np.all((result.points >= 0) & (result.points <= [w, h]))
        labels = result.label_image()
        assert labels.shape == (h, w) and np.issubdtype(labels.dtype, np.unsignedinteger)
        assert set(np.unique(labels).tolist()) <= set(range(n + 1))
        covered = result.masks.any(axis=0)
        assert np.array_equal(labels > 0, covered)
        for i in range(n):  # label i+1 only where mask i is
            assert not np.any((labels == i + 1) & ~result.masks[i])


def test_hierarchy_nesting_and_table(hierarchy, levels):
    h = hierarchy
    assert check_nesting(h) == []
    assert h.labels.shape == (3, 96, 128) and h.granularities == GRANULARITIES
    assert len(h.table) > 3
    labels_per_level = [set(np.unique(h.labels[i]).tolist()) - {0} for i in range(3)]
    assert not (labels_per_level[0] & labels_per_level[1]) and not (labels_per_level[1] & labels_per_level[2])
    rows = {row["label"]: row for row in h.table}
    for row in h.table:
        assert set(TABLE_COLUMNS) <= set(row)
        assert row["granularity"] == GRANULARITIES[row["level"]]
        pixels = h.labels[row["level"]] == row["label"]
        assert row["area"] == int(pixels.sum()) > 0
        if row["parent"]:
            parent = rows[row["parent"]]
            assert parent["level"] == row["level"] + 1  # the next coarser level
            assert np.all(h.labels[parent["level"]][pixels] == parent["label"])  # inside its parent
        if row["level"] == 2:
            assert row["parent"] == 0
    # every object comes from a mask of its level, with that mask's score
    for row in h.table:
        scores = levels[row["level"]].scores
        assert np.isclose(scores, row["score"]).any()


def test_hierarchy_parents_by_containment_then_clipping():
    """Parent = the next coarser object covering >= 0.5 of the child, then the child is clipped to it."""
    hw = (20, 20)
    coarse = np.zeros(hw, bool)
    coarse[:, :10] = True  # left half
    a = np.zeros(hw, bool)
    a[2:6, 2:6] = True  # inside
    b = np.zeros(hw, bool)
    b[10:15, 6:16] = True  # 40% inside: no parent, kept whole
    c = np.zeros(hw, bool)
    c[16:20, 4:14] = True  # 60% inside: parent, clipped

    def auto(g, masks):
        masks = np.stack(masks)
        return AutoMasks(g, masks, np.linspace(0.9, 0.8, len(masks)), np.ones(len(masks)),
                         batched_mask_to_box(torch.from_numpy(masks)).numpy(), np.zeros((len(masks), 2)))

    h = levels_to_hierarchy([auto(0.2, [a, b, c]), auto(1.0, [coarse])])
    assert check_nesting(h) == []
    coarse_label = int(h.labels[1][0, 0])
    by_pixel = {name: int(h.labels[0][mask].max()) for name, mask in (("a", a), ("b", b), ("c", c))}
    rows = {row["label"]: row for row in h.table}
    assert rows[by_pixel["a"]]["parent"] == coarse_label and rows[by_pixel["a"]]["area"] == 16
    assert rows[by_pixel["b"]]["parent"] == 0 and rows[by_pixel["b"]]["area"] == 50
    assert rows[by_pixel["c"]]["parent"] == coarse_label and rows[by_pixel["c"]]["area"] == 24
    assert not np.any(h.labels[0][:, 10:] == by_pixel["c"])  # clipped to the left half


def test_coco_round_trip(hierarchy, levels):
    doc = json.loads(json.dumps(hierarchy_to_coco(hierarchy, file_name="cells.png")))
    assert doc["images"] == [{"id": 1, "file_name": "cells.png", "height": 96, "width": 128}]
    assert len(doc["annotations"]) == len(hierarchy.table)
    for ann in doc["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str)  # compressed RLE
        mask = decode_rle(ann["segmentation"])
        assert np.array_equal(mask, hierarchy.labels[ann["level"]] == ann["label"])
        assert ann["granularity"] == GRANULARITIES[ann["level"]] and ann["area"] == int(mask.sum())
    result = levels[0]
    doc = masks_to_coco(result)
    assert len(doc["annotations"]) == len(result)
    for ann, mask, score in zip(doc["annotations"], result.masks, result.scores):
        assert np.array_equal(decode_rle(ann["segmentation"]), mask)
        assert ann["granularity"] == 0.3 and ann["score"] == pytest.approx(float(score))


def test_progress_and_cancel(model):
    image = make_cells_image()
    calls = []
    segmenter = AutomaticSegmenter(model, replace(SMALL, points_per_side=2), decode_batch=2)
    segmenter.generate_levels(image, [0.4, 0.8], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 8), (4, 8), (6, 8), (8, 8)]  # one report per batch, up to the total

    with pytest.raises(Cancelled):
        segmenter.generate(image, 0.5, cancel=lambda: True)
    asked, reports = [], []

    def cancel_second() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(Cancelled):
        segmenter.generate(image, 0.5, cancel=cancel_second, progress=lambda d, t: reports.append(d))
    assert reports == [2]  # one batch reported, then cancelled


def test_m2m_masks_are_the_sessions_second_pass_masks(model):
    """use_m2m: every mask is what ImageSession.predict(..., m2m=True) gives for its grid point."""
    image = make_cells_image()
    settings = replace(SMALL, use_m2m=True, points_per_side=2, box_nms_thresh=1.0)
    result = _segmenter(model, settings).generate(image, 0.5)
    plain = _segmenter(model, replace(settings, use_m2m=False)).generate(image, 0.5)
    assert len(result) >= 1
    session = ImageSession(model)
    session.set_image(image)
    for mask, point in zip(result.masks, result.points):
        expected = session.predict(point[None], [1], 0.5, m2m=True, mask_threshold=settings.mask_threshold).mask
        assert np.mean(mask == expected) > 0.999
    differs = [not np.array_equal(a, b) for a, b in zip(result.masks, plain.masks)]
    assert any(differs) or len(result) != len(plain)  # the second pass changed something


def test_crop_layers_masks_in_image_coordinates(model, monkeypatch):
    """crop_n_layers=1: every kept mask is, pixel for pixel, a mask of its crop pasted at the crop's offset.

    The crop-edge filter (sam2's own `is_box_near_crop_edge`) is off, since the random model's masks
    always reach the crop edges and would leave only full-image masks.
    """
    from unsamv2_engine.automatic import segmenter as segmenter_module

    image = make_cells_image()
    monkeypatch.setattr(segmenter_module, "is_box_near_crop_edge",
                        lambda boxes, *a, **k: torch.zeros(len(boxes), dtype=bool))
    settings = replace(SMALL, points_per_side=2, crop_n_layers=1, box_nms_thresh=1.0)
    result = _segmenter(model, settings).generate(image, 0.5)
    assert len(result) > 0 and result.masks.shape[1:] == image.shape[:2]
    boxes, _ = generate_crop_boxes(image.shape[:2], 1, settings.crop_overlap_ratio)
    candidates = []  # (crop index, pasted mask) of every mask each crop alone gives
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        alone = _segmenter(model, replace(settings, crop_n_layers=0)).generate(image[y0:y1, x0:x1], 0.5)
        for mask in alone.masks:
            pasted = np.zeros(image.shape[:2], bool)
            pasted[y0:y1, x0:x1] = mask
            candidates.append((k, pasted))
    sources = set()
    for mask, box in zip(result.masks, result.boxes):
        matches = {k for k, pasted in candidates if np.array_equal(pasted, mask)}
        assert matches, "a mask is not a crop's mask at the crop's offset"
        if mask.any():  # (an empty mask's box is the crop's offset, as in sam2)
            sources |= matches
            assert np.array_equal(box, batched_mask_to_box(torch.from_numpy(mask[None]))[0].numpy())
    assert sources & {1, 2, 3, 4}  # some masks come from the 2x2 crops, placed at their offsets


# ============================================================================ small-region clean-up
def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((30, 30), bool)
    mask[2:20, 2:20] = True
    mask[5:7, 5:7] = False  # 4 px hole
    mask[10:16, 10:16] = False  # 36 px hole
    mask[25:27, 25:27] = True  # 4 px island
    filled, changed = remove_small_regions(mask, 10, "holes")
    assert changed and filled[5:7, 5:7].all() and not filled[10:16, 10:16].any()
    cleaned, changed = remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[25:27, 25:27].any() and cleaned[2:20, 2:20].sum() == 18 * 18 - 36
    same, changed = remove_small_regions(cleaned, 10, "islands")
    assert not changed and np.array_equal(same, cleaned)
    tiny = np.zeros((10, 10), bool)
    tiny[0:2, 0:2] = True  # 4 px
    tiny[6:9, 6:8] = True  # 6 px: the largest is kept when all are small
    kept, _ = remove_small_regions(tiny, 50, "islands")
    assert kept.sum() == 6 and kept[6:9, 6:8].all()
    with pytest.raises(ValueError):
        remove_small_regions(mask, 10, "both")


def test_remove_small_regions_all_on_results():
    masks = np.zeros((2, 30, 30), bool)
    masks[0, 2:20, 2:20] = True
    masks[0, 5:7, 5:7] = False
    masks[0, 25:27, 25:27] = True
    masks[1, 0:10, 20:30] = True
    result = AutoMasks(0.5, masks, np.array([0.9, 0.8]), np.array([1.0, 1.0]),
                       batched_mask_to_box(torch.from_numpy(masks)).numpy(), np.zeros((2, 2)))
    cleaned = remove_small_regions_all(result, 10, 0.7)
    assert len(cleaned) == 2
    assert cleaned.masks[0, 5:7, 5:7].all() and not cleaned.masks[0, 25:27, 25:27].any()
    assert cleaned.boxes[0].tolist() == [2, 2, 19, 19] and np.array_equal(cleaned.masks[1], masks[1])


# ============================================================================ bad inputs
def test_constant_image_runs(model):
    flat = np.full((32, 40), 7, np.uint8)
    result = _segmenter(model, replace(SMALL, points_per_side=2)).generate(flat, 0.5)
    assert result.masks.shape == (len(result), 32, 40) and result.masks.dtype == bool


def test_bad_granularities_raise(model):
    segmenter = _segmenter(model, SMALL)
    with pytest.raises(ValueError, match=r"granularity must be in \[0.1, 1.0\]"):
        segmenter.generate(make_cells_image(), 1.5)
    with pytest.raises(ValueError, match="at least one granularity"):
        segmenter.generate_levels(make_cells_image(), [])


# ============================================================================ the CLI
def test_cli_auto_writes_labels_and_coco(capsys, tmp_path, files, levels):
    out, coco = tmp_path / "labels.tif", tmp_path / "masks.json"
    code, stdout, stderr = _run(capsys, "auto", files["cells"], "--granularity", 0.3, "--checkpoint", files["ckpt"],
                                *SMALL_ARGS, "-o", out, "--json", coco)
    assert code == 0, stderr
    assert "preset cpu (default on cpu)" in stderr
    assert stdout.startswith(f"wrote {out}") and len(stdout.splitlines()) == 1
    labels, meta = read_labels(out)
    expected = levels[0]  # the same settings, model and image in process
    assert labels.shape == (96, 128) and np.array_equal(labels, expected.label_image())
    assert meta["granularity"] == 0.3 and meta["preset"] == "cpu"
    assert meta["counts"]["masks"] == len(expected) and meta["counts"]["visible"] == len(np.unique(labels)) - 1
    assert meta["settings"]["points_per_side"] == 4 and meta["settings"]["use_m2m"] is False
    assert meta["settings"]["pred_iou_thresh"] == 0.0 and meta["settings"]["mask_threshold"] == 0.2
    assert meta["thresholds"] == {"pred_iou": 0.0, "stability": 0.0}
    assert meta["model_family"] == "unsamv2" and "tiny" in meta["model"]
    doc = json.loads(coco.read_text())
    assert len(doc["annotations"]) == len(expected)
    assert doc["images"][0]["height"] == 96 and doc["images"][0]["width"] == 128
    for ann, mask in zip(doc["annotations"], expected.masks):
        assert ann["granularity"] == 0.3 and np.array_equal(decode_rle(ann["segmentation"]), mask)


def test_cli_hierarchy_pages_table_json(capsys, tmp_path, files, hierarchy):
    out, table, coco = tmp_path / "cells_hierarchy.tif", tmp_path / "tree.csv", tmp_path / "masks.json"
    code, stdout, stderr = _run(capsys, "hierarchy", files["cells"], "--granularities", "0.3,0.6,1.0",
                                "--checkpoint", files["ckpt"], *SMALL_ARGS, "-o", out, "--table", table,
                                "--json", coco)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} (3 levels") and len(stdout.splitlines()) == 4
    h = read_hierarchy(out)
    assert h.granularities == GRANULARITIES and check_nesting(h) == []
    assert np.array_equal(h.labels, hierarchy.labels)  # as levels_to_hierarchy in process
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == list(TABLE_COLUMNS)
    assert [(int(r["label"]), int(r["parent"]), int(r["area"])) for r in rows] == [
        (r["label"], r["parent"], r["area"]) for r in h.table]
    doc = json.loads(coco.read_text())
    assert len(doc["annotations"]) == len(h.table)
    for ann in doc["annotations"]:
        assert np.array_equal(decode_rle(ann["segmentation"]), h.labels[ann["level"]] == ann["label"])
    from napari_unsamv2._reader import get_reader

    assert get_reader(str(out)) is not None


def test_cli_hierarchy_keeps_the_order_given(capsys, tmp_path, files):
    out = tmp_path / "h.tif"
    code, _, stderr = _run(capsys, "hierarchy", files["cells"], "--granularities", "1.0:0.4:3",
                           "--checkpoint", files["ckpt"], *SMALL_ARGS, "--points-per-side", 2, "-o", out, "-q")
    assert code == 0, stderr
    data, meta = read_labels(out)
    assert data.shape == (3, 96, 128) and meta["granularities"] == [1.0, 0.7, 0.4]
    h = read_hierarchy(out)
    assert h.granularities == [1.0, 0.7, 0.4] and check_nesting(h) == []
    rows = {row["label"]: row for row in h.table}
    for row in h.table:  # page 0 (g = 1.0) is the coarsest: parents are one page *earlier*
        if row["level"] == 0:
            assert row["parent"] == 0
        elif row["parent"]:
            assert rows[row["parent"]]["level"] == row["level"] - 1


def test_cli_uniform_image_gives_an_empty_result(capsys, tmp_path, files):
    out, table, coco = tmp_path / "flat_hierarchy.tif", tmp_path / "flat.csv", tmp_path / "flat.json"
    code, stdout, stderr = _run(capsys, "hierarchy", files["flat"], "--granularities", "0.3,1.0",
                                "--checkpoint", files["ckpt"], "--device", "cpu", "-o", out, "--table", table,
                                "--json", coco)
    assert code == 0, stderr
    assert "uniform" in stderr and "0 objects" in stdout
    h = read_hierarchy(out)
    assert h.labels.shape == (2, 40, 50) and not h.labels.any() and h.table == []
    assert table.read_text().splitlines() == [",".join(TABLE_COLUMNS)]
    assert json.loads(coco.read_text())["annotations"] == []
    labels_path = tmp_path / "flat.tif"
    code, _, stderr = _run(capsys, "auto", files["flat"], "-g", 0.5, "--checkpoint", files["ckpt"], "-o",
                           labels_path)
    assert code == 0, stderr
    labels, meta = read_labels(labels_path)
    assert labels.shape == (40, 50) and not labels.any() and meta["counts"]["masks"] == 0


@pytest.mark.parametrize("argv,message", [
    (["auto", "{cells}", "-g", "1.5", "-o", "x.tif"], "granularity must be in [0.1, 1.0]"),
    (["auto", "{cells}", "-g", "0.5", "-o", "x.png"], "must end in .tif or .tiff"),
    (["hierarchy", "{cells}", "--granularities", "0.1:1.0:21", "-o", "x.tif"], "give at most 20"),
    (["hierarchy", "{cells}", "--granularities", "0.3,1.2", "-o", "x.tif"], "granularity must be in"),
    (["hierarchy", "{cells}", "--granularities", "", "-o", "x.tif"], "give granularities as"),
    (["hierarchy", "{cells}", "--granularities", "0.5", "-o", "x.tif", "--table", "t.txt"], "must end in .csv"),
    (["auto", "{cells}", "-g", "0.5", "-o", "x.tif", "--box-nms-thresh", "0"], "expected a number in (0, 1]"),
    (["auto", "{cells}", "-g", "0.5", "-o", "x.tif", "--points-per-side", "0"], "expected a whole number >= 1"),
    (["auto", "{missing}", "-g", "0.5", "-o", "x.tif"], "missing.png"),
])
def test_cli_bad_inputs_exit_2(capsys, tmp_path, files, argv, message):
    argv = [a.format(cells=files["cells"], missing=tmp_path / "missing.png") for a in argv]
    code, _, stderr = _run(capsys, *argv, "--checkpoint", files["ckpt"], "--device", "cpu")
    assert code == 2 and message in stderr
    assert not (Path.cwd() / "x.tif").exists()


def test_cli_ctrl_c_exits_130_without_output(capsys, tmp_path, files, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AutomaticSegmenter, "generate_levels", interrupted)
    out = tmp_path / "labels.tif"
    code, _, stderr = _run(capsys, "auto", files["cells"], "-g", 0.5, "--checkpoint", files["ckpt"], *SMALL_ARGS,
                           "-o", out)
    assert code == 130 and "interrupted" in stderr and not out.exists()


def test_cli_settings_presets_and_overrides():
    from unsamv2_engine.cli.auto import settings_from_args

    parser = build_parser()
    args = parser.parse_args(["auto", "x.png", "-g", "0.5", "-o", "x.tif"])
    assert settings_from_args(args, torch.device("cpu")) == ("cpu", AutoSettings.cpu())
    assert settings_from_args(args, torch.device("cuda")) == ("authors", AutoSettings.authors())
    args = parser.parse_args(["hierarchy", "x.png", "--granularities", "0.3,1", "-o", "x.tif", "--preset", "authors",
                              "--no-m2m", "--points-per-side", "16", "--pred-iou-thresh", "0.8", "--stability-thresh",
                              "0.9", "--stability-offset", "1", "--mask-threshold", "-0.5", "--box-nms-thresh", "0.5",
                              "--crop-layers", "1", "--min-region-area", "25", "--points-per-batch", "4"])
    preset, settings = settings_from_args(args, torch.device("cpu"))
    assert preset == "authors" and settings == replace(
        AutoSettings.authors(), use_m2m=False, points_per_side=16, pred_iou_thresh=0.8, stability_score_thresh=0.9,
        stability_score_offset=1.0, mask_threshold=-0.5, box_nms_thresh=0.5, crop_n_layers=1,
        min_mask_region_area=25, points_per_batch=4)
    assert settings.thresholds_for(0.2) == (0.8, 0.9)
    args = parser.parse_args(["auto", "x.png", "-g", "0.5", "-o", "x.tif", "--m2m"])
    assert settings_from_args(args, torch.device("cpu"))[1].use_m2m is True
    assert AutoSettings.authors().thresholds_for(0.3) == (0.65, 0.7)
    assert AutoSettings.authors().thresholds_for(0.5) == (0.5, 0.7)


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from unsamv2_engine.cli import main\n"
        "for argv in (['--help'], ['auto', '--help'], ['hierarchy', '--help']):\n"
        "    try:\n"
        "        rc = main(argv)\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        "    assert rc in (0, None), (argv, rc)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sam2', 'numpy', 'scipy', 'tqdm'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for text in ("--preset", "--points-per-side", "--granularities", "--table", "--checkpoint", "--m2m"):
        assert text in result.stdout
