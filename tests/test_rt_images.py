"""Input conversion of the runtime: every accepted input kind, and a typed error naming the item for every bad one.

These tests need no model: they exercise stlpips_rt.io.images directly (the Scorer adds only the model's size checks,
covered in test_rt_scorer.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stlpips_rt.errors import (
    ChannelError,
    ImageRangeError,
    ImageReadError,
    ImageSizeError,
    ImageTooLargeError,
    ImageValueError,
    StlpipsError,
)
from stlpips_rt.io import images

OPTS = images.ImageOptions()


def rgb_uint8(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def expected(u8: np.ndarray) -> np.ndarray:
    """The reference normalisation of DESIGN.md: img / 127.5 - 1, as CHW."""
    return (u8.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)


def test_uint8_hwc_is_scaled_like_the_reference_numbers() -> None:
    u8 = rgb_uint8()
    x = images.load(u8, "a", OPTS)
    assert x.dtype == np.float32 and x.shape == (3, 20, 24)
    np.testing.assert_array_equal(x, expected(u8))


def test_png_path_and_pil_image_give_the_array_result(tmp_path) -> None:
    u8 = rgb_uint8()
    Image.fromarray(u8).save(tmp_path / "a.png")
    np.testing.assert_array_equal(images.load(tmp_path / "a.png", "a", OPTS), expected(u8))
    np.testing.assert_array_equal(images.load(str(tmp_path / "a.png"), "a", OPTS), expected(u8))
    np.testing.assert_array_equal(images.load(Image.fromarray(u8), "a", OPTS), expected(u8))


def test_float_arrays_in_either_declared_range_and_layout_match_uint8() -> None:
    u8 = rgb_uint8()
    ref = expected(u8)
    unit = u8.astype(np.float64) / 255.0
    for arr, rng in ((unit, "0,1"), (unit * 2 - 1, "-1,1"), (unit.transpose(2, 0, 1), "0,1"),
                     ((unit * 2 - 1).transpose(2, 0, 1).astype(np.float32), "[-1, 1]")):
        x = images.load(arr, "a", images.ImageOptions(float_range=rng))
        np.testing.assert_allclose(x, ref, atol=1e-6)


def test_uint16_array_and_16_bit_png_are_scaled_to_full_range(tmp_path) -> None:
    u16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    x = images.load(u16, "a", OPTS)
    np.testing.assert_allclose(x[:, 0, 0], -1.0)
    np.testing.assert_allclose(x[:, 0, 1], 1.0)
    Image.fromarray(u16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(images.load(tmp_path / "g16.png", "g", OPTS), x, atol=1e-6)


def test_grayscale_is_replicated_to_rgb_and_alpha_is_dropped() -> None:
    grey = rgb_uint8()[:, :, 0]
    x = images.load(grey, "g", OPTS)
    assert x.shape == (3, 20, 24)
    np.testing.assert_array_equal(x[0], x[2])
    rgba = np.dstack([rgb_uint8(), np.full((20, 24), 7, np.uint8)])
    np.testing.assert_array_equal(images.load(rgba, "a", OPTS), expected(rgba[:, :, :3]))
    np.testing.assert_array_equal(images.load(Image.fromarray(rgba, "RGBA"), "a", OPTS), expected(rgba[:, :, :3]))
    np.testing.assert_array_equal(images.load(Image.fromarray(grey, "L"), "g", OPTS), x)
    np.testing.assert_array_equal(images.load(grey[:, :, None], "g", OPTS), x)


def test_exif_orientation_is_applied(tmp_path) -> None:
    u8 = rgb_uint8(10, 30)
    img = Image.fromarray(u8)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    x = images.load(tmp_path / "rot.jpg", "rot", OPTS)
    assert x.shape == (3, 30, 10)
    # Orientation 6 displays the stored pixels rotated 90 degrees clockwise; compare with what was stored
    # (through the same JPEG decode, without the tag) rotated that way.
    img.save(tmp_path / "plain.jpg", quality=100)
    stored = images.load(tmp_path / "plain.jpg", "plain", OPTS)
    np.testing.assert_array_equal(x, np.rot90(stored, k=-1, axes=(1, 2)))


def test_resize_is_off_by_default_and_bicubic_when_asked() -> None:
    u8 = rgb_uint8(40, 50)
    assert images.load(u8, "a", OPTS).shape == (3, 40, 50)
    x = images.load(u8, "a", images.ImageOptions(resize=(64, 64)))
    assert x.shape == (3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1


def test_lists_and_4d_batches_expand_to_named_items() -> None:
    batch = np.stack([rgb_uint8(seed=i) for i in range(3)])
    assert [n for _, n in images.expand(batch, "a")] == ["a[0]", "a[1]", "a[2]"]
    assert [n for _, n in images.expand(["x.png", batch[0]], "b")] == ["x.png", "b[1]"]
    assert [n for _, n in images.expand(batch[0], "b")] == ["b"]


# --- errors ------------------------------------------------------------------------------------------------
def test_every_image_error_is_a_stlpips_error_naming_the_item() -> None:
    with pytest.raises(StlpipsError, match=r"^cand\[3\]: "):
        images.load(np.full((8, 8, 3), np.nan, np.float32), "cand[3]", images.ImageOptions(float_range="0,1"))


def test_nan_and_inf_are_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        arr = np.zeros((8, 8, 3), np.float32)
        arr[2, 3, 1] = bad
        with pytest.raises(ImageValueError, match="NaN or Inf"):
            images.load(arr, "a", images.ImageOptions(float_range="-1,1"))


def test_float_outside_declared_range_mentions_the_0_1_vs_minus1_1_mix_up() -> None:
    arr = np.linspace(-1, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    with pytest.raises(ImageRangeError, match=r"\[-1,1\].*mix-up"):
        images.load(arr, "a", images.ImageOptions(float_range="0,1"))
    with pytest.raises(ImageRangeError, match="0..255"):
        images.load(arr * 127 + 128, "a", images.ImageOptions(float_range="-1,1"))


def test_float_without_declared_range_is_refused() -> None:
    with pytest.raises(ImageRangeError, match="float_range"):
        images.load(np.zeros((8, 8, 3), np.float32), "a", OPTS)


def test_wrong_channel_count_is_refused() -> None:
    for shape in ((8, 8, 2), (5, 8, 8), (8, 8, 6)):
        with pytest.raises(ChannelError, match="channel"):
            images.load(np.zeros(shape, np.uint8), "a", OPTS)


def test_unsupported_dtype_and_type_are_refused() -> None:
    with pytest.raises(ImageValueError, match="int64"):
        images.load(np.zeros((8, 8, 3), np.int64), "a", OPTS)
    with pytest.raises(ImageValueError, match="unsupported input type"):
        images.load(b"not an image", "a", OPTS)


def test_missing_undecodable_and_truncated_files_are_read_errors(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        images.load(tmp_path / "nope.png", "nope", OPTS)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match="cannot decode"):
        images.load(tmp_path / "text.png", "text", OPTS)
    Image.fromarray(rgb_uint8(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        images.load(tmp_path / "cut.png", str(tmp_path / "cut.png"), OPTS)


def test_pixel_limit_refuses_large_files_before_decoding_and_large_arrays(tmp_path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    small_limit = images.ImageOptions(max_pixels=5000)
    with pytest.raises(ImageTooLargeError, match="decompression"):
        images.load(tmp_path / "big.png", "big", small_limit)
    with pytest.raises(ImageTooLargeError):
        images.load(np.zeros((100, 100, 3), np.uint8), "big", small_limit)
    with pytest.raises(ImageTooLargeError):
        images.load(Image.new("RGB", (100, 100)), "big", small_limit)


def test_size_checks_name_both_items_and_the_minimum() -> None:
    a = images.load(rgb_uint8(20, 24), "a", OPTS)
    b = images.load(rgb_uint8(20, 20), "b", OPTS)
    with pytest.raises(ImageSizeError, match=r"a vs b: sizes differ \(20x24 vs 20x20"):
        images.check_pair(a, b, "a", "b")
    with pytest.raises(ImageSizeError, match="minimum of 32x32"):
        images.check_size(a, "a", 32)
    with pytest.raises(ImageSizeError, match="exported for 16x16 only"):
        images.check_size(a, "a", 8, (16, 16))


def test_bad_range_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="'0,1' or '-1,1'"):
        images.ImageOptions(float_range="0,255")


def test_size_errors_name_the_option_of_the_interface_that_raised_them() -> None:
    from stlpips_rt.errors import ImageSizeError, describe
    from stlpips_rt.io.images import check_pair, check_size

    a, b = np.zeros((3, 64, 64), np.float32), np.zeros((3, 64, 65), np.float32)
    with pytest.raises(ImageSizeError) as caught:
        check_pair(a, b, "a.png", "b.png")
    assert "pass image=ImageOptions(resize=(H, W))" in str(caught.value)
    assert "pass --resize SIZE" in describe(caught.value, "cli") and "ImageOptions" not in describe(caught.value, "cli")
    assert "the service does not resize" in describe(caught.value, "service")
    with pytest.raises(ImageSizeError) as caught:
        check_size(a, "a.png", 16, static_hw=(32, 48))
    assert "ImageOptions(resize=(32, 48))" in str(caught.value)
    assert "--resize makes square images: scale them to 32x48" in describe(caught.value, "cli")
