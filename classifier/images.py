"""Image input: any accepted item → RGB Pillow image → the model's input tensor (its convention), within limits."""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Formats a request may carry. Pillow can open more (EPS, PSD, ICO, …); those are refused with 415, because
# every extra decoder is attack surface on a public server and none of them is a photo format users send.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


@dataclass(frozen=True)
class Limits:
    """What one input may be. The defaults admit any real photo and refuse decompression bombs."""

    max_bytes: int = 20 * 1024 * 1024  # 20 MiB of encoded data
    max_pixels: int = 50_000_000  # width × height; a 50-megapixel photo decodes to ~150 MB of RGB
    formats: tuple[str, ...] = ALLOWED_FORMATS


RESIZES = ("squash", "center_crop")
# The input dtypes served: an integer input takes the pixels as they are (0–255); a float input gets
# (x − mean) / std in its own precision.
INTEGER_INPUTS = ("uint8", "int32", "int64")
FLOAT_INPUTS = ("float32", "float16", "float64")
# A model that decodes the photo itself (tf.io.decode_image in its graph, TF Serving's {"b64": …} form) takes a
# string tensor: each element one encoded image.
ENCODED_INPUT = "string"
# What such a model gets as it was sent: every decoder's common ground. Any other accepted photo (and one that
# EXIF rotates, has transparency or 16-bit pixels) is decoded here and sent as PNG, so the model sees what the
# rest of the service would.
PASSED_AS_SENT = ("JPEG", "PNG")


@dataclass(frozen=True)
class InputConvention:
    """How a model wants its pixels, named as TensorFlow's label_image.py names them: each pixel x (0–255) becomes
    (x − mean) / std, after the photo is resized to the input size, whole ("squash") or cropped to the input's
    aspect ratio first ("center_crop"). dtype: the model's input type; an integer one (uint8, int32) takes the
    pixels as they are (no mean, no std)."""

    mean: float | tuple[float, float, float] = 0.0  # one for all channels, or one each (R, G, B): PyTorch's
    std: float | tuple[float, float, float] = 255.0  # the defaults give [0, 1]: retrain.py's graphs and UAI's
    resize: str = "squash"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # a list (from JSON) is kept as a tuple: the convention stays hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def describe(self) -> str:
        """For the start-up line and the page: e.g. "input [-1, 1], centre crop"."""
        if self.dtype == ENCODED_INPUT:
            return "input encoded image (decoded by the model)"
        if self.dtype in INTEGER_INPUTS:
            values = f"{self.dtype} 0–255"
        elif isinstance(self.mean, tuple) or isinstance(self.std, tuple):
            def channels(value: float | tuple) -> str:
                return f"[{', '.join(f'{v:.4g}' for v in value)}]" if isinstance(value, tuple) else f"{value:.4g}"
            values = f"(x − {channels(self.mean)}) / {channels(self.std)}"
        else:
            low, high = (0 - self.mean) / self.std, (255 - self.mean) / self.std
            values = f"[{low:.3g}, {high:.3g}]"
        values += "" if self.dtype in ("float32", *INTEGER_INPUTS) else f" {self.dtype}"
        return f"input {values}" + (", centre crop" if self.resize == "center_crop" else "")


class ImageError(ValueError):
    """An input that cannot be classified; the message says why, in words a user can act on."""


class EmptyImage(ImageError):
    """The input holds no data."""


class CorruptImage(ImageError):
    """The data is not an image, or an image that is truncated or damaged."""


class ImageTooLarge(ImageError):
    """The encoded size or the pixel count is over the limit."""


class UnsupportedFormat(ImageError):
    """An image in a format outside the allowed list."""


def decode(item: Any, limits: Limits = Limits(), size_hint: tuple[int, int] | None = None) -> Image.Image:
    """Turns bytes, a file-like object, a path, an object with `.body`, a PIL image or a numpy array into RGB.

    size_hint: the size the image will be resized to. A JPEG at least four times larger is then decoded at a
    reduced scale (libjpeg's DCT scaling, Pillow's draft mode), never below twice the hint: much faster, and
    the bilinear resize that follows gives nearly the same tensor.
    """
    item = getattr(item, "body", item)  # UAI request objects carry the raw bytes in .body
    if isinstance(item, Image.Image):
        return _to_rgb(_check_pixels(item, limits))
    if isinstance(item, np.ndarray):
        return _to_rgb(_check_pixels(_from_array(item), limits))
    return _to_rgb(_open(read_bytes(item, limits), limits, size_hint), size_hint)


