"""The Flag button: the photo on the page and its labels saved for retraining, within a count and a byte budget."""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ...images import ImageError, Limits, decode
from .uploads import received_upload

MAX_LABEL_CHARS = 200  # a label the model gave is a class name; anything longer did not come from the page


@dataclass(frozen=True)
class FlagBudget:
    """What the flagging folder may hold: photos and bytes. Past either, Flag is refused (nothing is deleted:
    flagged photos are a user's data; move or train on them to make room)."""

    max_photos: int = 1000
    max_bytes: int = 500 * 1024 * 1024


class Flagging:
    """Gradio's CSVLogger (the CSV and photo folders the Train tab reads), fed only photos that were uploaded to
    this page, are images within the limits, were not flagged already, and fit the budget."""

    def __init__(self, components: list, folder: Path, budget: FlagBudget, limits_for: Any):
        self.folder, self.budget, self.limits_for = Path(folder), budget, limits_for
        self.logger = gr.CSVLogger()
        self.logger.setup(components, str(folder))
        self._lock = threading.Lock()  # two Flags at once must not both fit the last place in the budget
        self._digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → SHA-256: each file hashed once

    def flag(self, photo: Any, labels: Any) -> Any:
        """The Flag event (preprocess=False, as gr.Interface wires it: the payloads arrive as JSON)."""
        path = received_upload(photo.get("path") if isinstance(photo, dict) else None)
        limits: Limits = self.limits_for()
        try:  # an image of an allowed format within the limits, or nothing is copied
            decode(path, limits)
        except ImageError as exc:
            raise gr.Error(f"only photos can be flagged: {exc}") from None
        size = os.stat(path).st_size
        digest = _sha256(path)
        with self._lock:
            photos, used, digests = self._contents()
            if digest in digests:
                raise gr.Error("this photo is flagged already")
            if photos + 1 > self.budget.max_photos or used + size > self.budget.max_bytes:
                raise gr.Error(f"the flagging folder is full ({photos} photos, {used // 2 ** 20} MB; the limit is "
                               f"{self.budget.max_photos} photos, {self.budget.max_bytes // 2 ** 20} MB): train on "
                               "the flagged photos or move them away, then flag again")
            self.logger.flag([{"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}},
                              {"label": _label_of(labels)}])
        return gr.Button(value="Flag", interactive=True)

    def _contents(self) -> tuple[int, int, set[str]]:
        """(photos, bytes, their SHA-256s) in the flagging folder's photo folders."""
        photos, used, digests, seen = 0, 0, set(), {}
        for root, _, files in os.walk(self.folder):
            if Path(root) == self.folder:
                continue  # the CSV files beside the photo folders
            for name in files:
                path = os.path.join(root, name)
                status = os.stat(path)
                key = (path, status.st_size, status.st_mtime_ns)
                seen[key] = self._digests.get(key) or _sha256(path)
                photos, used = photos + 1, used + status.st_size
                digests.add(seen[key])
        self._digests = seen  # deleted photos are forgotten
        return photos, used, digests


def _label_of(labels: Any) -> str:
    label = labels.get("label") if isinstance(labels, dict) else None
    return str(label)[:MAX_LABEL_CHARS] if label is not None else ""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
