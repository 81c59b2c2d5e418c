"""Tests for unsamv2_engine.intensity: the image -> uint8 RGB contract."""

from __future__ import annotations

import numpy as np
import pytest

from unsamv2_engine.intensity import describe_intensity_rule, to_uint8_rgb


def _check_output(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (*shape, 3)
    assert out.flags.c_contiguous


def test_uint8_rgb_passes_bit_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    out = to_uint8_rgb(image)
    _check_output(out, (7, 5))
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_uint8_low_contrast_is_not_stretched():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    image[0, 0] = 101
    np.testing.assert_array_equal(to_uint8_rgb(image), image)


def test_uint8_grey_repeated_to_three_channels():
    image = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    out = to_uint8_rgb(image)
    _check_output(out, (2, 2))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], image)


def test_rgba_alpha_dropped():
    image = np.zeros((3, 2, 4), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2], image[..., 3] = 10, 20, 30, 7
    out = to_uint8_rgb(image)
    _check_output(out, (3, 2))
    np.testing.assert_array_equal(out, image[..., :3])


def test_rgba_alpha_does_not_enter_the_range():
    image = np.zeros((1, 2, 4), dtype=np.uint16)
    image[0, 0, :3] = 100
    image[0, 1, :3] = 200
    image[..., 3] = 65535
    out = to_uint8_rgb(image)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_uint16_full_range():
    image = np.array([[0, 257, 32896], [65535, 514, 128]], dtype=np.uint16)
    out = to_uint8_rgb(image)
    _check_output(out, (2, 3))
    # (x - 0) * 255 / 65535 = x / 257; 128 / 257 = 0.498 -> 0
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128], [255, 2, 0]])


def test_uint16_narrow_range_is_stretched():
    image = np.array([[1000, 1001, 1002], [1003, 1004, 1005]], dtype=np.uint16)
    out = to_uint8_rgb(image)
    # (x - 1000) * 255 / 5 = 0, 51, 102, 153, 204, 255
    np.testing.assert_array_equal(out[..., 0], [[0, 51, 102], [153, 204, 255]])
    np.testing.assert_array_equal(out[..., 1], out[..., 0])
    np.testing.assert_array_equal(out[..., 2], out[..., 0])


def test_rounding_is_to_nearest():
    # range 0..10: x * 25.5 -> 0, 25.5, 51, 76.5, 102, ... ; rint rounds half to even
    image = np.arange(11, dtype=np.int16).reshape(1, 11)
    out = to_uint8_rgb(image)[0, :, 0]
    np.testing.assert_array_equal(out, np.rint(np.arange(11) * 25.5).astype(np.uint8))


def test_signed_integers_use_joint_min_max():
    image = np.array([[-100, 0], [50, 155]], dtype=np.int32)
    out = to_uint8_rgb(image)
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [150, 255]])


def test_colour_channels_share_one_map():
    image = np.zeros((1, 2, 3), dtype=np.uint16)
    image[0, 0] = [0, 100, 200]
    image[0, 1] = [50, 150, 1000]
    out = to_uint8_rgb(image)
    # joint range 0..1000: x * 0.255
    np.testing.assert_array_equal(out[0, 0], [0, 26, 51])
    np.testing.assert_array_equal(out[0, 1], [13, 38, 255])


def test_float_with_nan_and_inf():
    image = np.array([[np.nan, 0.0, 0.5], [1.0, np.inf, -np.inf]], dtype=np.float32)
    out = to_uint8_rgb(image)
    _check_output(out, (2, 3))
    # range from finite values: 0..1; NaN -> lo -> 0; +inf -> 255; -inf -> 0
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 128], [255, 255, 0]])


def test_float_all_nan_gives_zeros():
    out = to_uint8_rgb(np.full((2, 2), np.nan))
    np.testing.assert_array_equal(out, np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("dtype", [np.uint16, np.int8, np.float64])
def test_constant_image_gives_zeros(dtype):
    out = to_uint8_rgb(np.full((3, 4), 7, dtype=dtype))
    _check_output(out, (3, 4))
    assert not out.any()


def test_contrast_limits_respected_and_clipped():
    image = np.array([[0, 100, 150], [200, 300, 60000]], dtype=np.uint16)
    out = to_uint8_rgb(image, contrast_limits=(100, 200))
    # (x - 100) * 2.55, clipped: 0 -> 0, 150 -> 127.5 -> 128 (half to even), 300 -> 255
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 128], [255, 255, 255]])


