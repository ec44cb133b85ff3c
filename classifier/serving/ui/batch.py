"""The Batch tab: many photos (or a .zip) classified through the same batcher; a sortable gallery and a CSV."""
from __future__ import annotations

import asyncio
import csv
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Iterator

import gradio as gr
from PIL import Image

from ...images import ImageError, Limits, decode, limits_of, read_bytes
from ..batching import Batcher
from .file_gate import new_output_folder
from .picker import PageModels, picked, with_picker
from .uploads import received_upload

MAX_PHOTOS = 500  # photos in one batch, from files and zips together
CHUNK = 64  # photos classified at once: the batcher groups them; progress moves after each chunk
CHUNK_BYTES = 64 * 1024 * 1024  # photo bytes held at once: a chunk is cut short when its photos reach this
MAX_UNPACKED_BYTES = 2 * 1024 ** 3  # all the photos of one batch, read from its files and zips
THUMBNAIL = 192  # px, the gallery's pictures
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
ORDERS = ["as dropped", "by label", "most confident first", "least confident first"]
CSV_KEEP_SECONDS = 600  # Gradio copies each CSV into its cache when it answers; our own copy goes after this


def batch_tab(models: PageModels, picker: gr.Dropdown | None, output_folder: Path) -> None:
    """picker: the page's model picker (the Gradio API's `model_name`). output_folder: where the tab writes what it
    gives out (each batch's CSV and thumbnails)."""

    async def classify_all(paths: list[str] | None, order: str, model_name: str | None = None,
                           progress=gr.Progress()) -> tuple:
        batcher = (await picked(models, model_name)).batcher
        limits = limits_of(batcher.model)
        paths = [received_upload(path) for path in paths or []]
        total = await asyncio.to_thread(count_photos, paths)
        if not total:
            raise gr.Error("Drop photos (JPEG, PNG, …) or a .zip of photos first.")
        rows: list[dict] = []
        # Read, classify and let go a chunk at a time: only one chunk of photo bytes is ever held (a zip of
        # 20 MiB members of zeros would otherwise be unpacked whole into memory first).
        async for part in chunks(read_photos(paths, limits)):
            progress((len(rows), total), desc="Classifying", unit="photos")
            rows += await asyncio.gather(*(classify_one(batcher, name, body, limits) for name, body in part))
        folder = await asyncio.to_thread(new_output_folder, output_folder, "batch-", CSV_KEEP_SECONDS)
        for number, row in enumerate(rows):
            row["number"] = number
            row["thumbnail"] = await asyncio.to_thread(save_thumbnail, row["thumbnail"], folder, number)
        path = await asyncio.to_thread(write_csv, rows, folder, batcher.model.top_k)
        return gallery(rows, order), str(path), rows

    def resort(rows: list[dict] | None, order: str) -> list:
        """The gallery in the new order, from this visitor's rows kept on the server (never from what the client
        sends: a gallery value handed back would be served as files)."""
        return gallery(rows or [], order)

    gr.Markdown(f"Drop up to {MAX_PHOTOS} photos, or a .zip of photos: each is classified (with the requests of "
                "everyone else, in shared model calls). Sort the results, download them as CSV.")
    files = gr.File(label="Photos, or a .zip of photos", file_count="multiple",
                    file_types=["image", ".zip"], elem_id="batch-files")
    order = gr.Radio(ORDERS, value=ORDERS[0], label="Order")
    results = gr.Gallery(label="Top label of each photo", columns=6, height="auto", object_fit="contain",
                         type="filepath", elem_id="batch-gallery")
    table = gr.File(label="CSV: file, top-k labels and probabilities", interactive=False, elem_id="batch-csv")
    # This visitor's rows (names, labels, thumbnails' files: a few kB), for re-sorting; dropped after a while.
    shown_rows = gr.State(time_to_live=CSV_KEEP_SECONDS)

    files.upload(classify_all, with_picker([files, order], picker), [results, table, shown_rows],
                 api_name="classify_batch",
                 concurrency_limit=2)
    order.change(resort, [shown_rows, order], results, api_visibility="private")


def count_photos(paths: list[str]) -> int:
    """How many photos the files and zips hold (from the zips' directories: nothing is unpacked); gr.Error past
    MAX_PHOTOS."""
    total = 0
    for path in paths:
        total += len(photo_members(path)) if Path(path).suffix.lower() == ".zip" else 1
        if total > MAX_PHOTOS:
            raise gr.Error(f"More than {MAX_PHOTOS} photos: send them in several batches.")
    return total


