"""ImageSession: predict, sweep, M2M, thresholds, input types, plain-SAM dial, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_cells_image
from unsamv2_engine.prompts import PromptError
from unsamv2_engine.session import ImageSession, sam_candidate_for_granularity

POINT = [[40.0, 40.0]]


@pytest.fixture(scope="module")
def session(tiny_model):
    s = ImageSession(tiny_model)
    s.set_image(make_cells_image())
    return s


@pytest.fixture(scope="module")
def plain_session(tiny_sam2_model):
    s = ImageSession(tiny_sam2_model)
    s.set_image(make_cells_image())
    return s


def test_predict_outputs(session):
    pred = session.predict(POINT, [1], 0.5)
    assert pred.mask.shape == (96, 128) and pred.mask.dtype == bool
    assert pred.low_res_logits.shape == (session.model.low_res_size,) * 2 and pred.low_res_logits.dtype == np.float32
    assert 0.0 <= pred.score <= 1.0 and np.isfinite(pred.object_score)
    assert pred.granularity == 0.5 and pred.area == int(pred.mask.sum())
    assert session.predict(POINT, [1], 0.37).granularity == 0.37  # exactly the value asked for
    assert np.abs(pred.low_res_logits).max() <= 32.0


def test_granularity_changes_the_decoded_mask(session):
    a = session.predict(POINT, [1], 0.1).low_res_logits
    b = session.predict(POINT, [1], 1.0).low_res_logits
    assert np.abs(a - b).max() > 1e-3


def test_sweep_equals_separate_predictions_in_order(session):
    gs = [1.0, 0.1, 0.55, 0.3, 0.8]
    sweep = session.sweep(POINT, [1], gs)
    assert sweep.masks.shape == (5, 96, 128) and list(sweep.granularities) == pytest.approx(gs)
    for i, g in enumerate(gs):
        single = session.predict(POINT, [1], g)
        np.testing.assert_allclose(sweep.low_res_logits[i], single.low_res_logits, atol=1e-4)
        assert sweep.scores[i] == pytest.approx(single.score, abs=1e-5)
        assert sweep.areas[i] == pytest.approx(single.area, abs=5)  # pixels within 1e-4 of the threshold may flip


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_sweep_does_not_depend_on_decode_batch_size(tiny_model, session, batch):
    other = ImageSession(tiny_model, decode_batch_size=batch)
    other.set_features(session.features, session.image_hw)
    gs = list(np.linspace(0.1, 1.0, 7))
    np.testing.assert_allclose(other.sweep(POINT, [1], gs).low_res_logits,
                               session.sweep(POINT, [1], gs).low_res_logits, atol=1e-4)


def test_m2m_is_a_second_pass_with_the_first_logits(session):
    first = session.predict(POINT, [1], 0.3)
    second = session.predict(POINT, [1], 0.3, mask_input=first.low_res_logits)
    m2m = session.predict(POINT, [1], 0.3, m2m=True)
    np.testing.assert_allclose(m2m.low_res_logits, second.low_res_logits, atol=1e-5)
    assert not np.allclose(m2m.low_res_logits, first.low_res_logits, atol=1e-3)


def test_multimask_output_only_changes_the_score(session):
    single = session.predict(POINT, [1], 0.5)
    multi = session.predict(POINT, [1], 0.5, multimask_output=True)
    np.testing.assert_array_equal(single.mask, multi.mask)
    assert single.score != multi.score


def test_lower_threshold_never_shrinks_the_mask(session):
    strict = session.predict(POINT, [1], 0.5, mask_threshold=0.5)
    default = session.predict(POINT, [1], 0.5)
    loose = session.predict(POINT, [1], 0.5, mask_threshold=-1.0)
    assert np.all(strict.mask <= default.mask) and np.all(default.mask <= loose.mask)


def test_no_granularity_token(session):
    pred = session.predict(POINT, [1], None)
    assert pred.granularity is None and pred.mask.shape == (96, 128)
    assert np.abs(pred.low_res_logits - session.predict(POINT, [1], 0.5).low_res_logits).max() > 1e-4


@pytest.mark.parametrize("kind", ["grey_u16", "float", "rgba"])
def test_any_napari_2d_image(tiny_model, kind):
    rgb = make_cells_image()
    grey = rgb[..., 0]
    image = {"grey_u8": grey, "grey_u16": grey.astype(np.uint16) * 200, "float": grey / 255.0,
             "rgba": np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]), "bool": grey > 100}[kind]
    s = ImageSession(tiny_model)
    s.set_image(image)
    assert s.predict(POINT, [1], 0.5).mask.shape == grey.shape


def test_uint16_maps_like_its_uint8_twin(tiny_model):
    """A uint16 image spanning 0..65535 linearly gives the same embedding as its uint8 version."""
    grey8 = np.linspace(0, 255, 96 * 128).reshape(96, 128).round().astype(np.uint8)
    s8, s16 = ImageSession(tiny_model), ImageSession(tiny_model)
    s8.set_image(grey8)
    s16.set_image(grey8.astype(np.uint16) * 257)
    torch.testing.assert_close(s16.features.image_embed, s8.features.image_embed)


def test_non_square_coordinates_are_x_then_y(tiny_model):
    """A point is (x, y): on a wide image, x up to W-0.5 is valid and y beyond H-0.5 is not."""
    s = ImageSession(tiny_model)
    s.set_image(np.zeros((40, 200), np.uint8))
    s.predict([[199.0, 10.0]], [1], 0.5)
    with pytest.raises(PromptError, match="outside"):
        s.predict([[10.0, 199.0]], [1], 0.5)


@pytest.mark.parametrize("points, labels, g, match", [
    ([[500, 10]], [1], 0.5, "outside"),
    ([[-3, 10]], [1], 0.5, "outside"),
    ([[10, 10]], [1], 1.5, r"\[0.1, 1.0\]"),
    ([[10, 10]], [1], 0.05, r"\[0.1, 1.0\]"),
    ([[10, 10]], [1], float("nan"), r"\[0.1, 1.0\]"),
    ([[10, 10]], [1], "big", "number"),
    (np.zeros((0, 2)), [], 0.5, "no points"),
    ([[10, 10, 3]], [1], 0.5, r"shape \[N, 2\]"),
    ([[10, 10]], [1, 1], 0.5, "one per point"),
    ([[10, 10]], [0], 0.5, "positive"),
    ([[10, 10]], [2], 0.5, "1 \\(positive\\) or 0"),
    ([[np.nan, 10]], [1], 0.5, "NaN"),
])
def test_bad_prompts_are_explained(session, points, labels, g, match):
    with pytest.raises(PromptError, match=match):
        session.predict(points, labels, g)


def test_sweep_errors(session):
    with pytest.raises(PromptError, match="at least one granularity"):
        session.sweep(POINT, [1], [])
    with pytest.raises(PromptError, match=r"\[0.1, 1.0\]"):
        session.sweep(POINT, [1], [0.2, 2.0])


def test_no_image_and_bad_mask_input(tiny_model, session):
    with pytest.raises(RuntimeError, match="set_image"):
        ImageSession(tiny_model).predict(POINT, [1], 0.5)
    side = session.model.low_res_size
    with pytest.raises(PromptError, match=f"{side}, {side}"):
        session.predict(POINT, [1], 0.5, mask_input=np.zeros((side // 2, side // 2)))
    with pytest.raises(ValueError, match="too small"):
        ImageSession(tiny_model).set_image(np.zeros((1, 50), np.uint8))


def test_integer_granularity_is_accepted(session):
    """The authors' predictor crashes on gra=1 (an int); we accept it."""
    np.testing.assert_array_equal(session.predict(POINT, [1], 1).mask, session.predict(POINT, [1], 1.0).mask)


