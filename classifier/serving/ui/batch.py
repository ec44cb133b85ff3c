"""The Batch tab: many photos (or a .zip) classified through the same batcher; a sortable gallery and a CSV."""
from __future__ import annotations

import asyncio
import csv
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr
from PIL import Image

from ...images import ImageError, Limits, decode, limits_of, read_bytes
from ..batching import Batcher

MAX_PHOTOS = 500  # photos in one batch, from files and zips together
CHUNK = 64  # photos classified at once: the batcher groups them; progress moves after each chunk
THUMBNAIL = 192  # px, the gallery's pictures
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
ORDERS = ["as dropped", "by label", "most confident first", "least confident first"]
CSV_KEEP_SECONDS = 600  # Gradio copies each CSV into its cache when it answers; our own copy goes after this


def batch_tab(batcher: Batcher) -> None:
    csv_folder = Path(tempfile.mkdtemp(prefix="classifier-batch-"))

    async def classify_all(paths: list[str] | None, order: str, progress=gr.Progress()) -> tuple:
        limits = limits_of(batcher.model)
        photos = await asyncio.to_thread(collect, paths or [], limits)
        if not photos:
            raise gr.Error("Drop photos (JPEG, PNG, …) or a .zip of photos first.")
        rows: list[dict] = []
        for start in range(0, len(photos), CHUNK):
            progress((start, len(photos)), desc="Classifying", unit="photos")
            part = photos[start:start + CHUNK]
            results = await asyncio.gather(*(classify_one(batcher, name, body, limits) for name, body in part))
            rows += results
        for number, row in enumerate(rows):
            row["number"] = number
        path = await asyncio.to_thread(write_csv, rows, csv_folder, getattr(batcher.model, "top_k", 5))
        ordered = sort_rows(rows, order)
        shown = [(row.pop("thumbnail"), caption(row)) for row in ordered]
        return shown, str(path), ordered

    def resort(shown: list | None, rows: list[dict] | None, order: str) -> tuple[list, list[dict]]:
        """The gallery as it is shown (Gradio's cached thumbnails) and its rows, both put in the new order."""
        if not shown or not rows or len(shown) != len(rows):
            return shown or [], rows or []
        pictures = {row["number"]: picture for row, (picture, _) in zip(rows, shown)}
        ordered = sort_rows(rows, order)
        return [(pictures[row["number"]], caption(row)) for row in ordered], ordered

    gr.Markdown(f"Drop up to {MAX_PHOTOS} photos, or a .zip of photos: each is classified (with the requests of "
                "everyone else, in shared model calls). Sort the results, download them as CSV.")
    files = gr.File(label="Photos, or a .zip of photos", file_count="multiple",
                    file_types=["image", ".zip"], elem_id="batch-files")
    order = gr.Radio(ORDERS, value=ORDERS[0], label="Order")
    results = gr.Gallery(label="Top label of each photo", columns=6, height="auto", object_fit="contain",
                         type="filepath", elem_id="batch-gallery")
    table = gr.File(label="CSV: file, top-k labels and probabilities", interactive=False, elem_id="batch-csv")
    # This visitor's rows (names, labels: a few kB), in the gallery's order, for re-sorting; dropped after a while.
    shown_rows = gr.State(time_to_live=CSV_KEEP_SECONDS)

    files.upload(classify_all, [files, order], [results, table, shown_rows], api_name="classify_batch",
                 concurrency_limit=2)
    order.change(resort, [results, shown_rows, order], [results, shown_rows], api_visibility="private")


def collect(paths: list[str], limits: Limits) -> list[tuple[str, bytes | ImageError]]:
    """(file name, its bytes or why it cannot be read) for each photo, the members of each zip included."""
    photos: list[tuple[str, bytes | ImageError]] = []
    for path in paths:
        if Path(path).suffix.lower() == ".zip":
            photos += zip_photos(Path(path), limits, MAX_PHOTOS - len(photos))
        else:
            try:
                photos.append((Path(path).name, read_bytes(path, limits)))
            except ImageError as exc:
                photos.append((Path(path).name, exc))
        if len(photos) > MAX_PHOTOS:
            raise gr.Error(f"More than {MAX_PHOTOS} photos: send them in several batches.")
    return photos


def zip_photos(path: Path, limits: Limits, room: int) -> list[tuple[str, bytes | ImageError]]:
    """The photos in a zip (by their names' suffixes), each read only if its size is within the limit."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise gr.Error(f"{path.name} is not a readable .zip: {exc}") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and PurePosixPath(m.filename).suffix.lower()
                   in PHOTO_SUFFIXES and not PurePosixPath(m.filename).name.startswith(".")]
        if len(members) > room:
            raise gr.Error(f"More than {MAX_PHOTOS} photos: send them in several batches.")
        photos = []
        for member in members:
            name = PurePosixPath(member.filename).name
            if member.file_size > limits.max_bytes:
                photos.append((name, ImageError(f"larger than the limit of {limits.max_bytes} bytes")))
                continue
            try:
                with archive.open(member) as data:
                    photos.append((name, data.read(limits.max_bytes + 1)))
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                photos.append((name, ImageError(f"cannot be read from the zip: {exc}")))
        return photos


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
    for old in folder.glob("*.csv"):  # bounded: earlier CSVs have long been copied into Gradio's cache
        if time.time() - old.stat().st_mtime > CSV_KEEP_SECONDS:
            old.unlink(missing_ok=True)
    path = folder / time.strftime("classified-%Y%m%d-%H%M%S.csv")
    path = path.with_stem(f"{path.stem}-{time.monotonic_ns() % 1_000_000}")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *[f"{kind}_{n}" for n in range(1, top_k + 1) for kind in ("label", "probability")],
                         "error"])
        for row in rows:
            cells = [cell for label, p in row["pairs"][:top_k] for cell in (label, f"{p:.6f}")]
            writer.writerow([row["name"], *cells, *[""] * (2 * top_k - len(cells)), row["error"]])
    return path