def views(image: Image.Image) -> list[Image.Image]:
    """Eight views of one photo: whole and mirrored, each whole, centred at 80 % and at two opposite corners at
    80 %. More images to compare engines on than the photos alone, each still a real photo."""
    width, height = image.size
    small_w, small_h = int(width * 0.8), int(height * 0.8)
    boxes = [(0, 0, width, height), ((width - small_w) // 2, (height - small_h) // 2,
                                     (width + small_w) // 2, (height + small_h) // 2),
             (0, 0, small_w, small_h), (width - small_w, height - small_h, width, height)]
    return [picture.crop(box) for picture in (image, ImageOps.mirror(image)) for box in boxes]


def limits_of(model: Any) -> Limits:
    """The limits a model's conf sets (RetrainedClassificationModel.limits), else the defaults."""
    return getattr(model, "limits", None) or Limits()


def model_input(item: Any, limits: Limits, size: tuple[int, int], convention: InputConvention) -> np.ndarray:
    """Any accepted input → what a model of this size and convention takes: [H, W, 3] in its convention, or, for a
    model that decodes images itself, the checked bytes. Raises ImageError with a clear message."""
    if convention.dtype == ENCODED_INPUT:
        return to_encoded(item, limits, size)
    return to_tensor(decode(item, limits, size), size, convention)


def to_tensor(image: Image.Image, size: tuple[int, int],
              convention: InputConvention = InputConvention()) -> np.ndarray:
    """The model's input for one image: resized to size=(width, height), bilinear, as the convention says (the whole
    photo, or its centre cropped to the input's aspect ratio), then scaled: (x − mean) / std in the model's float
    type, or the pixels as they are in its integer type."""
    if convention.resize == "center_crop":
        image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    if convention.dtype in INTEGER_INPUTS:
        return np.asarray(image, dtype=convention.dtype)
    tensor = np.asarray(image, dtype=np.float32)
    if convention.mean:  # a scalar, or one a channel (broadcast over the last axis)
        tensor -= np.asarray(convention.mean, np.float32)
    tensor *= np.float32(1.0) / np.asarray(convention.std, np.float32)
    return tensor if convention.dtype == "float32" else tensor.astype(convention.dtype)


def to_encoded(item: Any, limits: Limits = Limits(), size_hint: tuple[int, int] | None = None) -> np.ndarray:
    """An encoded-image model's input for one item: its bytes as sent (a 0-d object array), once decoded here
    within the limits, so that no damaged or oversized image reaches the model (one would fail its whole batch);
    re-encoded as PNG when the model's decoder would see it otherwise than the rest of the service does."""
    item = getattr(item, "body", item)
    if isinstance(item, (Image.Image, np.ndarray)):
        return np.array(_png(decode(item, limits)), dtype=object)
    data = read_bytes(item, limits)
    image = _open(data, limits, size_hint)
    header = Image.open(io.BytesIO(data))  # header only: the orientation _open applied, the mode as stored
    upright = header.getexif().get(ORIENTATION, 1) == 1
    if image.format in PASSED_AS_SENT and upright and header.mode in ("RGB", "L"):
        return np.array(data, dtype=object)
    return np.array(_png(_to_rgb(image, size_hint)), dtype=object)


ORIENTATION = 0x0112  # the EXIF tag


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # fastest: it is decoded again at once
    return buffer.getvalue()


def read_bytes(item: Any, limits: Limits = Limits()) -> bytes:
    """The encoded bytes of bytes, a path or a file-like object, never more than limits.max_bytes + 1 read.

    A path must name a regular file: a named pipe would block the reader and a device (/dev/zero) never ends.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif isinstance(item, (str, os.PathLike)):
        try:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
            fd = os.open(item, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise ImageError(f"cannot read {item}: {exc.strerror}") from None
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"cannot read {item}: not a regular file")
            data = f.read(limits.max_bytes + 1)
    elif hasattr(item, "read"):
        data = item.read(limits.max_bytes + 1)  # one byte over the limit is enough to know it is too large
    else:
        raise ImageError(f"cannot read an image from a {type(item).__name__}")
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is larger than the limit of {limits.max_bytes} bytes")
    return data


def _open(data: bytes, limits: Limits, size_hint: tuple[int, int] | None = None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=limits.formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has too many pixels ({exc})") from None
    except Exception:
        raise _unrecognised(data, limits) from None
    _check_pixels(image, limits)  # from the header, before a single pixel is decoded
    _check_work(data, image)
    if size_hint and image.format == "JPEG":
        side = 2 * max(size_hint)  # square: EXIF rotation may still swap width and height
        image.draft("RGB", (side, side))
    try:
        image.load()  # first frame only, for GIF, TIFF and animated WebP
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the (usual) upright photo
        return image
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has too many pixels ({exc})") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error… on damaged data
        raise CorruptImage(f"the {image.format} image is truncated or damaged ({exc})") from None


# Decoding work, bounded before any is done (issue 38: a 214 KB progressive JPEG whose last scan was repeated
# 300 times took 13 s of a core; a 20 MiB PNG of 1.75 million empty chunks, 9 s).
MAX_SCAN_MEGAPIXELS = 2000  # a JPEG's scans × its megapixels: a 50 MP progressive photo (~10 scans) needs 500
MIN_SCANS_ALLOWED = 100  # any JPEG may have this many scans, whatever its size
PNG_CHUNKS_PER_KIB = 1  # a PNG's chunks: 4,096, and one more per KiB of file (real ones: a few, or ~1 per 8 KiB)


def _check_work(data: bytes, image: Image.Image) -> None:
    """ImageTooLarge for a JPEG of more scans, or a PNG of more chunks, than a photo of its size has."""
    if image.format == "JPEG":
        # 0xFF 0xDA starts a scan (SOS); entropy-coded data escapes every 0xFF, so this counts scans (or more).
        scans, megapixels = data.count(b"\xff\xda"), image.width * image.height / 1e6
        if scans > max(MIN_SCANS_ALLOWED, MAX_SCAN_MEGAPIXELS / max(megapixels, 1e-6)):
            raise ImageTooLarge(f"the JPEG has {scans} scans for {megapixels:.1f} megapixels: too much work to "
                                "decode (a photo has about 10)")
    elif image.format == "PNG":
        allowed = 4096 + PNG_CHUNKS_PER_KIB * len(data) // 1024
        if _png_chunks(data, allowed + 1) > allowed:
            raise ImageTooLarge(f"the PNG has more than {allowed} chunks for {len(data)} bytes: too much work "
                                "to decode")


def _png_chunks(data: bytes, most: int) -> int:
    """How many chunks a PNG holds, counted up to `most` (each chunk: length, type, data, CRC)."""
    offset, count = 8, 0
    while offset + 8 <= len(data) and count < most:
        offset += 12 + int.from_bytes(data[offset:offset + 4], "big")
        count += 1
    return count


def _unrecognised(data: bytes, limits: Limits) -> ImageError:
    """Names the format of data that none of the allowed decoders accepted: 415 if it is an image, else 400."""
    try:
        other = Image.open(io.BytesIO(data)).format  # header only: other formats are identified, never decoded
    except Exception:
        other = "SVG" if b"<svg" in data[:1024].lower() else None
    if other:
        allowed = ", ".join(limits.formats)
        return UnsupportedFormat(f"{other} images are not supported; send one of {allowed}")
    return CorruptImage("the data is not a recognised image")


def _check_pixels(image: Image.Image, limits: Limits) -> Image.Image:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"the image is {width}×{height} pixels, over the limit of {limits.max_pixels} pixels")
    if width == 0 or height == 0:
        raise CorruptImage(f"the image has no pixels ({width}×{height})")
    return image


def _wide_to_rgb(image: Image.Image, size_hint: tuple[int, int] | None) -> Image.Image:
    """16-bit (0–65535), 32-bit integer (the same scale) and float ([0, 1]) pixels → 8-bit RGB.

    Pillow's own conversion clips at 255, which turns a 16-bit photo white, so the scaling is done here. When the
    model wants far fewer pixels, the image is first reduced (box filter) to about twice its input size: a
    7000×7000 16-bit PNG of 109 KB would otherwise become 196 MB of float32 and ~2 s of one core.
    """
    scale = 255.0 if image.mode == "F" else 1 / 257
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # reduce() takes I, not I;16
    if size_hint:
        factor = min(image.width // (2 * size_hint[0]), image.height // (2 * size_hint[1]))
        if factor > 1:
            image = image.reduce(factor)
    array = np.asarray(image, dtype=np.float32) * scale
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be H×W, H×W×3 or H×W×4, not {array.shape}")
    if array.dtype != np.uint8:
        # Floats are taken as [0, 1], the convention of the model's own input.
        array = np.clip(np.nan_to_num(array.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image, size_hint: tuple[int, int] | None = None) -> Image.Image:
    """Every Pillow mode to RGB; transparency is composited on white, 16- and 32-bit data scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _wide_to_rgb(image, size_hint)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
