"""The Train tab's classes made on the page: named, filled by drops and webcam bursts, shown, pruned, bounded."""
from __future__ import annotations

import io
import itertools
import re
import shutil
import tempfile
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gradio as gr
import numpy as np
from PIL import Image

from ... import retrain
from ...images import ImageError, Limits, decode
from .uploads import Photo, received_upload

MAX_CLASSES = 50
MAX_PHOTOS = 2000  # a client's photos, all classes and sessions together
MAX_BYTES = 500 * 1024 ** 2  # a client's bytes, likewise: the same as the Train tab's zip
MAX_TOTAL_BYTES = 4 * MAX_BYTES  # every client's classes together
STORED_SIDE = 1024  # px: a photo that is not a JPEG or PNG as sent is stored as a JPEG at most this large
BURST_SECONDS = 0.25  # a webcam burst keeps four frames a second
IDLE_HOURS = 2  # a visitor's classes not trained on after this long are deleted with their session state
THUMBNAILS = 30  # the newest photos of a class shown, as 64 px thumbnails kept in memory; the count says the rest
THUMBNAIL_SIZE = (64, 64)
NAME = re.compile(r"[\w \-]{1,100}")  # what a visitor may type as a class name (no paths, no markup)


class Quota:
    """The photos and bytes of every visitor's classes, by client address and in all: a session costs nothing to
    make (three made-up session ids tripled one visitor's quota), an address does."""

    def __init__(self, photos: int | None = None, per_client: int | None = None, total: int | None = None):
        self.max_photos = photos or MAX_PHOTOS
        self.per_client, self.max_total = per_client or MAX_BYTES, total or MAX_TOTAL_BYTES
        self._photos: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._total = 0
        self._lock = threading.Lock()  # handlers run in worker threads

    def take(self, client: str, size: int) -> None:
        """One photo of `size` bytes for `client`, or gr.Error saying which bound it would pass."""
        with self._lock:
            if self._photos[client] >= self.max_photos:
                raise gr.Error(f"At most {self.max_photos} photos in all: train on these, or remove some.")
            if self._bytes[client] + size > self.per_client:
                raise gr.Error(f"At most {self.per_client // 1024 ** 2} MB of photos in all: train on these, or "
                               "remove some.")
            if self._total + size > self.max_total:
                raise gr.Error("The server holds as many photos of classes as it keeps: try again later.")
            self._photos[client] += 1
            self._bytes[client] += size
            self._total += size

    def give_back(self, client: str, photos: int, size: int) -> None:
        with self._lock:
            self._photos[client] -= photos
            self._bytes[client] -= size
            self._total -= size
            if self._photos[client] <= 0:
                del self._photos[client], self._bytes[client]


