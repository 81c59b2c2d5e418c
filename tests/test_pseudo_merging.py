"""Conquer-stage merging and NMS (docs/model-reference.md §5.2)."""

from __future__ import annotations

import numpy as np
import pytest

from unsamv2_engine.pseudo import (
    coverage,
    iterative_merge,
    mask_iou,
    protected_nms,
    upsample_mask,
    windowed_mask_nms,
)

# unit vectors with cos(A, B) = 0.85, cos(B, C) = 0.3
A = np.array([1.0, 0.0, 0.0])
B = np.array([0.85, np.sqrt(1 - 0.85**2), 0.0])
_cy = (0.3 - 0.85 * 0.3) / B[1]
C = np.array([0.3, _cy, np.sqrt(1 - 0.3**2 - _cy**2)])


def _three_regions(h: int = 12, w: int = 12) -> tuple[np.ndarray, list[np.ndarray]]:
    feats = np.zeros((h, w, 3))
    regions = [np.zeros((h, w), bool) for _ in range(3)]
    regions[0][:, 0:4] = True
    regions[1][:, 4:8] = True
    regions[2][:, 8:12] = True
    for r, v in zip(regions, (A, B, C)):
        feats[r] = v * 2.5  # scale must not matter (cosine)
    return feats, regions


def _as_set(masks: list[np.ndarray]) -> set[bytes]:
    return {m.tobytes() for m in masks}


def test_vectors_have_chosen_cosines() -> None:
    assert np.dot(A, B) == pytest.approx(0.85)
    assert np.dot(B, C) == pytest.approx(0.3)
    assert np.linalg.norm(C) == pytest.approx(1.0)


def test_three_region_hierarchy() -> None:
    feats, (ra, rb, rc) = _three_regions()
    levels = iterative_merge(feats)
    assert len(levels) == 5
    for lv in levels:
        for m in lv:
            assert m.dtype == bool and m.shape == (12, 12)
    assert _as_set(levels[0]) == _as_set([ra, rb, rc])  # theta 0.9
    assert _as_set(levels[1]) == _as_set([ra | rb, rc])  # theta 0.8
    for k in (2, 3, 4):  # 0.7, 0.6, 0.5: C (cos ~0.31) stays apart
        assert _as_set(levels[k]) == _as_set([ra | rb, rc])


def test_low_theta_merges_everything() -> None:
    feats, regions = _three_regions()
    levels = iterative_merge(feats, thetas=(0.9, 0.2))
    assert _as_set(levels[1]) == _as_set([regions[0] | regions[1] | regions[2]])


def test_adjacency_required() -> None:
    feats = np.zeros((6, 12, 3))
    left = np.zeros((6, 12), bool)
    left[:, :4] = True
    mid = np.zeros((6, 12), bool)
    mid[:, 4:8] = True
    right = np.zeros((6, 12), bool)
    right[:, 8:] = True
    feats[left] = A
    feats[right] = A  # identical features, not touching
    feats[mid] = C  # cos(A, C) = 0.3
    levels = iterative_merge(feats, thetas=(0.9, 0.5))
    assert _as_set(levels[1]) == _as_set([left, mid, right])


def test_min_size_filter() -> None:
    feats = np.tile(A, (5, 5, 1)).astype(float)
    small = np.zeros((5, 5), bool)
    small[0, 0:3] = True  # 3 patches
    feats[small] = C
    levels = iterative_merge(feats, thetas=(0.9,), min_size=4)
    assert _as_set(levels[0]) == _as_set([~small])
    levels = iterative_merge(feats, thetas=(0.9,), min_size=3)
    assert _as_set(levels[0]) == _as_set([~small, small])
    levels = iterative_merge(feats, thetas=(0.9,), min_size=23)
    assert levels[0] == []


def test_valid_mask_respected() -> None:
    feats = np.tile(A, (6, 6, 1)).astype(float)
    valid = np.ones((6, 6), bool)
    valid[:, 3] = False  # a wall of invalid patches splits the grid
    levels = iterative_merge(feats, thetas=(0.9,), valid=valid)
    left = np.zeros((6, 6), bool)
    left[:, :3] = True
    right = np.zeros((6, 6), bool)
    right[:, 4:] = True
    assert _as_set(levels[0]) == _as_set([left, right])
    for m in levels[0]:
        assert not (m & ~valid).any()


def test_deterministic_and_partition() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(16, 16, 8)) + 2.0
    a = iterative_merge(feats, min_size=1)
    b = iterative_merge(feats.copy(), min_size=1)
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(x, y)
    # with min_size=1 each level is a partition, and levels only coarsen
    prev = None
    for lv in a:
        total = np.sum(lv, axis=0)
        np.testing.assert_array_equal(total, np.ones((16, 16)))
        if prev is not None:
            assert len(lv) <= prev
        prev = len(lv)