def photo_members(path: str | Path) -> list[zipfile.ZipInfo]:
    """The members of a zip that are photos (by their names' suffixes), hidden files and folders left out."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [m for m in archive.infolist() if not m.is_dir() and not PurePosixPath(m.filename).name
                    .startswith(".") and PurePosixPath(m.filename).suffix.lower() in PHOTO_SUFFIXES]
    except (zipfile.BadZipFile, OSError) as exc:
        raise gr.Error(f"{Path(path).name} is not a readable .zip: {exc}") from None


def read_photos(paths: list[str], limits: Limits) -> Iterator[tuple[str, bytes | ImageError]]:
    """(file name, its bytes or why it cannot be read) for each photo, the members of each zip included, read
    one at a time; gr.Error once they add up to more than MAX_UNPACKED_BYTES."""
    unpacked = 0
    for path in paths:
        for name, body in (zip_photos(Path(path), limits) if Path(path).suffix.lower() == ".zip"
                           else [(Path(path).name, _read(path, limits))]):
            unpacked += len(body) if isinstance(body, bytes) else 0
            if unpacked > MAX_UNPACKED_BYTES:
                raise gr.Error(f"The photos add up to more than {MAX_UNPACKED_BYTES // 2 ** 20} MB: send them in "
                               "several batches.")
            yield name, body


def _read(path: str, limits: Limits) -> bytes | ImageError:
    try:
        return read_bytes(path, limits)
    except ImageError as exc:
        return exc


def zip_photos(path: Path, limits: Limits) -> Iterator[tuple[str, bytes | ImageError]]:
    """The photos in a zip, one at a time, each read only if its size is within the limit (and never more than
    the limit + 1 bytes of it, whatever its header claims)."""
    members = photo_members(path)
    with zipfile.ZipFile(path) as archive:
        for member in members:
            name = PurePosixPath(member.filename).name
            if member.file_size > limits.max_bytes:
                yield name, ImageError(f"larger than the limit of {limits.max_bytes} bytes")
                continue
            try:
                with archive.open(member) as data:
                    body = data.read(limits.max_bytes + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                yield name, ImageError(f"cannot be read from the zip: {exc}")
                continue
            yield name, body


async def chunks(photos: Iterator[tuple[str, bytes | ImageError]]) -> AsyncIterator[list]:
    """The photos in lists of at most CHUNK photos and about CHUNK_BYTES, each read in a worker thread."""
    part: list = []
    held = 0
    try:
        while (photo := await asyncio.to_thread(next, photos, None)) is not None:
            part.append(photo)
            held += len(photo[1]) if isinstance(photo[1], bytes) else 0
            if len(part) == CHUNK or held >= CHUNK_BYTES:
                yield part
                part, held = [], 0
        if part:
            yield part
    finally:
        await asyncio.to_thread(photos.close)  # an error or a stop mid-way: the open zip is closed


async def classify_one(batcher: Batcher, name: str, body: bytes | ImageError, limits: Limits) -> dict:
    """One photo's row: its name, top-k pairs (or the error), and a thumbnail for the gallery."""
    try:
        if isinstance(body, ImageError):
            raise body
        pairs = await batcher.classify(body)
        thumbnail = await asyncio.to_thread(make_thumbnail, body, limits)
        return {"name": name, "pairs": pairs, "error": "", "thumbnail": thumbnail}
    except Exception as exc:
        return {"name": name, "pairs": [], "error": str(exc), "thumbnail": Image.new("RGB", (THUMBNAIL, THUMBNAIL))}


def save_thumbnail(thumbnail: Image.Image, folder: Path, number: int) -> str:
    path = folder / f"{number:03d}.jpg"
    thumbnail.convert("RGB").save(path, "JPEG", quality=85)
    return str(path)


def gallery(rows: list[dict], order: str) -> list[tuple[str, str]]:
    """(thumbnail file, caption) of each row, in the chosen order."""
    return [(row["thumbnail"], caption(row)) for row in sort_rows(rows, order)]


def make_thumbnail(body: bytes, limits: Limits) -> Image.Image:
    image = decode(body, limits, (THUMBNAIL, THUMBNAIL))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def sort_rows(rows: list[dict], order: str) -> list[dict]:
    """The rows in the chosen order; photos that failed come last, whatever the order."""
    def confidence(row: dict) -> float:
        return row["pairs"][0][1] if row["pairs"] else 0.0

    keys = {"by label": lambda row: (not row["pairs"], row["pairs"][0][0].lower() if row["pairs"] else "",
                                     -confidence(row)),
            "most confident first": lambda row: (not row["pairs"], -confidence(row)),
            "least confident first": lambda row: (not row["pairs"], confidence(row))}
    return sorted(rows, key=keys[order]) if order in keys else sorted(rows, key=lambda row: row["number"])


def caption(row: dict) -> str:
    return (f"{row['name']}: {row['pairs'][0][0]} {row['pairs'][0][1]:.0%}" if row["pairs"]
            else f"{row['name']}: {row['error']}")


def write_csv(rows: list[dict], folder: Path, top_k: int) -> Path:
    """file, label_1, probability_1, …, label_k, probability_k, error: one row per photo, in the dropped order."""
    path = folder / time.strftime("classified-%Y%m%d-%H%M%S.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *[f"{kind}_{n}" for n in range(1, top_k + 1) for kind in ("label", "probability")],
                         "error"])
        for row in rows:
            cells = [cell for label, p in row["pairs"][:top_k] for cell in (label, f"{p:.6f}")]
            writer.writerow([row["name"], *cells, *[""] * (2 * top_k - len(cells)), row["error"]])
    return path
