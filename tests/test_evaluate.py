"""unsamv2_engine.evaluate: click simulator, NoC metrics, granularity modes, AR, datasets, report, CLI.

Mostly hand-made cases with mock predictors whose NoC is known analytically (docs/evaluation.md);
one smoke run per real tiny random-weight model (UnSAMv2 and plain SAM 2.1), and one CLI run.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.ndimage import distance_transform_edt

from unsamv2_engine.evaluate import clicker as clk
from unsamv2_engine.evaluate.datasets import EvalItem, GTObject, dataset_to_coco, load_dataset, objects_from_label_image
from unsamv2_engine.evaluate.interactive import (
    DEFAULT_GRID,
    Mode,
    chain_granularity,
    evaluate_object,
    parse_mode,
    parse_modes,
    run_clicks,
    run_oracle,
)
from unsamv2_engine.evaluate.metrics import iou, iou_curve, noc, noc_summary
from unsamv2_engine.evaluate.predictors import PredictorOutput
from unsamv2_engine.evaluate.report import write_report
from unsamv2_engine.evaluate.runner import evaluate_interactive, evaluate_whole_image
from unsamv2_engine.evaluate.whole_image import average_recall, sweep_nestedness
from unsamv2_engine.granularity_scores import sqrt_area_granularity


# ============================================================================ helpers
def disc(shape, center, radius):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(yy - center[0], xx - center[1]) <= radius


def rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def first_positive(points, labels):
    """(row, col) of the first positive point given to a predictor."""
    x, y = points[np.flatnonzero(labels == 1)[0]]
    return int(round(y)), int(round(x))


class PerfectPredictor:
    """Returns the GT object under the first positive click (objects do not overlap)."""

    def __init__(self, masks):
        self.masks = masks
        self.calls = []

    def set_image(self, image):
        pass

    def predict(self, points, labels, granularity, mask_input):
        self.calls.append((len(points), granularity, mask_input is not None))
        r, c = first_positive(points, labels)
        mask = next(m for m in self.masks if m[r, c])
        return PredictorOutput(mask.copy(), np.zeros((256, 256), np.float32), 1.0)


class EmptyPredictor:
    def __init__(self, shape):
        self.shape = shape

    def set_image(self, image):
        pass

    def predict(self, points, labels, granularity, mask_input):
        return np.zeros(self.shape, bool), None, 0.0


class HierarchyPredictor:
    """Returns the GT level (among the masks under the first click) whose sqrt-area g is nearest the requested g."""

    has_granularity = True

    def __init__(self, masks):
        self.masks = masks

    def set_image(self, image):
        pass

    def predict(self, points, labels, granularity, mask_input):
        r, c = first_positive(points, labels)
        chain = [m for m in self.masks if m[r, c]]
        gs = sqrt_area_granularity([m.sum() for m in chain])
        return PredictorOutput(chain[int(np.argmin(np.abs(gs - granularity)))].copy(), None, 1.0)


SHAPE = (80, 80)
NESTED = [disc(SHAPE, (40, 40), r) for r in (6, 15, 30)]  # nucleolus, nucleus, cell


def nested_item():
    objects = [GTObject(i + 1, m, level=name, level_index=i, parent=None if i == 2 else i + 2)
               for i, (m, name) in enumerate(zip(NESTED, ["nucleolus", "nucleus", "cell"]))]
    return EvalItem("nested", np.zeros(SHAPE, np.uint8), objects, targets=[1, 2, 3])


# ============================================================================ clicker
def test_first_click_is_innermost_point_of_rectangle_first_in_raster_order():
    gt = rect((30, 40), 10, 17, 20, 31)  # 7 x 11: depth 4 on row 13, columns 23..27
    click = clk.next_click(gt, np.zeros_like(gt))
    assert (click.row, click.col, click.is_positive) == (13, 23, True)
    assert click.xy == (23, 13)


def test_first_click_is_disc_centre():
    gt = disc((50, 60), (20, 25), 8)
    click = clk.next_click(gt, np.zeros_like(gt))
    assert (click.row, click.col, click.is_positive) == (20, 25, True)


def test_image_border_counts_as_boundary():
    gt = rect((20, 30), 0, 5, 0, 10)  # touches the top-left border; without the 1 px pad (0, 0) would win
    click = clk.next_click(gt, np.zeros_like(gt))
    assert (click.row, click.col) == (2, 2)


def test_tie_gives_negative_click():
    gt = rect((30, 30), 5, 8, 5, 8)
    pred = rect((30, 30), 20, 23, 20, 23)  # FN and FP regions equally deep
    click = clk.next_click(gt, pred)
    assert not click.is_positive and (click.row, click.col) == (21, 21)


def test_false_positive_only_gives_negative_click_in_the_error():
    gt = disc((40, 40), (15, 15), 6)
    extra = rect((40, 40), 28, 36, 26, 38)
    click = clk.next_click(gt, gt | extra)
    assert not click.is_positive and extra[click.row, click.col]
    assert (click.row, click.col) == (31, 29)  # depth 4 first reached at row 31, column 29


def test_never_the_same_pixel_twice():
    gt = disc((40, 40), (20, 20), 9)
    c = clk.Clicker(gt)
    clicks = [c.make_next_click(np.zeros_like(gt)) for _ in range(30)]
    positions = {(k.row, k.col) for k in clicks}
    assert len(positions) == 30 and all(k.is_positive and gt[k.row, k.col] for k in clicks)
    points, labels = c.points_xy()
    assert points.shape == (30, 2) and points.dtype == np.float32 and labels.tolist() == [1] * 30


def test_points_positives_first_then_negatives():
    c = clk.Clicker(rect((10, 10), 2, 8, 2, 8))
    for click in [clk.Click(1, 1, False), clk.Click(5, 5, True), clk.Click(0, 9, False), clk.Click(4, 4, True)]:
        c.add_click(click)
    points, labels = c.points_xy()
    assert labels.tolist() == [1, 1, 0, 0]
    assert points.tolist() == [[5, 5], [4, 4], [1, 1], [9, 0]]
    assert c.points_xy(positives_first=False)[1].tolist() == [0, 1, 0, 1]


def test_ignore_label_pixels_are_never_clicked():
    gt = np.zeros((30, 30), np.int8)
    gt[5:25, 5:25] = 1
    gt[10:20, 10:20] = -1  # the deepest part is ignored
    c = clk.Clicker(gt)
    click = c.make_next_click(np.zeros((30, 30), bool))
    assert click.is_positive and gt[click.row, click.col] == 1
    assert iou(gt == 1, np.ones((30, 30), bool), ignore=gt == -1) == pytest.approx(300 / 800)


def test_distance_maps_match_brute_force_euclidean_distance():
    rng = np.random.default_rng(3)
    gt = rng.random((12, 14)) < 0.6
    dt_fn, dt_fp = clk.error_distance_maps(gt, np.zeros_like(gt))
    padded = np.pad(gt, 1)
    zeros = np.argwhere(~padded)
    brute = np.zeros(gt.shape)
    for r, c in np.argwhere(gt):
        brute[r, c] = np.sqrt(((zeros - [r + 1, c + 1]) ** 2).sum(1)).min()
    np.testing.assert_allclose(dt_fn, brute, rtol=1e-6)
    assert not dt_fp.any()
    np.testing.assert_allclose(dt_fn, distance_transform_edt(padded)[1:-1, 1:-1], rtol=1e-6)


# ============================================================================ metrics
def test_noc_and_summary_follow_ritm():
    assert noc([0.5, 0.82, 0.91], 0.8) == 2 and noc([0.5, 0.82, 0.91], 0.9) == 3 and noc([0.5], 0.9) == 20
    seqs = [[0.95], [0.5, 0.86, 0.92], [0.1] * 19 + [0.95], [0.2] * 20]
    s = noc_summary(seqs, seconds=[0.1, 0.3, 2.0, 2.0])
    assert s["noc"] == {"80": pytest.approx((1 + 2 + 20 + 20) / 4), "85": pytest.approx((1 + 2 + 20 + 20) / 4),
                        "90": pytest.approx((1 + 3 + 20 + 20) / 4)}
    assert s["nof"]["90"] == 2  # RITM counts NoC == 20, including the object reaching 0.9 at click 20
    assert s["fail_strict"]["90"] == 1
    assert s["iou_1"] == pytest.approx((0.95 + 0.5 + 0.1 + 0.2) / 4)
    assert len(s["miou_curve"]) == 20 and s["miou_curve"][0] == pytest.approx(s["iou_1"])
    assert s["miou_curve"][-1] == pytest.approx((0.95 + 0.92 + 0.95 + 0.2) / 4)
    assert s["seconds_per_click"] == pytest.approx(4.4 / 44)
    assert iou_curve([0.3, 0.7], 4).tolist() == [0.3, 0.7, 0.7, 0.7]


def test_iou_edge_cases():
    a = rect((10, 10), 0, 5, 0, 10)
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0 and iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError):
        iou(a, a[:5])


def test_parse_modes():
    modes = parse_modes("oracle, fixed:0.5,level,sam-single,sam-oracle3,oracle")
    assert [m.name for m in modes] == ["oracle", "fixed:0.5", "level", "sam-single", "sam-oracle3"]
    assert parse_mode("fixed:1").granularity == 1.0
    for bad in ("fixed", "fixed:1.5", "bogus", "level:0.3"):
        with pytest.raises(ValueError):
            parse_mode(bad)


# ============================================================================ loop and modes
def test_perfect_predictor_gives_noc_one_and_feeds_logits_back():
    masks = [disc(SHAPE, (20, 20), 10), rect(SHAPE, 50, 70, 40, 75)]
    pred = PerfectPredictor(masks)
    items = [EvalItem("a", np.zeros(SHAPE, np.uint8), [GTObject(i + 1, m) for i, m in enumerate(masks)], [1, 2])]
    res = evaluate_interactive(items, pred, parse_modes("fixed:0.5,level"), sweep_grid=None)
    for mode in ("fixed:0.5", "level"):
        s = res.summary["modes"][mode]["all"]
        assert s["noc"] == {"80": 1.0, "85": 1.0, "90": 1.0} and s["nof"]["90"] == 0 and s["iou_1"] == 1.0
    assert all(r.n_clicks == 1 for r in res.objects)
    # full curves: 3 clicks, and the 2nd/3rd predictions get the previous logits
    run = run_clicks(lambda p, lab, m: (pred.predict(p, lab, 0.5, m), None), masks[0], max_clicks=3, stop_early=False)
    assert run.n_clicks == 3 and run.ious == [1.0, 1.0, 1.0]
    assert [c[2] for c in pred.calls[-3:]] == [False, True, True]


def test_empty_predictor_fails_every_object():
    masks = [disc(SHAPE, (20, 20), 10), rect(SHAPE, 50, 70, 40, 75)]
    items = [EvalItem("a", np.zeros(SHAPE, np.uint8), [GTObject(i + 1, m) for i, m in enumerate(masks)], [1, 2])]
    res = evaluate_interactive(items, EmptyPredictor(SHAPE), parse_modes("oracle,fixed:0.3"), sweep_grid=None)
    for mode in ("oracle", "fixed:0.3"):
        s = res.summary["modes"][mode]["all"]
        assert s["noc"]["80"] == 20.0 and s["nof"] == {"80": 2, "85": 2, "90": 2} and s["iou_1"] == 0.0
    fixed = [r for r in res.objects if r.mode == "fixed:0.3"]
    assert all(r.n_clicks == 20 and len({tuple(c[:2]) for c in r.clicks}) == 20 for r in fixed)
    oracle = [r for r in res.objects if r.mode == "oracle"]
    assert all(r.extra["oracle_clicks"] == [20] * 10 and r.granularity == 0.1 for r in oracle)  # ties -> first g


def test_hierarchy_predictor_oracle_level_and_fixed():
    item = nested_item()
    pred = HierarchyPredictor(NESTED)
    expected_g = sqrt_area_granularity([m.sum() for m in NESTED])  # 0.1, ~0.44, 1.0
    res = evaluate_interactive([item], pred, parse_modes("oracle,level,fixed:0.1,fixed:1.0"),
                               sweep_grid=DEFAULT_GRID)
    by = {(r.mode, r.level): r for r in res.objects}
    for i, level in enumerate(["nucleolus", "nucleus", "cell"]):
        oracle = by["oracle", level]
        assert oracle.n_clicks == 1 and oracle.ious[0] == 1.0
        # the chosen g maps to the right level: nearest sqrt-area g of the chain is the target's
        assert int(np.argmin(np.abs(expected_g - oracle.granularity))) == i
        lvl = by["level", level]
        assert lvl.granularity == pytest.approx(expected_g[i], abs=1e-6) and lvl.n_clicks == 1
        assert lvl.extra["chain_length"] == 3
    assert by["fixed:0.1", "nucleus"].n_clicks == 20 and by["fixed:0.1", "nucleus"].ious[-1] < 0.8
    assert by["fixed:1", "cell"].n_clicks == 1 and by["fixed:1", "nucleolus"].n_clicks == 20
    s = res.summary["modes"]
    assert s["level"]["all"]["noc"]["90"] == 1.0 and s["oracle"]["all"]["noc"]["90"] == 1.0
    assert s["fixed:0.1"]["all"]["nof"]["90"] == 2
    assert set(s["oracle"]["per_level"]) == {"cell", "nucleolus", "nucleus"}
    assert s["oracle"]["granularity"]["spearman_vs_log_area"] == pytest.approx(1.0)
    assert s["oracle"]["granularity"]["spearman_vs_level_index"] == pytest.approx(1.0)
    # the first-click sweep: areas grow with g, nested
    assert len(res.sweeps) == 3 and res.summary["sweep"]["nested"] == 1.0
    assert res.summary["sweep"]["area_monotone"] == 1.0


def test_oracle_tie_break_and_cutoff():
    gt = disc(SHAPE, (40, 40), 12)
    near = disc(SHAPE, (40, 40), 11.6)
    assert 0.9 < iou(gt, near) < 1.0
    table = {0.1: disc(SHAPE, (40, 40), 4), 0.2: near, 0.3: gt}

    class Scripted:
        def predict(self, points, labels, g, mask_input):
            return table.get(g, np.zeros(SHAPE, bool)), None, 0.0

    chosen, runs = run_oracle(Scripted(), gt, target_iou=0.9)
    assert chosen.granularity == 0.3  # g=0.2 and 0.3 both stop at click 1; 0.3 has the higher first IoU
    assert [r.n_clicks for r in runs] == [20, 1, 1] + [2] * 7  # later g cut off after min_num + 1 clicks
    _, full = run_oracle(Scripted(), gt, target_iou=0.9, cutoff=False)
    assert [r.n_clicks for r in full] == [20, 1, 1] + [20] * 7
    obj_run, extra = evaluate_object(Scripted(), Mode("oracle"), gt)
    assert obj_run.granularity == 0.3 and extra["oracle_clicks"][:3] == [20, 1, 1]


def test_chain_granularity_uses_masks_containing_the_first_click():
    g, n = chain_granularity(NESTED[1], [NESTED[0], NESTED[2], rect(SHAPE, 0, 5, 0, 5)], (40, 40))
    assert n == 3 and g == pytest.approx(sqrt_area_granularity([m.sum() for m in NESTED])[1])
    assert chain_granularity(NESTED[1], [], (40, 40)) == (1.0, 1)


def test_sam_modes_with_mock_candidates():
    gt = NESTED[1]

    class Sam:
        has_granularity = False

        def __init__(self):
            self.gs = []

        def set_image(self, image):
            pass

        def predict(self, points, labels, g, mask_input):
            self.gs.append(g)
            return NESTED[2], None, 0.9

        def candidates(self, points, labels, mask_input):
            return [(m, None, 0.5) for m in NESTED]

    sam = Sam()
    res = evaluate_interactive([nested_item()], sam, parse_modes("sam-single,sam-oracle3"), sweep_grid=DEFAULT_GRID)
    rows = {(r.mode, r.object_id): r for r in res.objects}
    assert rows["sam-oracle3", 2].n_clicks == 1 and rows["sam-oracle3", 2].extra["candidate_choices"] == [1]
    assert rows["sam-single", 3].n_clicks == 1 and rows["sam-single", 2].n_clicks == 20
    assert set(sam.gs) == {None} and res.sweeps == []  # no granularity: no sweep
    assert iou(gt, NESTED[2]) < 0.5

    class Unsam(Sam):
        has_granularity = True

    with pytest.raises(ValueError, match="plain SAM"):
        evaluate_interactive([nested_item()], Unsam(), parse_modes("sam-single"))
    with pytest.raises(ValueError, match="candidates"):
        evaluate_interactive([nested_item()], EmptyPredictor(SHAPE), parse_modes("sam-oracle3"))


# ============================================================================ AR
def test_ar_perfect_none_partial_and_truncation():
    shape = (64, 64)
    g1, g2 = rect(shape, 0, 10, 0, 10), rect(shape, 30, 50, 30, 50)
    perfect = average_recall([g1, g2], [(g1, 0.9), (g2, 0.8)])
    assert perfect["AR@1000"] == 1.0 and perfect["AR@100"] == 1.0 and perfect["AR@1"] == 0.5
    assert average_recall([g1, g2], [])["AR@1000"] == 0.0
    # one detection of IoU 0.72 with g1: recall 0.5 at t <= 0.70, 0 above -> AR = 0.5 * 5 / 10
    d = g1.copy()
    d.ravel()[np.flatnonzero(g1.ravel())[72:]] = False
    partial = average_recall([g1, g2], [(d, 0.9)])
    assert partial["AR@1000"] == pytest.approx(0.25) and partial["stats"][8] == pytest.approx(0.25)
    assert partial["AR_per_iou"]["0.70"] == 0.5 and partial["AR_per_iou"]["0.75"] == 0.0
    assert partial["AR_small"] == pytest.approx(0.25) and partial["AR_large"] is None
    # maxDets truncation by score: 100 junk detections outrank the two good ones
    junk = [(rect(shape, 60, 64, i % 60, i % 60 + 2), 0.9) for i in range(100)]
    res = average_recall([g1, g2], junk + [(g1, 0.1), (g2, 0.2)])
    assert res["AR@1"] == 0.0 and res["AR@100"] == 0.0 and res["AR@1000"] == 1.0
    assert res["stats"][7] == res["AR@100"] and res["stats"][8] == res["AR@1000"]


def test_ar_coco_inputs_pool_over_images():
    from unsamv2_engine.io.coco import coco_document, encode_rle, mask_to_annotation

    m = rect((32, 32), 4, 20, 4, 20)
    gt = coco_document([{"id": 7, "height": 32, "width": 32, "file_name": "a.png"},
                        {"id": 8, "height": 32, "width": 32, "file_name": "b.png"}],
                       [mask_to_annotation(m, ann_id=1, image_id=7), mask_to_annotation(m, ann_id=2, image_id=8)])
    dets = [{"image_id": 7, "segmentation": encode_rle(m), "predicted_iou": 0.5}]
    assert average_recall(gt, dets)["AR@1000"] == 0.5
    with pytest.raises(ValueError, match="image ids"):
        average_recall(gt, [{"image_id": 9, "segmentation": encode_rle(m), "score": 1.0}])


def test_sweep_nestedness():
    a, b, c = rect((20, 20), 5, 10, 5, 10), rect((20, 20), 0, 15, 0, 15), rect((20, 20), 15, 20, 15, 20)
    s = sweep_nestedness(np.stack([a, b]), [0.1, 0.5])
    assert s["n_pairs"] == 1 and s["area_monotone"] == 1.0 and s["nested"] == 1.0 and s["both"] == 1.0
    s = sweep_nestedness(np.stack([b, a, c]), [0.5, 0.1, 1.0])  # sorted by g: a, b, c
    assert s["areas"] == [25, 225, 25] and s["area_monotone"] == pytest.approx(2 / 3)
    assert s["nested"] == pytest.approx(1 / 3) and s["both"] == pytest.approx(1 / 3)


# ============================================================================ datasets
def write_label_pair(folder, name, labels, suffix="_labels", ext=".tif"):
    image = (labels > 0).astype(np.uint8) * 200
    if ext == ".tif":
        tifffile.imwrite(folder / f"{name}.tif", image)
        tifffile.imwrite(folder / f"{name}{suffix}.tif", labels)
    else:
        Image.fromarray(image).save(folder / f"{name}{ext}")
        Image.fromarray(labels.astype(np.uint8)).save(folder / f"{name}{suffix}{ext}")


def two_object_labels(shape=(40, 50)):
    lab = np.zeros(shape, np.uint16)
    lab[disc(shape, (12, 12), 7)] = 3
    lab[rect(shape, 20, 35, 25, 45)] = 9
    return lab


def test_pairs_dataset_flat_and_subfolders(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write_label_pair(flat, "x", two_object_labels())
    write_label_pair(flat, "y", two_object_labels(), suffix="_masks")
    ds = load_dataset(flat)
    assert ds.kind == "pairs" and ds.names == ["x", "y"]
    item = ds[0]
    assert [o.id for o in item.objects] == [3, 9] and item.targets == [3, 9] and item.objects[0].level is None
    assert item.objects[1].area == 15 * 20
    sub = tmp_path / "sub"
    (sub / "images").mkdir(parents=True)
    (sub / "labels").mkdir()
    lab = two_object_labels()
    Image.fromarray((lab > 0).astype(np.uint8) * 99).save(sub / "images" / "p.png")
    Image.fromarray(lab.astype(np.uint8)).save(sub / "labels" / "p.png")
    ds = load_dataset(sub, min_area=200)
    assert ds.names == ["p"] and ds[0].targets == [9]
    with pytest.raises(ValueError, match="no image/label pairs"):
        load_dataset(tmp_path / "sub" / "images")


def test_subsampling_is_seeded(tmp_path):
    lab = np.zeros((60, 60), np.uint16)
    for k in range(10):
        lab[k * 6:k * 6 + 4, 2:10] = k + 1
    write_label_pair(tmp_path, "many", lab)
    a = load_dataset(tmp_path, max_objects_per_image=3, seed=1)[0].targets
    b = load_dataset(tmp_path, max_objects_per_image=3, seed=1)[0].targets
    c = load_dataset(tmp_path, max_objects_per_image=3, seed=2)[0].targets
    assert a == b and len(a) == 3 and a == sorted(a) and len(load_dataset(tmp_path)[0].targets) == 10
    assert len(c) == 3 and set(c) <= set(range(1, 11))
    assert len(objects_from_label_image(lab)) == 10


def test_coco_dataset(tmp_path):
    from unsamv2_engine.io.coco import coco_document, mask_to_annotation, write_coco

    lab = two_object_labels()
    Image.fromarray((lab > 0).astype(np.uint8) * 50).save(tmp_path / "im.png")
    anns = [mask_to_annotation(lab == 3, ann_id=11, image_id=5, level="nucleus", parent=12, granularity=0.1),
            mask_to_annotation(lab == 9, ann_id=12, image_id=5, level="cell")]
    crowd = mask_to_annotation(rect(lab.shape, 0, 3, 0, 3), ann_id=13, image_id=5)
    crowd["iscrowd"] = 1
    poly = {"id": 14, "image_id": 5, "category_id": 1, "iscrowd": 0,
            "segmentation": [[30.0, 2.0, 40.0, 2.0, 40.0, 12.0, 30.0, 12.0]]}
    write_coco(tmp_path / "gt.json", coco_document([{"id": 5, "file_name": "im.png", "height": 40, "width": 50}],
                                                   anns + [crowd, poly]))
    ds = load_dataset(tmp_path / "gt.json", levels=["nucleus", "cell"])
    item = ds[0]
    assert ds.kind == "coco" and item.name == "im"
    assert [o.id for o in item.objects] == [11, 12, 14] and item.targets == [11, 12]
    nucleus = item.object(11)
    assert nucleus.level == "nucleus" and nucleus.parent == 12 and nucleus.granularity == 0.1
    assert np.array_equal(nucleus.mask, lab == 3) and item.object(14).area > 80
    assert item.ignore is not None and item.ignore.sum() == 9


def write_synthetic_sample(folder):
    folder.mkdir(parents=True)
    shape = (64, 64)
    cell = np.zeros(shape, np.uint16)
    nucleus = np.zeros(shape, np.uint16)
    cell[disc(shape, (30, 30), 20)] = 1
    nucleus[disc(shape, (30, 30), 8)] = 2
    nucleus[disc(shape, (30, 44), 3)] = 3
    tifffile.imwrite(folder / "image.tif", (cell * 1000 + nucleus * 5000).astype(np.uint16))
    tifffile.imwrite(folder / "labels_cell.tif", cell)
    tifffile.imwrite(folder / "labels_nucleus.tif", nucleus)
    rows = [{"label": 1, "level": 1, "level_name": "cell", "parent": "", "area": int((cell == 1).sum()),
             "granularity": 1.0},
            {"label": 2, "level": 2, "level_name": "nucleus", "parent": 1, "area": int((nucleus == 2).sum()),
             "granularity": 0.3},
            {"label": 3, "level": 2, "level_name": "nucleus", "parent": 1, "area": int((nucleus == 3).sum()),
             "granularity": 0.1}]
    with (folder / "hierarchy.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return cell, nucleus


def test_synthetic_dataset(tmp_path):
    cell, nucleus = write_synthetic_sample(tmp_path / "bench" / "s000")
    write_synthetic_sample(tmp_path / "bench" / "s001")
    ds = load_dataset(tmp_path / "bench")
    assert ds.kind == "synthetic" and ds.names == ["s000", "s001"]
    item = ds[0]
    objs = {o.id: o for o in item.objects}
    assert set(objs) == {1, 2, 3} and objs[1].level == "cell" and objs[1].parent is None
    assert objs[2].level == "nucleus" and objs[2].parent == 1 and objs[2].level_index == 2
    assert objs[3].granularity == 0.1 and np.array_equal(objs[2].mask, nucleus == 2)
    assert load_dataset(tmp_path / "bench" / "s001").names == ["s001"]
    assert load_dataset(tmp_path / "bench", levels=["nucleus"], min_area=50)[0].targets == [2]
    # the GT as COCO for AR; detections may name their image
    doc, ids = dataset_to_coco(ds)
    assert len(doc["images"]) == 2 and len(doc["annotations"]) == 6 and ids["s001"] == 2
    from unsamv2_engine.io.coco import encode_rle

    dets = [{"image_id": "s000", "segmentation": encode_rle(cell == 1), "score": 0.9}]
    res = evaluate_whole_image(ds, dets)
    assert res["AR@1000"] == pytest.approx(1 / 6) and res["n_gt"] == 6


# ============================================================================ report
def test_report_files(tmp_path):
    item = nested_item()
    res = evaluate_interactive([item], HierarchyPredictor(NESTED), parse_modes("oracle,level,fixed:0.5"))
    whole = average_recall(NESTED, [(m, 0.5) for m in NESTED[:2]])
    files = write_report(tmp_path / "out", interactive=res, whole_image=whole, config={"note": "test"})
    for name in ("results.json", "objects.csv", "summary.csv", "summary.md", "iou_vs_clicks.png", "area_vs_g.png",
                 "ar_vs_iou.png"):
        assert (tmp_path / "out" / name).is_file(), name
    doc = json.loads(files["results_json"].read_text())
    assert doc["config"]["note"] == "test" and len(doc["objects"]) == 9 and len(doc["sweeps"]) == 3
    assert doc["summary"]["modes"]["level"]["all"]["noc"]["90"] == 1.0
    assert doc["whole_image"]["AR@1000"] == pytest.approx(2 / 3)
    with files["summary_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert {r["mode"] for r in rows} == {"oracle", "level", "fixed:0.5"} and "noc_90" in rows[0]
    assert {r["level"] for r in rows} == {"all", "cell", "nucleus", "nucleolus"}
    with files["objects_csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 9
    md = files["summary_md"].read_text()
    assert "NoC@90" in md and "AR@1000" in md
    assert Image.open(files["iou_vs_clicks"]).size[0] > 100


# ============================================================================ real tiny models
def test_smoke_tiny_unsamv2_and_sam2(tiny_model, tiny_sam2_model, cells_image):
    from unsamv2_engine.evaluate.predictors import SessionPredictor

    yy, xx = np.mgrid[0:96, 0:128]
    cell = np.hypot(yy - 40, xx - 40) < 22
    nucleus = np.hypot(yy - 40, xx - 40) < 22 / 2.5
    item = EvalItem("cells", cells_image, [GTObject(1, cell, "cell"), GTObject(2, nucleus, "nucleus", parent=1)],
                    targets=[1, 2])
    predictor = SessionPredictor(tiny_model, mask_threshold=-1.0)
    baseline = SessionPredictor(tiny_sam2_model, mask_threshold=-1.0)
    res = evaluate_interactive([item], predictor, parse_modes("oracle,level,sam-single,sam-oracle3"),
                               baseline=baseline, max_clicks=3, grid=[0.3, 0.9], sweep_grid=[0.3, 0.9])
    assert len(res.objects) == 8
    for r in res.objects:
        assert 1 <= r.n_clicks <= 3 and len(r.clicks) == r.n_clicks == len(r.seconds)
        assert all(0.0 <= v <= 1.0 for v in r.ious) and r.clicks[0][2] == 1
        if r.mode == "oracle":
            assert r.granularity in (0.3, 0.9) and len(r.extra["oracle_clicks"]) == 2
        if r.mode == "sam-oracle3":
            assert all(0 <= k <= 2 for k in r.extra["candidate_choices"])
    levels = {r.object_id: r.granularity for r in res.objects if r.mode == "level"}
    assert levels == {1: 1.0, 2: 0.1}
    assert res.config["predictor"]["mask_threshold"] == -1.0 and res.config["baseline"]["has_granularity"] is False
    assert len(res.sweeps) == 2 and len(res.sweeps[0]["areas"]) == 2
    s = res.summary["modes"]["oracle"]["all"]
    assert s["n_objects"] == 2 and len(s["miou_curve"]) == 3 and s["seconds_per_click"] > 0
    # the sam-single path is SAM's token 0 with the feedback logits accepted
    out = baseline.predict(np.array([[40.0, 40.0]]), np.array([1]), None, None)
    out2 = baseline.predict(np.array([[40.0, 40.0]]), np.array([1]), None, out.low_res_logits)
    low = tiny_sam2_model.image_size // 4  # SAM's low-res logits: a quarter of the model input
    assert out.mask.shape == (96, 128) and out.low_res_logits.shape == (low, low) and out2.mask.dtype == bool
    assert len(baseline.candidates(np.array([[40.0, 40.0]]), np.array([1]), None)) == 3
    with pytest.raises(ValueError, match="plain SAM"):
        predictor.candidates(np.array([[40.0, 40.0]]), np.array([1]), None)


def test_cli_end_to_end(tmp_path, tiny_model, capsys):
    from unsamv2_engine.cli import main as unsamv2
    from unsamv2_engine.io.coco import encode_rle
    from unsamv2_engine.model.checkpoint import save_checkpoint

    write_synthetic_sample(tmp_path / "bench" / "s000")
    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.pt", kind="unsamv2")
    dets = [{"image_id": 1, "segmentation": encode_rle(disc((64, 64), (30, 30), 20)), "score": 0.9}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "out"
    def main(argv: list[str]) -> int:
        return unsamv2(["evaluate", *argv])

    code = main([str(tmp_path / "bench"), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu",
                 "--modes", "level,fixed:0.5", "--max-clicks", "2", "--mask-threshold", "-1", "--levels", "nucleus",
                 "--max-objects-per-image", "1", "--predictions", str(tmp_path / "dets.json"), "--no-sweep", "-q"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["interactive"]["predictor"]["mask_threshold"] == -1.0
    assert len(doc["objects"]) == 2 and {o["level"] for o in doc["objects"]} == {"nucleus"}
    assert doc["whole_image"]["AR@1000"] == pytest.approx(1 / 3)
    assert "NoC@90" in capsys.readouterr().out
    # AR only: no model is loaded; bad inputs exit 2
    assert main([str(tmp_path / "bench"), "-o", str(tmp_path / "ar"), "--predictions", str(tmp_path / "dets.json"),
                 "-q", "--no-plots"]) == 0
    assert "objects" not in json.loads((tmp_path / "ar" / "results.json").read_text())
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert main([str(tmp_path / "bench"), "-o", str(tmp_path / "x"), "--modes", "fixed:7", "-q"]) == 2


def test_synthetic_stack_sample_gives_plane_items(tmp_path):
    folder = tmp_path / "t000"
    folder.mkdir()
    lab = np.zeros((3, 32, 32), np.uint16)
    for t in range(3):
        lab[t][disc((32, 32), (16, 10 + 5 * t), 6)] = 1
    tifffile.imwrite(folder / "labels_cell.tif", lab)
    tifffile.imwrite(folder / "image.tif", (lab * 200).astype(np.uint8))
    (folder / "hierarchy.csv").write_text("frame,label,level,level_name,parent,area,granularity\n"
                                          + "".join(f"{t},1,1,cell,0,113,1.0\n" for t in range(3)))
    ds = load_dataset(folder)
    assert ds.names == ["t000/p1"]
    item = ds[0]
    assert item.image.shape == (32, 32) and np.array_equal(item.objects[0].mask, lab[1] == 1)
    assert item.objects[0].level == "cell" and item.objects[0].parent is None
    from unsamv2_engine.evaluate.datasets import load_synthetic_dataset

    assert load_synthetic_dataset(folder, stack_planes="all").head(2).names == ["t000/p0", "t000/p1"]


def test_cli_module_is_light_and_parses_negative_threshold():
    import argparse
    import subprocess
    import sys

    code = ("import sys, unsamv2_engine.cli.evaluate\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy', 'torch', 'matplotlib'))\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from unsamv2_engine.cli.evaluate import register, run

    parser = argparse.ArgumentParser(prog="unsamv2")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "ds", "-o", "out", "--mask-threshold", "-1", "--granularities", "0.1:1.0:4",
                              "--modes", "oracle,fixed:0.5"])
    assert args.func is run and args.mask_threshold == -1.0 and args.granularities == [0.1, 0.4, 0.7, 1.0]


def test_best_iou_per_truth_on_hand_made_masks():
    from unsamv2_engine.evaluate.metrics import best_iou_per_truth

    a = np.zeros((4, 4), bool)
    a[:2, :2] = True            # 4 px
    b = np.zeros((4, 4), bool)
    b[:2, :] = True             # 8 px, contains a
    c = np.zeros((4, 4), bool)
    c[3, 3] = True              # 1 px, far away
    np.testing.assert_allclose(best_iou_per_truth([b, c], [a, b, c]), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(best_iou_per_truth([c], [a]), [0.0])
    assert best_iou_per_truth([], [a]).tolist() == [0.0] and best_iou_per_truth([a], []).shape == (0,)