def test_nine_orthogonal_regions_of_48x48x64_never_merge() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(9, 64))
    lab = (np.arange(48)[:, None] // 16) * 3 + (np.arange(48)[None, :] // 16)
    feats = centres[lab] + 0.3 * rng.normal(size=(48, 48, 64))
    levels = iterative_merge(feats)
    assert len(levels[-1]) >= 9  # random centres are ~orthogonal: regions never merge


def test_a_48x48x64_grid_merges_into_nested_levels() -> None:
    """A full-size crop grid (timings live in benchmarks/): one level per theta, each mask at least
    4 patches, and every mask of a level lies inside one mask of the next (lower-theta) level.
    """
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(48, 48, 64)).astype(np.float32)
    feats += rng.normal(size=(1, 1, 64)).astype(np.float32) * 1.5  # shared component
    levels = iterative_merge(feats)
    assert len(levels) == 5
    assert any(len(level) for level in levels)
    for level in levels:
        for mask in level:
            assert np.asarray(mask).shape == (48, 48) and np.asarray(mask).sum() >= 4
    for finer, coarser in zip(levels, levels[1:]):
        for mask in finer:
            assert any(np.asarray(mask)[np.asarray(c)].sum() == np.asarray(mask).sum() for c in coarser)


def test_coverage_and_upsample() -> None:
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    inst = np.zeros((4, 4), bool)
    inst[:2, :1] = True
    assert coverage(m, inst) == pytest.approx(0.5)
    assert coverage(np.zeros((4, 4), bool), inst) == 0.0
    up = upsample_mask(m, (8, 8))
    assert up.dtype == bool and up.shape == (8, 8)
    assert up.sum() == 16 and up[:4, :4].all()
    up2 = upsample_mask(m, (10, 6))
    assert up2.shape == (10, 6)
    assert up2[:5, :3].all() and not up2[5:].any() and not up2[:, 3:].any()


def _box(y0: int, y1: int, x0: int, x1: int, shape=(20, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_windowed_nms_within_window() -> None:
    big = _box(0, 10, 0, 10)  # 100
    dup = _box(0, 10, 0, 9)  # 90, IoU 0.9 with big
    other = _box(12, 20, 12, 20)  # 64
    keep = windowed_mask_nms([other, dup, big], 0.8, 5)
    assert keep == [2, 0]  # area-descending order, dup removed
    assert mask_iou(big, dup) == pytest.approx(0.9)


def _filler(k: int, area: int) -> np.ndarray:
    """Mask of ``area`` pixels in its own 10x15 block (column block k+1), disjoint from others."""
    m = np.zeros((10, 100), bool)
    block = np.zeros(150, bool)
    block[:area] = True
    m[:, 15 * (k + 1) : 15 * (k + 2)] = block.reshape(10, 15)
    return m


def test_windowed_nms_outside_window_quirk() -> None:
    big = np.zeros((10, 100), bool)
    big[:, :10] = True  # area 100
    dup = np.zeros((10, 100), bool)
    dup[:, :9] = True  # area 90, IoU 0.9 with big
    # 3 fillers between them in area order: dup is 4 positions after big -> inside window
    near = [big, dup] + [_filler(k, 99 - k) for k in range(3)]
    keep = windowed_mask_nms(near, 0.8, 5)
    assert 1 not in keep and keep == [0, 2, 3, 4]
    # 4 fillers between them: dup is 5 positions after big -> outside window, kept (authors' quirk)
    far = [big, dup] + [_filler(k, 99 - k) for k in range(4)]
    keep = windowed_mask_nms(far, 0.8, 5)
    assert keep == [0, 2, 3, 4, 5, 1]
    # a larger window removes it
    assert 1 not in windowed_mask_nms(far, 0.8, 6)


def test_windowed_nms_only_kept_masks_suppress() -> None:
    a = np.zeros((10, 100), bool)
    a[:, :10] = True  # 100
    b = np.zeros((10, 100), bool)
    b[:, :9] = True  # 90, IoU(a, b) = 0.9 -> dropped
    c = np.zeros((10, 100), bool)
    c[:, 1:9] = True  # 80, IoU(a, c) = 0.8 (not > 0.8), IoU(b, c) = 0.889 but b is dropped
    assert windowed_mask_nms([c, b, a], 0.8, 5) == [2, 0]


def test_protected_nms() -> None:
    inst = _box(0, 10, 0, 10)
    near = _box(0, 10, 0, 9)  # IoU 0.9 with instance -> dropped
    p1 = _box(0, 5, 0, 5)
    p1_dup = _box(0, 5, 0, 5)
    p2 = _box(5, 10, 5, 10)
    p2[5, 5] = False
    keep = protected_nms(inst, [near, p1, p2, p1_dup], 0.8, 5)
    assert 0 not in keep
    assert 1 in keep and 2 in keep and 3 not in keep
    assert protected_nms(inst, [], 0.8, 5) == []
    assert windowed_mask_nms([]) == []