class Classes:
    """One visitor's classes: a folder per class in a private folder of the train folder (`.classes-*`), deleted
    when they are trained on, when the visitor's session state expires (IDLE_HOURS) or at app.py's next start.
    Its photos count against `quota` under `client` (the visitor's address)."""

    def __init__(self, train_dir: Path, quota: Quota | None = None, client: str = ""):
        train_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".classes-", dir=train_dir))
        self.quota, self.client = quota or Quota(), client
        self._thumbnails: dict[str, deque[tuple[Image.Image, str]]] = {}  # by class: (thumbnail, file name)
        self._numbers = itertools.count(1)
        # The visitor's totals, kept as photos come and go: a burst adds four a second, and walking up to 2,000
        # files for each one is the folder's whole listing again.
        self._photos, self._bytes = 0, 0

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir()) if self.folder.is_dir() else []

    def counts(self) -> dict[str, int]:
        return {name: sum(1 for _ in (self.folder / name).iterdir()) for name in self.names()}

    def _forget(self, files: list[Path]) -> None:
        """The running totals (and the quota), less these files (about to be deleted)."""
        files = [p for p in files if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        self._photos -= len(files)
        self._bytes -= size
        self.quota.give_back(self.client, len(files), size)

    def add_class(self, label: str) -> str:
        if not NAME.fullmatch(label or ""):
            raise gr.Error("A class name is letters, digits, spaces, - and _ (e.g. \"coffee mugs\").")
        name = retrain.normalise_label(label).strip()  # the label retraining gives it: [a-z0-9 ] only
        if not name:
            raise gr.Error("Type a name for the class, in letters or digits, first.")
        if len(name.encode()) > retrain.data.MAX_LABEL_BYTES:
            raise gr.Error(f"A class name can be at most {retrain.data.MAX_LABEL_BYTES} characters.")
        if name not in self.names() and len(self.names()) >= MAX_CLASSES:
            raise gr.Error(f"At most {MAX_CLASSES} classes.")
        (self.folder / name).mkdir(parents=True, exist_ok=True)  # the folder too, if a training run took it
        self._thumbnails.setdefault(name, deque(maxlen=THUMBNAILS))
        return name

    def check(self, name: Any) -> None:
        """gr.Error unless name is one of these classes (an event may carry anything)."""
        if name not in self.names():
            raise gr.Error("No such class: add it first.")

    def thumbnails(self, name: str | None) -> list[tuple[Image.Image, str]]:
        """The class's newest photos, newest last, each captioned with its file name (what remove() takes)."""
        return list(self._thumbnails.get(name, ())) if name else []

    def add(self, name: str | None, image: bytes | np.ndarray, limits: Limits) -> None:
        """One photo into the class: decoded within the model's limits (a bad file gets the message /service
        sends), stored as it came (a JPEG or PNG) or as a JPEG of at most STORED_SIDE px, within the quota."""
        if not name or name not in self.names():
            raise gr.Error("Add a class, and choose it, first.")
        photo = decode(image, limits)
        stored, suffix = stored_form(image, photo)
        self.quota.take(self.client, len(stored))
        file_name = f"{next(self._numbers):05d}{suffix}"
        (self.folder / name / file_name).write_bytes(stored)
        self._photos, self._bytes = self._photos + 1, self._bytes + len(stored)
        photo.thumbnail(THUMBNAIL_SIZE)
        self._thumbnails[name].append((photo.convert("RGB"), file_name))

    def remove(self, name: str | None, photo: str | None = None) -> None:
        """The class, or one photo of it."""
        self.check(name)
        if photo is None:
            self._forget(list((self.folder / name).iterdir()))
            shutil.rmtree(self.folder / name, ignore_errors=True)
            self._thumbnails.pop(name, None)
        else:
            self._forget([self.folder / name / Path(photo).name])
            (self.folder / name / Path(photo).name).unlink(missing_ok=True)
            kept = [shown for shown in self._thumbnails[name] if shown[1] != Path(photo).name]
            self._thumbnails[name] = deque(kept, maxlen=THUMBNAILS)

    def copy_into(self, image_dir: Path) -> None:
        """Every class's photos into image_dir's class folders (beside a zip's classes of the same names)."""
        for name in self.names():
            shutil.copytree(self.folder / name, image_dir / name, dirs_exist_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._thumbnails.clear()
        self.quota.give_back(self.client, self._photos, self._bytes)
        self._photos, self._bytes = 0, 0


def stored_form(sent: bytes | np.ndarray, photo: Image.Image) -> tuple[bytes, str]:
    """What a class keeps of a photo: the bytes as sent when they are a JPEG or PNG (a re-encoding can be far
    larger: 1.6 MB of striped PNGs became 140 MB of JPEGs), else a JPEG at most STORED_SIDE px on its longer side."""
    kind = Image.open(io.BytesIO(sent)).format if isinstance(sent, bytes) else None  # its header only
    if kind in ("JPEG", "PNG"):
        return sent, ".jpg" if kind == "JPEG" else ".png"
    reduced, buffer = photo.convert("RGB"), io.BytesIO()
    reduced.thumbnail((STORED_SIDE, STORED_SIDE))
    reduced.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), ".jpg"


class Builder(NamedTuple):
    """What the Train tab needs of the section: the State holding the visitor's Classes (None until the first
    class), and the components that show them, for after a training run has taken them."""

    classes: gr.State
    shown: Callable[[Classes | None], tuple]
    outputs: list


class ClassesOnPage:
    """What the section's controls do to a visitor's Classes (held in their session's gr.State): add a class, add
    photos (drops, webcam frames), select and remove them, and show the chosen class."""

    def __init__(self, train_dir: Path, limits: Callable[[], Limits]):
        self.train_dir, self.limits = train_dir, limits
        self.quota = Quota()  # every visitor's classes, by address and in all

    def shown(self, held: Classes | None, name: str | None = None) -> tuple[Any, Any, Any]:
        """The class chooser, the chosen class's thumbnails and the counts of all."""
        if name is not None and not held:
            raise gr.Error("No such class: add it first.")
        if name is not None:
            held.check(name)
        names = held.names() if held else []
        name = name if name in names else (names[0] if names else None)
        counts = held.counts() if held else {}
        summary = " · ".join(f"**{n}** {c} photo{'s' * (c != 1)}" for n, c in counts.items()) or "No classes yet."
        return gr.Dropdown(choices=names, value=name), held.thumbnails(name) if held else [], summary

    def add_class(self, held: Classes | None, label: str, request: gr.Request) -> tuple[Any, ...]:
        held = held or Classes(self.train_dir, self.quota, request.client.host if request and request.client else "")
        name = held.add_class(label)
        return (held, "", *self.shown(held, name))

    def add_files(self, held: Classes | None, name: str | None, files: list | None) -> tuple[Any, ...]:
        if not held:
            raise gr.Error("Add a class, and choose it, first.")
        for path in files or []:
            try:
                held.add(name, Path(received_upload(path)).read_bytes(), self.limits())
            except ImageError as exc:  # the others are still added
                gr.Warning(f"{Path(path).name}: {exc}")
            finally:
                Path(path).unlink(missing_ok=True)  # the class keeps its own copy
        return (None, *self.shown(held, name))

    def add_frame(self, held: Classes | None, name: str | None, frame: bytes | str | None) -> Any:
        if frame is None or not held or not name:
            return gr.skip()
        try:
            held.add(name, frame if isinstance(frame, bytes) else Path(frame).read_bytes(), self.limits())
        except ImageError as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        return self.shown(held, name)[1:]

    def chosen_photo(self, event: gr.SelectData) -> tuple[dict, str]:
        photo = (event.value or {}).get("caption")
        return {"photo": photo}, f"Selected: {photo}" if photo else ""

    def remove_photo(self, held: Classes | None, name: str | None, chosen: dict | None) -> tuple[Any, ...]:
        if not held or not isinstance(chosen, dict) or not isinstance(chosen.get("photo"), str):
            raise gr.Error("Select a photo of the class first.")
        held.remove(name, chosen["photo"])
        return self.shown(held, name)

    def remove_class(self, held: Classes | None, name: str | None) -> tuple[Any, ...]:
        if not held:
            raise gr.Error("No such class: add it first.")
        held.remove(name)
        return self.shown(held)


def class_builder(train_dir: Path, limits: Callable[[], Limits]) -> Builder:
    """The section of the Train tab: limits() gives the serving model's image limits."""
    classes = gr.State(None, time_to_live=IDLE_HOURS * 3600, delete_callback=lambda held: held and held.delete())
    on_page = ClassesOnPage(train_dir, limits)

    with gr.Accordion("Make the classes here: name one, then drop photos on it or capture them", open=True):
        with gr.Row():
            label = gr.Textbox(label="New class", placeholder="e.g. cups", scale=3, elem_id="class-name")
            add = gr.Button("Add class", scale=1, elem_id="class-add")
        counts = gr.Markdown("No classes yet.", elem_id="class-counts")
        with gr.Row():
            chosen_class = gr.Dropdown(label="Class", choices=[], interactive=True, elem_id="class-chosen")
            remove_class_button = gr.Button("Remove this class", size="sm", variant="stop")
        with gr.Row():
            drop = gr.File(label="Drop photos of this class", file_count="multiple", file_types=["image"],
                           elem_id="class-drop")
            # A burst: press the camera's record button; four frames a second go into the class until stopped.
            burst = Photo(sources=["webcam"], streaming=True, type="filepath", label="Capture a burst",
                          elem_id="class-burst", webcam_options=gr.WebcamOptions(mirror=False))
        gallery = gr.Gallery(label="Photos of this class (select one to remove it)", columns=10, height=220,
                             allow_preview=False, elem_id="class-gallery")
        selected = gr.State(None)
        with gr.Row():
            selected_line = gr.Markdown(elem_id="class-selected")
            remove_photo_button = gr.Button("Remove the selected photo", size="sm")

    shown = [chosen_class, gallery, counts]
    add.click(on_page.add_class, [classes, label], [classes, label, *shown], api_visibility="private")
    label.submit(on_page.add_class, [classes, label], [classes, label, *shown], api_visibility="private")
    chosen_class.input(on_page.shown, [classes, chosen_class], shown, api_visibility="private")
    drop.upload(on_page.add_files, [classes, chosen_class, drop], [drop, *shown], api_visibility="private",
                concurrency_limit=4)
    burst.stream(on_page.add_frame, [classes, chosen_class, burst], [gallery, counts], stream_every=BURST_SECONDS,
                 time_limit=60, concurrency_limit=4, show_progress="hidden", api_visibility="private")
    gallery.select(on_page.chosen_photo, None, [selected, selected_line], api_visibility="private")
    remove_photo_button.click(on_page.remove_photo, [classes, chosen_class, selected], shown,
                              api_visibility="private").then(lambda: (None, ""), None, [selected, selected_line],
                                                             api_visibility="private")
    remove_class_button.click(on_page.remove_class, [classes, chosen_class], shown, api_visibility="private")
    return Builder(classes, on_page.shown, shown)
