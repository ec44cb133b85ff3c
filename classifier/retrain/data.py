"""The photos: classes from folder names, retrain.py's stable split, uploaded zips and flagged photos."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import shutil
from pathlib import Path

from ..archives import ArchiveError, unpack
from .options import Options, RetrainError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MAX_NUM_IMAGES_PER_CLASS = 2 ** 27 - 1  # retrain.py's constant: part of how a file name maps to its split


def normalise_label(folder_name: str) -> str:
    """retrain.py's label for a folder: lower case, each run of characters outside [a-z0-9] → one space."""
    return re.sub(r"[^a-z0-9]+", " ", folder_name.lower())


def split_of(file_name: str, validation_percentage: float, testing_percentage: float) -> str:
    """retrain.py's stable split: a hash of the file name (less any _nohash_ suffix), so a file keeps its split
    as the folders grow."""
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    hashed = int(hashlib.sha1(hash_name.encode()).hexdigest(), 16)
    percentage = (hashed % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def list_images(image_dir: Path) -> dict[str, list[Path]]:
    """{label: image files}, classes sorted by folder name. Files without an image suffix are ignored."""
    if not Path(image_dir).is_dir():
        raise RetrainError(f"--image_dir {image_dir} is not a folder")
    folders = sorted(p for p in Path(image_dir).iterdir() if p.is_dir() and not _is_hidden(p))
    classes: dict[str, list[Path]] = {}
    for folder in folders:
        label = normalise_label(folder.name)
        if label in classes:
            raise RetrainError(f"folders {folder.name!r} and another both give the label {label!r}; rename one")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            classes[label] = files
        else:
            log.warning("%s holds no images: not a class", folder)
    if len(classes) < 2:
        raise RetrainError(f"{image_dir} has {len(classes)} class folder(s) with images; at least 2 are needed "
                           "(one subfolder of photos per class)")
    return classes


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"  # macOS zips add __MACOSX/ resource forks


def extract_zip(zip_path: Path, destination: Path, max_bytes: int = 2 * 1024 ** 3,
                max_files: int = 50_000) -> Path:
    """Unpacks an uploaded .zip of class folders (archives.unpack: safely, within max_bytes and max_files) and
    returns the folder that holds them. A zip holding one top folder (as "Compress folder" makes) is looked into."""
    destination = Path(destination).resolve()
    try:
        unpack(zip_path, destination, max_bytes, max_files)
    except ArchiveError as exc:
        raise RetrainError(str(exc).replace("zip the files without", "zip the photos without")) from None
    root = destination
    while True:
        entries = [p for p in root.iterdir() if not _is_hidden(p)]
        if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
            root = entries[0]
        else:
            return root


def read_flagged(flagging_dir: Path) -> list[tuple[Path, str]]:
    """The photos flagged on the page (Gradio's CSVLogger: dataset*.csv beside the saved images), with the label
    the model gave each: [(photo, predicted label)], oldest first. Rows whose photo is gone are left out."""
    rows = []
    for dataset in sorted(Path(flagging_dir).glob("dataset*.csv")):
        with open(dataset, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                photo, predicted = row.get("Photo") or "", row.get("Top labels") or ""
                try:
                    photo = json.loads(photo).get("path", "") if photo.startswith("{") else photo
                    predicted = json.loads(predicted).get("label", "") if predicted.startswith("{") else predicted
                except (ValueError, AttributeError):
                    continue
                path = Path(photo) if Path(photo).is_absolute() else Path(flagging_dir) / photo
                if photo and path.is_file():
                    rows.append((path, predicted or ""))
    return rows


def write_labelled(photos: list[tuple[Path, str]], image_dir: Path) -> None:
    """Copies (photo, label) pairs into image_dir/<label>/, the layout retrain reads; into the existing class
    folder when one has the same label (e.g. "Mammals/" for "mammals"). Empty labels are skipped."""
    for _, label in photos:
        check_folder_name(label.strip())
    image_dir.mkdir(parents=True, exist_ok=True)
    folders = {normalise_label(p.name): p for p in image_dir.iterdir() if p.is_dir()}
    for number, (photo, label) in enumerate(photos):
        if label.strip():
            folder = folders.setdefault(normalise_label(label.strip()), image_dir / label.strip())
            folder.mkdir(exist_ok=True)
            shutil.copy(photo, folder / f"flagged_{number}{photo.suffix.lower()}")


MAX_LABEL_BYTES = 200  # a folder name: file systems allow 255 bytes, and a suffix may be added


def check_folder_name(label: str) -> None:
    """A label becomes a class folder: it must be one plain name, never a path ("/tmp/x", "../x", "a/b")."""
    if not label:
        return
    if len(label.encode()) > MAX_LABEL_BYTES:
        raise RetrainError(f"the label {label[:40]!r}… is {len(label.encode())} bytes long; a label can be at most "
                           f"{MAX_LABEL_BYTES} bytes")
    if label.startswith(".") or any(c in label for c in "/\\\0") or not normalise_label(label).strip():
        raise RetrainError(f"the label {label!r} cannot be a folder name: use letters, digits and spaces, "
                           "without / or \\ or a leading dot")


def images_needed(options: Options) -> int:
    """Per class: enough that each held-out split gets about one image."""
    held_out = [p for p in (options.validation_percentage, options.testing_percentage) if p > 0]
    return max(2, math.ceil(100 / min(held_out))) if held_out else 1


def check_split(counts: dict[str, int], split: dict[str, int], options: Options) -> None:
    """Each split the options ask for gets photos: the split is a hash of each file name, so a few photos per
    class can leave one empty (24 photos, 10 % testing: none at all), and its accuracy would be nan."""
    for name, percentage in (("validation", options.validation_percentage), ("testing", options.testing_percentage),
                             ("training", 100 - options.validation_percentage - options.testing_percentage)):
        if percentage > 0 and not split.get(name):
            needed = max(math.ceil(300 / percentage / len(counts)), images_needed(options) + 1)
            raise RetrainError(
                f"the {sum(counts.values())} photos ({', '.join(f'{label} {n}' for label, n in counts.items())}) "
                f"left no {name} photos for {percentage:g}% {name}; add photos: about {needed} per class are needed "
                f"to give every split some")


def check_class_sizes(counts: dict[str, int], options: Options, what: str = "images") -> None:
    needed = images_needed(options)
    for label, count in counts.items():
        if count < needed:
            raise RetrainError(
                f"class {label!r} has {count} {what}; at least {needed} are needed for "
                f"{options.validation_percentage}% validation and {options.testing_percentage}% testing")
