"""JPEG decoding paths compared: Pillow's draft mode (what classifier.images uses) against simplejpeg's scaled
decode (libjpeg-turbo), on the example photos and on camera-sized JPEGs, each to the model's input tensor."""
from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

CAMERA_SIZES = ((4032, 3024), (1920, 1080))  # a 12-megapixel phone photo; a full-HD frame


def camera_sized(photo: Path) -> dict[str, bytes]:
    """The photo enlarged to camera sizes (bicubic) and saved as JPEG quality 90, as a phone would: the same
    bytes per pixel to decode as a real camera photo, from a photo the project ships."""
    image = Image.open(photo).convert("RGB")
    sized = {}
    for width, height in CAMERA_SIZES:
        buffer = io.BytesIO()
        image.resize((width, height), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        sized[f"{photo.stem}_{width}x{height}.jpeg"] = buffer.getvalue()
    return sized


def compare(model, photos: list[Path], repeats: int) -> dict:
    """Per photo: median ms of each path (decode + resize + scale) and whether both give the same top-1."""
    import simplejpeg

    from classifier import images

    def pillow(data: bytes) -> np.ndarray:
        return model.preprocess(data)

    def turbo(data: bytes) -> np.ndarray:
        # The same rule as Pillow's draft: the smallest DCT scale that keeps twice the input size.
        side = 2 * max(model.input_size)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side, min_height=side)
        return images.to_tensor(Image.fromarray(pixels), model.input_size, model.convention)

    bodies = {p.name: p.read_bytes() for p in photos} | camera_sized(photos[0])
    results = {}
    for name, data in bodies.items():
        timings = {}
        for label, path in (("pillow_ms", pillow), ("simplejpeg_ms", turbo)):
            path(data)
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                path(data)
                samples.append((time.perf_counter() - started) * 1000)
            timings[label] = round(statistics.median(samples), 2)
        tops = model.forward(np.stack([pillow(data), turbo(data)])).argmax(axis=1)
        results[name] = {"kb": len(data) // 1024, **timings, "same_top1": bool(tops[0] == tops[1])}
    return results
