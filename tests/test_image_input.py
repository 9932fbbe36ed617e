"""ssl_scripts/models/image_input.py: a JPEG far larger than the target is decoded scaled down (draft mode) and stays within a grey
level of the full decode; every other image decodes exactly as before."""
import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps, JpegImagePlugin

from ssl_scripts.models.image_input import DRAFT_GAP, decode_image


def full_decode(path, size):
    """decode_image before draft mode: the whole image decoded, then fitted."""
    with Image.open(path) as img:
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
        return np.asarray(ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC))


def mean_diff(a, b):
    return np.abs(a.astype(np.int16) - b).mean()


def photo(path, size=(500, 375), mode="RGB"):
    """Smoothed noise, as detailed as a photo, saved as a quality 90 JPEG."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)).convert(mode).save(path, quality=90)
    return str(path)


@pytest.fixture
def drafted(monkeypatch):
    """The sizes JPEGs were scaled to by draft mode, one per draft call."""
    sizes, draft = [], JpegImagePlugin.JpegImageFile.draft

    def spy(img, mode, size):
        result = draft(img, mode, size)
        sizes.append(img.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return sizes


@pytest.mark.parametrize("size", [32, 96])
def test_large_jpeg_is_drafted_within_a_grey_level(tmp_path, drafted, size):
    path = photo(tmp_path / "photo.jpg")
    out = decode_image(path, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert len(drafted) == 1 and DRAFT_GAP * size <= min(drafted[0]) < 375  # scaled, not below the gap
    assert mean_diff(out, full_decode(path, size)) < 1.0  # an uncorrected crop (shifted by rounding) is over 1


def test_jpeg_near_the_target_is_decoded_in_full(tmp_path, drafted):
    path = photo(tmp_path / "small.jpg", (60, 45))
    assert np.array_equal(decode_image(path, 32), full_decode(path, 32)) and drafted == []


@pytest.mark.parametrize("size, shorter, scaled", [(32, 96, True), (32, 95, False), (33, 100, True), (33, 99, False)])
def test_draft_stops_at_one_and_a_half_times_the_target(tmp_path, drafted, size, shorter, scaled):
    # Half size, the smallest scale, only while the shorter side stays >= 1.5 * size (49.5 rounds up to 50 for 33).
    path = photo(tmp_path / "edge.jpg", (shorter * 4 // 3, shorter))
    out = decode_image(path, size)
    if scaled:
        assert len(drafted) == 1 and min(drafted[0]) == shorter // 2 >= DRAFT_GAP * size
        assert mean_diff(out, full_decode(path, size)) < 1.0
    else:
        assert drafted == [] and np.array_equal(out, full_decode(path, size))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_are_drafted_to_rgb(tmp_path, drafted, mode):
    path = photo(tmp_path / f"{mode}.jpg", mode=mode)
    with Image.open(path) as img:
        assert img.mode == mode
    out = decode_image(path, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and len(drafted) == 1
    assert mean_diff(out, full_decode(path, 32)) < 1.0
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_grayscale_rgba_and_palette_decode_to_rgb(tmp_path):
    Image.new("L", (10, 20), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (20, 10), (10, 20, 30, 255)).save(tmp_path / "a.png")
    palette = Image.new("P", (20, 10), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.save(tmp_path / "p.png")
    g, a, p = (decode_image(str(tmp_path / name), 8) for name in ("g.png", "a.png", "p.png"))
    assert g.shape == a.shape == p.shape == (8, 8, 3) and g.dtype == a.dtype == p.dtype == np.uint8
    assert (g == 128).all() and (a == [10, 20, 30]).all() and (p == [200, 100, 50]).all()


def test_large_png_decodes_exactly_as_before(tmp_path):
    path = tmp_path / "photo.png"
    Image.open(photo(tmp_path / "photo.jpg")).save(path)
    assert np.array_equal(decode_image(str(path), 32), full_decode(str(path), 32))
