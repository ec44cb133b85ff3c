"""Decoding and preprocessing: every format and mode to RGB, EXIF orientation, transparency, limits."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from classifier.images import (CorruptImage, EmptyImage, ImageError, ImageTooLarge, Limits, UnsupportedFormat,
                               decode, to_tensor)
from conftest import PHOTOS, encode, solid

RED = (230, 20, 20)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_allowed_format_decodes_to_rgb(fmt):
    image = decode(encode(solid("red"), fmt))
    assert image.mode == "RGB" and image.size == (32, 24)
    assert np.abs(np.asarray(image, dtype=int)[12, 16] - RED).max() <= 12  # lossy formats may drift a little


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    source = solid("red").convert("L") if mode in ("I;16", "I", "F", "1") else solid("red")
    if mode == "I;16":
        image = Image.fromarray(np.full((24, 32), 40000, np.uint16))
    elif mode == "I":
        image = Image.fromarray(np.full((24, 32), 40000, np.int32))
    elif mode == "F":
        image = Image.fromarray(np.full((24, 32), 0.5, np.float32))
    else:
        image = source.convert(mode)
    rgb = decode(image)
    assert rgb.mode == "RGB" and rgb.size == (32, 24)
    pixel = np.asarray(rgb)[5, 5]
    if mode in ("I;16", "I"):
        assert tuple(pixel) == (156, 156, 156)  # 40000 / 257, scaled, not clipped to white
    elif mode == "F":
        assert tuple(pixel) == (128, 128, 128)


def test_sixteen_bit_png_file_is_scaled_not_clipped():
    data = encode(Image.fromarray(np.full((10, 10), 1000, np.uint16)), "PNG")
    assert tuple(np.asarray(decode(data))[0, 0]) == (4, 4, 4)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgb = np.asarray(decode(encode(rgba, "PNG")))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.info["transparency"] = 0
    assert tuple(np.asarray(decode(encode(palette, "PNG")))[1, 1]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    decoded = decode(encode(image, "JPEG", exif=exif, quality=95))
    assert decoded.size == (10, 20)
    top, bottom = np.asarray(decoded, dtype=int)[2, 5], np.asarray(decoded, dtype=int)[17, 5]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_multi_frame_gif_uses_the_first_frame():
    frames = [solid("green"), solid("red"), solid("blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 3
    pixel = np.asarray(decode(data), dtype=int)[5, 5]
    assert pixel[1] > 200 > pixel[0]


def test_tiny_and_extreme_aspect_images():
    for size in [(1, 1), (5000, 1), (1, 3000)]:
        tensor = to_tensor(decode(encode(Image.new("RGB", size, RED), "PNG")), (224, 224))
        assert tensor.shape == (224, 224, 3)


def test_to_tensor_is_bilinear_whole_image_in_unit_range():
    photo = decode(PHOTOS / "chelsea.png")
    tensor = to_tensor(photo, (224, 224))
    assert tensor.dtype == np.float32 and tensor.shape == (224, 224, 3)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    expected = np.asarray(photo.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    assert np.allclose(tensor, expected, atol=1e-6)


@pytest.mark.parametrize("data, error, message", [
    (b"", EmptyImage, "empty"),
    (b"hello, world", CorruptImage, "not a recognised image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', UnsupportedFormat, "SVG images are not"),
])
def test_bad_bytes(data, error, message):
    with pytest.raises(error, match=message):
        decode(data)


def test_truncated_and_damaged_files():
    jpeg = (PHOTOS / "cat.jpeg").read_bytes()
    with pytest.raises(CorruptImage, match="JPEG image is truncated or damaged"):
        decode(jpeg[: len(jpeg) // 2])
    png = bytearray((PHOTOS / "coffee.png").read_bytes())
    png[len(png) // 2: len(png) // 2 + 64] = b"\x00" * 64
    with pytest.raises(CorruptImage):
        decode(bytes(png))


def test_formats_outside_the_allowed_list_are_refused():
    with pytest.raises(UnsupportedFormat, match="ICO images are not supported"):
        decode(encode(solid("red", (16, 16)), "ICO"))
    with pytest.raises(UnsupportedFormat, match="GIF images are not supported; send one of JPEG, PNG"):
        decode(encode(solid("red"), "GIF"), Limits(formats=("JPEG", "PNG")))


def test_size_limits():
    with pytest.raises(ImageTooLarge, match="larger than the limit of 100 bytes"):
        decode(encode(solid("red"), "BMP"), Limits(max_bytes=100))
    with pytest.raises(ImageTooLarge, match="32×24 pixels, over the limit of 500"):
        decode(encode(solid("red"), "PNG"), Limits(max_pixels=500))
    with pytest.raises(ImageTooLarge):
        decode(solid("red"), Limits(max_pixels=500))  # PIL images and arrays are held to the same limit


def test_arrays():
    assert decode(np.zeros((4, 5), np.uint8)).size == (5, 4)
    assert tuple(np.asarray(decode(np.ones((4, 5, 3), np.float32)))[0, 0]) == (255, 255, 255)
    with pytest.raises(ImageError, match="H×W, H×W×3 or H×W×4"):
        decode(np.zeros((4, 5, 7), np.uint8))


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result(default_model):
    big = decode(PHOTOS / "chelsea.png").resize((3608, 2400), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=92)
    reduced = decode(data, size_hint=(224, 224))
    assert reduced.size == (902, 600)  # 1/4 scale: the smallest that stays ≥ 448 on each side
    assert decode(data).size == (3608, 2400)
    fast, full = (to_tensor(image, (224, 224)) for image in (reduced, decode(data)))
    assert np.abs(fast - full).mean() < 0.01
    assert default_model.execute([data], 1)[0][0][0] == default_model.execute([big], 1)[0][0][0]
