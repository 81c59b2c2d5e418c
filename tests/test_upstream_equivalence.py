"""Our engine against upstream ``sam2`` on the same random-weight plain SAM 2.1 model.

* preprocessing equals ``SAM2Transforms(1024, 0.0)`` (torchvision resize + normalise);
* image features, the three multimask candidates (low-res and full-res logits) and their IoUs
  equal ``SAM2ImagePredictor`` for point prompts;
* the torchvision NMS fallback of :mod:`unsamv2_engine.upstream` matches a brute-force NMS,
  and the upstream predictor modules import.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unsamv2_engine.model.decoding import clamp_low_res, decode, upsample_logits
from unsamv2_engine.preprocess import preprocess_image
from unsamv2_engine.session import ImageSession
from unsamv2_engine.upstream import ensure_torchvision_importable, greedy_nms, upstream_image_predictor

PREPROCESS_TOL = 1e-6
DECODE_TOL = 1e-4
IMAGE_HW = (333, 517)  # odd sizes: the point normalisation uses both
PROMPTS = [
    ([[120.0, 80.0]], [1]),
    ([[400.5, 300.25], [60.0, 20.0]], [1, 0]),
    ([[0.0, 0.0], [516.0, 332.0], [250.0, 170.0]], [1, 1, 0]),
]


def textured_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with smooth structure plus noise (not constant, not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    rgb = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 25, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def upstream_transforms():
    ensure_torchvision_importable()
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(1024, 0.0)


@pytest.fixture(scope="module")
def sam2_1024():
    """Plain SAM 2.1 hiera-tiny at the real 1024 px: sam2's image predictor assumes that input size."""
    from unsamv2_engine.model import build_model

    return build_model("tiny", granularity=False, seed=0)


@pytest.fixture(scope="module")
def both_embedded(sam2_1024):
    """(our session, upstream predictor) with the same image set.

    The model's encoder (``SAM2Base.forward_image``, 11 s on one CPU thread at 1024 px) runs once: our
    session runs it, and the upstream predictor's call gets a copy of that output, only after checking
    that its input tensor is bit-identical to ours (upstream's own preprocessing). What each side does
    with the encoder output (backbone feature preparation, no-memory embedding, reshaping) runs on both.
    """
    import copy

    image = textured_rgb(*IMAGE_HW, seed=1)
    sam = sam2_1024.sam
    encoded = {}

    def recording(pixels):
        out = type(sam).forward_image(sam, pixels)
        encoded.update(pixels=pixels.clone(), out=copy.deepcopy(out))
        return out

    def replaying(pixels):
        assert torch.equal(pixels, encoded["pixels"]), "upstream's encoder input differs from ours"
        return copy.deepcopy(encoded["out"])

    try:
        sam.forward_image = recording
        session = ImageSession(sam2_1024)
        session.set_image(image)
        sam.forward_image = replaying
        predictor = upstream_image_predictor(sam2_1024)
        predictor.set_image(image)
    finally:
        del sam.forward_image  # the class's method again
    assert "pixels" in encoded, "our session did not run the encoder through forward_image"
    return session, predictor


# ---------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("hw", [(300, 400), (1024, 1024), (1500, 700), (333, 517), (7, 1001)])
def test_preprocess_equals_sam2_transforms(upstream_transforms, hw):
    rgb = textured_rgb(*hw, seed=hw[0])
    ours = preprocess_image(rgb)
    theirs = upstream_transforms(rgb).unsqueeze(0)
    assert ours.shape == theirs.shape == (1, 3, 1024, 1024)
    diff = float((ours - theirs).abs().max())
    print(f"preprocess {hw}: max abs diff {diff:.3g}")
    assert diff <= PREPROCESS_TOL


# ---------------------------------------------------------------- features and decoding
def test_image_features_equal_upstream(both_embedded):
    session, predictor = both_embedded
    embed_diff = float((predictor._features["image_embed"] - session.features.image_embed).abs().max())
    assert embed_diff <= DECODE_TOL
    for theirs, ours in zip(predictor._features["high_res_feats"], session.features.high_res, strict=True):
        assert theirs.shape == ours.shape
        assert float((theirs - ours).abs().max()) <= DECODE_TOL


