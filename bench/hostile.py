"""Hostile inputs, made on the spot (no binaries in git): python -m bench.hostile OUT_DIR writes them all.

Each entry: the file name, what it is, and the HTTP status /service must answer. The soak run and the tests
use the same table; README's Reliability section lists it.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "cat.jpeg"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb() -> bytes:
    """A 30000×30000 PNG in a few hundred bytes: its header alone must get it refused."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 90001)) + \
        _png_chunk(b"IEND", b"")


def huge_tiff() -> bytes:
    """A TIFF whose header declares 100000×100000 8-bit grey pixels (and holds 8 bytes of them)."""
    entries = [(256, 4, 1, 100000), (257, 4, 1, 100000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (278, 4, 1, 100000), (279, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd


def bad_crc_png() -> bytes:
    data = bytearray(_encode(Image.open(PHOTO), "PNG"))
    data[33 + 20] ^= 0xFF  # inside the first IDAT chunk's data: its CRC no longer matches
    return bytes(data)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gif_1000_frames() -> bytes:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).convert("P") for _ in range(1000)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.open(PHOTO), "JPEG", exif=exif)


HOSTILE: dict[str, tuple[int, str, Callable[[], bytes]]] = {
    "truncated.jpg": (400, "a JPEG cut in half", lambda: PHOTO.read_bytes()[: len(PHOTO.read_bytes()) // 2]),
    "bad_crc.png": (400, "a PNG with a corrupted chunk (bad CRC)", bad_crc_png),
    "bomb.png": (413, "a decompression bomb: a PNG of a few hundred bytes declaring 30000×30000", decompression_bomb),
    "huge.tiff": (413, "a TIFF declaring 100000×100000 pixels", huge_tiff),
    "frames.gif": (200, "a GIF of 1000 frames (the first is classified)", gif_1000_frames),
    "cmyk.jpg": (200, "a CMYK JPEG", lambda: _encode(Image.open(PHOTO).convert("CMYK"), "JPEG")),
    "sixteen_bit.png": (200, "a 16-bit greyscale PNG", lambda: _encode(
        Image.fromarray((np.asarray(Image.open(PHOTO).convert("L"), np.uint16) * 257)), "PNG")),
    "exif_rotated.jpg": (200, "a JPEG with EXIF orientation 6 (rotated on decode)", exif_rotated_jpeg),
    "one_pixel.png": (200, "a 1×1 PNG", lambda: _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
    "thin.png": (200, "a 10000×1 PNG (extreme aspect ratio)", lambda: _encode(Image.new("L", (10000, 1), 90), "PNG")),
    "drawing.jpg": (415, "an SVG named .jpg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" '
                                                     b'height="9"><rect width="9" height="9"/></svg>'),
    "page.jpg": (400, "an HTML page named .jpg", lambda: b"<!doctype html><html><body>hello</body></html>"),
    "notes.jpg": (400, "a text file named .jpg", lambda: b"just some text\n" * 20),
    "icon.ico": (415, "an ICO image (not an allowed format)", lambda: _encode(Image.open(PHOTO), "ICO")),
    "empty.jpg": (400, "zero bytes", lambda: b""),
    "random.bin": (400, "64 KB of random bytes", lambda: np.random.default_rng(7).bytes(65536)),
}


def make(folder: Path) -> dict[str, int]:
    """Writes every hostile file into folder; returns {file name: expected status}."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (_, _, build) in HOSTILE.items():
        (folder / name).write_bytes(build())
    return {name: status for name, (status, _, _) in HOSTILE.items()}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile")
    for name, status in make(out).items():
        print(f"{status}  {os.path.getsize(out / name):>8} B  {name:<18} {HOSTILE[name][1]}")
