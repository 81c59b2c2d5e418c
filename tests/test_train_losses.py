"""unsamv2_engine.train: SAM 2 style losses (FACTS §4.5) and click simulation (FACTS §4.3).

Hand-computed values on tiny tensors; no model is built, so this runs in well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unsamv2_engine.train import (
    LOSS_WEIGHTS,
    batch_correction_clicks,
    batch_initial_clicks,
    dice_loss,
    iou_l1_loss,
    objectness_loss,
    sample_correction_click,
    sample_point_in_mask,
    sigmoid_focal_loss,
    unsamv2_loss,
)


def _t(values, h=1):
    """[N][pixels] nested list -> [N, 1, h, W] float tensor."""
    x = torch.tensor(values, dtype=torch.float32)
    return x.reshape(x.shape[0], 1, h, -1)


# ----------------------------------------------------------------------------------------------- losses

def test_focal_two_pixels_by_hand():
    # logits 0 -> p = 0.5, ce = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 (pos), 0.75 (neg).
    loss = sigmoid_focal_loss(_t([[0.0, 0.0]]), _t([[1.0, 0.0]]))
    assert loss.shape == (1,)
    expected = 0.5 * (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_nonzero_logits_by_hand_and_per_object():
    p = 1 / (1 + math.exp(-2.0))
    pos = 0.25 * (1 - p) ** 2 * -math.log(p)          # logit 2, target 1
    neg = 0.75 * p ** 2 * -math.log(1 - p)            # logit 2, target 0
    loss = sigmoid_focal_loss(_t([[2.0, 2.0], [2.0, 2.0]]), _t([[1.0, 0.0], [1.0, 1.0]]))
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert loss[1].item() == pytest.approx(pos, rel=1e-6)
    # gamma 0, alpha -1 is plain BCE
    bce = sigmoid_focal_loss(_t([[2.0, -1.0]]), _t([[1.0, 0.0]]), alpha=-1, gamma=0)
    ref = F.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
    assert bce.item() == pytest.approx(ref.item(), rel=1e-6)


def test_dice_values():
    # p = [.5, .5], t = [1, 0]: 1 - (2*.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice_loss(_t([[0.0, 0.0]]), _t([[1.0, 0.0]])).item() == pytest.approx(1 / 3, rel=1e-6)
    tgt = torch.zeros(1, 1, 8, 8)
    tgt[..., 2:6, 2:6] = 1
    perfect = dice_loss((tgt * 2 - 1) * 50, tgt)
    inverse = dice_loss((1 - 2 * tgt) * 50, tgt)
    assert perfect.shape == (1,)
    assert perfect.item() == pytest.approx(0.0, abs=1e-5)
    # inverse: 1 - 1 / (48 + 16 + 1) = 64/65
    assert inverse.item() == pytest.approx(64 / 65, rel=1e-5)
    assert inverse.item() > 0.98


def test_iou_l1_exact():
    logits = -torch.ones(2, 1, 4, 4)
    tgt = torch.zeros(2, 1, 4, 4)
    logits[0, 0, 0, 0:4] = 1.0          # pred: 4 pixels of row 0
    tgt[0, 0, 0, 2:4] = 1               # gt: 2 of them + 2 more in row 1
    tgt[0, 0, 1, 2:4] = 1
    # object 0: inter 2, union 6 -> IoU 1/3; object 1: both empty -> union clamped to 1 -> IoU 0
    pred_iou = torch.tensor([0.5, 0.25])
    loss = iou_l1_loss(pred_iou, logits, tgt)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(abs(0.5 - 1 / 3), abs=1e-7)
    assert loss[1].item() == pytest.approx(0.25, abs=1e-7)
    # logit exactly 0 is not foreground (> 0)
    z = torch.zeros(1, 1, 2, 2)
    assert iou_l1_loss(torch.tensor([0.0]), z, torch.ones(1, 1, 2, 2)).item() == 0.0


def test_objectness_is_bce():
    logits = torch.tensor([[1.5], [-0.3], [4.0]])
    present = torch.tensor([True, False, False])
    loss = objectness_loss(logits, present)
    ref = F.binary_cross_entropy_with_logits(logits[:, 0], present.float(), reduction="none")
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, ref)


def _random_case(seed=0, n=3, hw=8):
    g = torch.Generator().manual_seed(seed)
    tgt = (torch.rand(n, 1, hw, hw, generator=g) > 0.5).float()
    steps = [(torch.randn(n, 1, hw, hw, generator=g), torch.rand(n, generator=g), torch.randn(n, 1, generator=g))
             for _ in range(4)]
    return steps, tgt


def test_weighting_20_1_1_1_and_sum_over_steps():
    assert LOSS_WEIGHTS == {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}
    steps, tgt = _random_case()
    n = tgt.shape[0]
    out = unsamv2_loss(steps, tgt)
    present = tgt.flatten(1).any(-1)
    assert bool(present.all())
    m = sum(sigmoid_focal_loss(lg, tgt).sum() for lg, _, _ in steps).item() / n
    d = sum(dice_loss(lg, tgt).sum() for lg, _, _ in steps).item() / n
    i = sum(iou_l1_loss(pi, lg, tgt).sum() for lg, pi, _ in steps).item() / n
    c = sum(objectness_loss(ol, present).sum() for _, _, ol in steps).item() / n
    assert out["loss_mask"] == pytest.approx(m, rel=1e-5)
    assert out["loss_dice"] == pytest.approx(d, rel=1e-5)
    assert out["loss_iou"] == pytest.approx(i, rel=1e-5)
    assert out["loss_class"] == pytest.approx(c, rel=1e-5)
    assert isinstance(out["loss_mask"], float)
    assert torch.is_tensor(out["loss"]) and out["loss"].dim() == 0
    assert out["loss"].item() == pytest.approx(20 * m + d + i + c, rel=1e-5)
    # the total is additive over steps
    parts = [unsamv2_loss([s], tgt)["loss"].item() for s in steps]
    assert out["loss"].item() == pytest.approx(sum(parts), rel=1e-5)


def test_empty_target_contributes_only_objectness():
    logits = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    tgt = torch.zeros(2, 1, 6, 6)
    tgt[0, 0, 1:4, 1:4] = 1                 # object 0 non-empty, object 1 empty
    pred_iou = torch.tensor([0.7, 0.9])
    obj = torch.tensor([[0.4], [0.8]])
    out = unsamv2_loss([(logits, pred_iou, obj)], tgt)
    present = torch.tensor([True, False])
    m = sigmoid_focal_loss(logits, tgt)[0].item() / 2
    d = dice_loss(logits, tgt)[0].item() / 2
    i = iou_l1_loss(pred_iou, logits, tgt)[0].item() / 2
    c = objectness_loss(obj, present).sum().item() / 2
    assert out["loss_mask"] == pytest.approx(m, rel=1e-5)
    assert out["loss_dice"] == pytest.approx(d, rel=1e-5)
    assert out["loss_iou"] == pytest.approx(i, rel=1e-5)
    assert out["loss_class"] == pytest.approx(c, rel=1e-5)
    # all-empty batch: only the objectness term, normalised by N
    empty = torch.zeros_like(tgt)
    out2 = unsamv2_loss([(logits, pred_iou, obj)], empty)
    assert out2["loss_mask"] == out2["loss_dice"] == out2["loss_iou"] == 0.0
    assert out2["loss"].item() == pytest.approx(objectness_loss(obj, torch.zeros(2)).sum().item() / 2, rel=1e-6)
    # the empty object's mask logits and IoU prediction receive no gradient
    lg = logits.clone().requires_grad_(True)
    pi = pred_iou.clone().requires_grad_(True)
    ob = obj.clone().requires_grad_(True)
    unsamv2_loss([(lg, pi, ob)], tgt)["loss"].backward()
    assert torch.all(lg.grad[1] == 0) and lg.grad[0].abs().sum() > 0
    assert pi.grad[1] == 0 and pi.grad[0] != 0
    assert torch.all(ob.grad != 0)


def test_gradients_flow_and_finite():
    steps, tgt = _random_case(seed=3)
    leaves = []
    req = []
    for lg, pi, ol in steps:
        t = (lg.clone().requires_grad_(True), pi.clone().requires_grad_(True), ol.clone().requires_grad_(True))
        leaves.extend(t)
        req.append(t)
    out = unsamv2_loss(req, tgt)
    assert out["loss"].requires_grad
    out["loss"].backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    # extreme logits stay finite
    big = torch.full((1, 1, 4, 4), 1e4, requires_grad=True)
    o = unsamv2_loss([(big, torch.tensor([0.5], requires_grad=True), torch.tensor([[1e4]]))], torch.zeros(1, 1, 4, 4))
    assert torch.isfinite(o["loss"])


def test_num_objects_override():
    steps, tgt = _random_case(seed=5)
    a = unsamv2_loss(steps, tgt)["loss"].item()
    b = unsamv2_loss(steps, tgt, num_objects=6)["loss"].item()
    assert b == pytest.approx(a * 3 / 6, rel=1e-5)


# ----------------------------------------------------------------------------------------------- clicks

def _ring_case():
    gt = torch.zeros(16, 16, dtype=torch.bool)
    gt[4:12, 4:12] = True
    pred = torch.zeros(16, 16, dtype=torch.bool)
    pred[6:14, 6:14] = True                 # FN: L-shape top-left of gt, FP: L-shape bottom-right
    return pred, gt


def test_point_in_mask_region_uniform_and_errors():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2, 3] = mask[7, 9] = mask[5, 0] = True
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(1000):
        x, y = sample_point_in_mask(mask, g)
        assert mask[y, x]
        counts[(x, y)] = counts.get((x, y), 0) + 1
    assert set(counts) == {(3, 2), (9, 7), (0, 5)}
    assert all(250 < c < 420 for c in counts.values())
    with pytest.raises(ValueError):
        sample_point_in_mask(torch.zeros(4, 4, dtype=torch.bool), g)


def test_click_determinism():
    pred, gt = _ring_case()
    a = [sample_correction_click(pred, gt, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    seq1 = [sample_correction_click(pred, gt, g1) for _ in range(20)]
    seq2 = [sample_correction_click(pred, gt, g2) for _ in range(20)]
    assert seq1 == seq2 and len(set(seq1)) > 1
    gts = torch.stack([gt, gt, pred])
    p1, l1 = batch_initial_clicks(gts, torch.Generator().manual_seed(3))
    p2, l2 = batch_initial_clicks(gts, torch.Generator().manual_seed(3))
    assert torch.equal(p1, p2) and torch.equal(l1, l2)
    preds = torch.stack([pred, gt, gt])
    q1, m1 = batch_correction_clicks(preds, gts, torch.Generator().manual_seed(4))
    q2, m2 = batch_correction_clicks(preds, gts, torch.Generator().manual_seed(4))
    assert torch.equal(q1, q2) and torch.equal(m1, m2)


def test_correction_clicks_land_in_error_with_region_labels():
    pred, gt = _ring_case()
    fn, fp = gt & ~pred, pred & ~gt
    g = torch.Generator().manual_seed(0)
    n_pos = n_neg = 0
    for _ in range(1000):
        x, y, label = sample_correction_click(pred, gt, g)
        assert bool(fn[y, x] or fp[y, x])
        assert label == (1 if fn[y, x] else 0)
        n_pos += label == 1
        n_neg += label == 0
    # |FN| == |FP| == 28: roughly balanced
    assert int(fn.sum()) == int(fp.sum()) == 28
    assert 400 < n_pos < 600 and n_pos + n_neg == 1000
    # only FN -> always positive; only FP -> always negative
    only_fn = gt.clone()
    only_fn[4:6, 4:12] = False              # pred misses the top two rows of gt
    for _ in range(50):
        x, y, label = sample_correction_click(only_fn, gt, g)
        assert label == 1 and 4 <= y < 6 and 4 <= x < 12
    bigger = gt.clone()
    bigger[0, :] = True
    for _ in range(50):
        x, y, label = sample_correction_click(bigger, gt, g)
        assert label == 0 and y == 0


def test_perfect_prediction_gives_background_negative():
    _, gt = _ring_case()
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(1000):
        x, y, label = sample_correction_click(gt, gt, g)
        assert label == 0 and not gt[y, x]
        seen.add((x, y))
    assert len(seen) > 100                  # spread over the 192 background pixels
    full = torch.ones(5, 5, dtype=torch.bool)
    x, y, label = sample_correction_click(full, full, g)
    assert label == 1 and full[y, x]


def test_batched_shapes_regions_and_labels():
    pred, gt = _ring_case()
    g = torch.Generator().manual_seed(2)
    gts = torch.stack([gt, pred, gt]).unsqueeze(1)          # [N, 1, H, W] accepted
    pts, lbl = batch_initial_clicks(gts, g)
    assert pts.shape == (3, 1, 2) and pts.dtype == torch.float32
    assert lbl.shape == (3, 1) and torch.all(lbl == 1)
    for i in range(3):
        x, y = pts[i, 0].long().tolist()
        assert gts[i, 0, y, x]
    preds = torch.stack([pred, pred, gt])                   # error, perfect, error-free
    gts3 = torch.stack([gt, pred, gt])
    for _ in range(200):
        pts, lbl = batch_correction_clicks(preds, gts3, g)
        assert pts.shape == (3, 1, 2) and lbl.shape == (3, 1)
        x, y = pts[0, 0].long().tolist()
        assert lbl[0, 0].item() == (1 if gt[y, x] and not pred[y, x] else 0)
        assert gt[y, x] != pred[y, x]
        x, y = pts[1, 0].long().tolist()
        assert lbl[1, 0].item() == 0 and not pred[y, x]
        x, y = pts[2, 0].long().tolist()
        assert lbl[2, 0].item() == 0 and not gt[y, x]
    with pytest.raises(ValueError):
        batch_initial_clicks(torch.zeros(2, 4, 4, dtype=torch.bool), g)