def _our_candidates(session: ImageSession, points, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our three multimask candidates: clamped low-res logits [3, 256, 256], full-res logits, IoUs [3]."""
    h, w = session.image_hw
    size = session.model.image_size
    coords = torch.tensor(points, dtype=torch.float32) * torch.tensor([size / w, size / h])
    with torch.inference_mode():
        out = decode(session.model.sam, session.features, coords[None], torch.tensor(labels)[None], None,
                     return_sam_logits=True)
        candidates = out.sam_logits[:, 1:]
        full = upsample_logits(candidates, (h, w))[0]
    return clamp_low_res(candidates[0]), full, out.iou_all[0, 1:]


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_multimask_candidates_equal_upstream(both_embedded, prompt):
    session, predictor = both_embedded
    points, labels = PROMPTS[prompt]
    masks, ious, low_res = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                             multimask_output=True, return_logits=True)
    ours_low, ours_full, ours_iou = _our_candidates(session, points, labels)
    assert low_res.shape == (3, 256, 256) and masks.shape == (3, *IMAGE_HW)
    low_diff = float(np.abs(ours_low.numpy() - low_res).max())
    print(f"prompt {prompt}: low-res diff {low_diff:.3g}, full-res diff {np.abs(ours_full.numpy() - masks).max():.3g}")
    np.testing.assert_allclose(ours_low.numpy(), low_res, atol=DECODE_TOL, rtol=0)
    np.testing.assert_allclose(ours_full.numpy(), masks, atol=DECODE_TOL, rtol=0)
    np.testing.assert_allclose(ours_iou.numpy(), ious, atol=DECODE_TOL, rtol=0)


def test_session_best_candidate_is_upstream_best(both_embedded):
    """granularity=None on plain SAM returns upstream's highest-IoU multimask candidate."""
    session, predictor = both_embedded
    points, labels = PROMPTS[1]
    masks, ious, low_res = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels),
                                             multimask_output=True)
    best = int(np.argmax(ious))
    pred = session.predict(points, labels, None)
    np.testing.assert_allclose(pred.low_res_logits, low_res[best], atol=DECODE_TOL, rtol=0)
    assert abs(pred.score - float(ious[best])) <= DECODE_TOL
    mismatch = int((pred.mask != masks[best]).sum())
    assert mismatch <= 0.001 * pred.mask.size  # only pixels whose logit is within float noise of 0


# ---------------------------------------------------------------- torchvision fallback
def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Reference NMS: pairwise IoUs in float64, visit by score (stable), drop IoU > threshold."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(_box_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping boxes with some duplicated boxes and tied scores (float64)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randint(0, n // 3 + 1, (n,), generator=gen).to(torch.float64)  # many ties
    boxes[n // 2:n // 2 + 5] = boxes[:5]  # exact duplicates
    return boxes, scores


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_greedy_nms_matches_brute_force(threshold):
    boxes, scores = random_boxes(150, seed=int(threshold * 10))
    expected = brute_force_nms(boxes.numpy(), scores.numpy(), threshold)
    assert greedy_nms(boxes, scores, threshold).tolist() == expected


def test_torchvision_nms_and_upstream_imports():
    ensure_torchvision_importable()
    import torchvision
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: F401
    from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: F401

    boxes, scores = random_boxes(120, seed=7)
    expected = brute_force_nms(boxes.numpy(), scores.numpy(), 0.5)
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == expected
    assert torchvision.ops.nms(boxes.float(), scores.float(), 0.5).dtype == torch.int64
    assert torchvision.ops.nms(torch.empty(0, 4), torch.empty(0), 0.5).numel() == 0
    classes = torch.arange(120) % 3
    kept = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    for c in range(3):
        idx = torch.nonzero(classes == c)[:, 0]
        per_class = idx[brute_force_nms(boxes[idx].numpy(), scores[idx].numpy(), 0.5)]
        assert sorted(kept[classes[kept] == c].tolist()) == sorted(per_class.tolist())