# ------------------------------------------------------------------------------ plain SAM 2.1
def test_candidate_bins():
    assert [sam_candidate_for_granularity(g) for g in (0.1, 0.39, 0.4, 0.69, 0.7, 1.0)] == [0, 0, 1, 1, 2, 2]
    assert sam_candidate_for_granularity(None) is None


def test_plain_sam_dial_orders_candidates_by_area(plain_session):
    sweep = plain_session.sweep(POINT, [1], [0.1, 0.5, 1.0])
    low_res_areas = (sweep.low_res_logits > 0).reshape(3, -1).sum(1)
    assert low_res_areas[0] <= low_res_areas[1] <= low_res_areas[2]
    assert len({sweep.low_res_logits[i].tobytes() for i in range(3)}) == 3  # three different candidates
    best = plain_session.predict(POINT, [1], None)
    assert best.score == pytest.approx(float(sweep.scores.max()), abs=1e-6)


def test_plain_sam_m2m_runs(plain_session):
    pred = plain_session.predict(POINT, [1], 0.5, m2m=True)
    assert pred.mask.shape == (96, 128)


# ------------------------------------------------------------------------------ CUDA (lent GPU only)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_agrees_with_cpu(tiny_model, session):
    from unsamv2_engine.model import build_model

    gpu = build_model("tiny", seed=0, device="cuda")
    s = ImageSession(gpu)
    s.set_image(make_cells_image())
    cpu_pred, gpu_pred = session.predict(POINT, [1], 0.5), s.predict(POINT, [1], 0.5)
    agreement = (cpu_pred.mask == gpu_pred.mask).mean()
    assert agreement > 0.97
    assert gpu_pred.score == pytest.approx(cpu_pred.score, abs=0.02)


def test_large_masks_are_upsampled_in_bands_like_the_whole_interpolation():
    """Above the band size the logits are interpolated band by band (a whole slide's coarse view): the mask is
    the whole interpolation's, except pixels whose logit lies within float rounding of the threshold.
    """
    import torch

    from unsamv2_engine.model.decoding import upsample_logits, upsampled_masks

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 256, 256) * 4
    size, threshold = (1111, 1500), 0.3
    whole = upsample_logits(logits, size)[:, 0]
    banded = upsampled_masks(logits, size, threshold, band_pixels=2 * 1500 * 37)  # bands of 37 rows
    assert banded.shape == (2, *size) and banded.dtype == torch.bool
    differ = banded != (whole > threshold)
    assert (whole[differ] - threshold).abs().max().item() < 1e-3 if differ.any() else True
    assert differ.float().mean().item() < 1e-5
    assert torch.equal(upsampled_masks(logits, size, threshold), whole > threshold)  # below the band size: exact