def test_contrast_limits_apply_to_uint8():
    image = np.array([[0, 50, 100, 150]], dtype=np.uint8)
    out = to_uint8_rgb(image, contrast_limits=(50.0, 100.0))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 255, 255])


def test_equal_contrast_limits_give_zeros():
    out = to_uint8_rgb(np.arange(6, dtype=np.uint16).reshape(2, 3), contrast_limits=(3, 3))
    assert not out.any()


@pytest.mark.parametrize(
    "limits", [(5, 1), (0, np.nan), (0, np.inf), ("a", "b"), (1,), (1, 2, 3), 5]
)
def test_bad_contrast_limits_raise(limits):
    with pytest.raises(ValueError, match="contrast_limits"):
        to_uint8_rgb(np.zeros((2, 2), np.uint16), contrast_limits=limits)


def test_bool_image():
    image = np.array([[True, False], [False, True]])
    out = to_uint8_rgb(image)
    _check_output(out, (2, 2))
    np.testing.assert_array_equal(out[..., 0], [[255, 0], [0, 255]])


def test_negative_stride_input():
    base = np.arange(24, dtype=np.uint16).reshape(2, 4, 3) * 100
    view = base[::-1, ::-1]
    assert view.strides[0] < 0
    out = to_uint8_rgb(view)
    _check_output(out, (2, 4))
    np.testing.assert_array_equal(out, to_uint8_rgb(np.ascontiguousarray(view)))

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::-1]
    out = to_uint8_rgb(grey)
    _check_output(out, (3, 4))
    np.testing.assert_array_equal(out[..., 2], grey)


def test_non_contiguous_uint8_rgb_passthrough():
    base = np.arange(2 * 6 * 3, dtype=np.uint8).reshape(2, 6, 3)
    view = base[:, ::2]
    out = to_uint8_rgb(view)
    _check_output(out, (2, 3))
    np.testing.assert_array_equal(out, view)


def test_rgb_flag():
    image = np.zeros((4, 5, 3), np.uint8)
    assert to_uint8_rgb(image, rgb=True).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="2D slice"):
        to_uint8_rgb(image, rgb=False)
    with pytest.raises(ValueError, match="rgb=True"):
        to_uint8_rgb(np.zeros((4, 5), np.uint8), rgb=True)
    with pytest.raises(ValueError, match="not 3 or 4"):
        to_uint8_rgb(np.zeros((4, 5, 2), np.uint8), rgb=True)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((5, 4, 6), "2D slice"),
        ((10,), r"\(10,\)"),
        ((2, 3, 4, 3), r"\(2, 3, 4, 3\)"),
        ((0, 4), "empty"),
    ],
)
def test_bad_shapes_raise_helpful_error(shape, expected):
    with pytest.raises(ValueError, match=expected) as info:
        to_uint8_rgb(np.zeros(shape, np.uint8))
    if shape != (0, 4):
        assert "[H, W, 3]" in str(info.value)


def test_complex_dtype_raises():
    with pytest.raises(ValueError, match="np.abs"):
        to_uint8_rgb(np.zeros((2, 2), np.complex64))


def test_input_not_modified():
    image = np.array([[np.nan, 1.0], [2.0, 3.0]])
    before = image.copy()
    to_uint8_rgb(image)
    np.testing.assert_array_equal(image, before)


def test_describe_intensity_rule():
    text = describe_intensity_rule()
    assert isinstance(text, str) and "\n" not in text
    for word in ("8-bit", "contrast limits", "NaN", "alpha", "255"):
        assert word in text


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, unsamv2_engine.intensity, unsamv2_engine.io; "
        "bad = [m for m in ('torch', 'napari', 'qtpy') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
