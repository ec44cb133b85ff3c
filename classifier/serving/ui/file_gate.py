"""One gate for every file value on every event of the page: uploads in, the page's own files out.

Written against Gradio 6.31. Gradio's own checks leave two holes, which the review of issue 38 used:
- on input, a file payload is checked only when it carries `"meta": {"_type": "gradio.FileData"}`;
- on output, any file under the working folder or the temp folder is copied into Gradio's cache and served at
  /gradio_api/file=…, so an event that hands a client's value back (a gallery re-sorted) served conf.json, the
  log, the flagged photos of other visitors.
So the page is a `GatedBlocks`: before Gradio processes an event, every file a client's value names (in lists,
galleries and dicts, with or without `meta`) must be one that Gradio received as an upload; before Gradio
serves an event's answer, every file it names must be such an upload or lie in one of the page's own output
folders (its CSVs, thumbnails, model downloads). Its reaches into Gradio (Blocks.preprocess_data,
postprocess_data, temp_file_sets, the upload folder) are listed in serving/gradio_internals.py.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from ..gradio_internals import gradio_models, is_in_or_equal, upload_folder

# Components whose values name files. Every other component's strings are text, never paths.
FILE_COMPONENTS = (gr.File, gr.Gallery, gr.Image, gr.DownloadButton, gr.UploadButton, gr.Video, gr.Audio,
                   gr.Model3D, gr.AnnotatedImage, gr.ImageEditor)


class FileRefused(gr.Error):
    """A file value that is neither an upload nor the page's own (the message names the file, never its folder)."""


def is_url(path: str) -> bool:
    """Gradio fetches these itself, through its own public-address check (data: URLs are decoded)."""
    return path.startswith(("http://", "https://", "data:"))


class GatedBlocks(gr.Blocks):
    """gr.Blocks whose events take only uploaded files and give only uploads or files of `output_folders`."""

    output_folders: list[Path] = []

    def received(self, path: str) -> bool:
        """Whether Gradio took this file in as an upload for this page (or cached it for the page: examples)."""
        absolute = os.path.abspath(path)
        # Membership tests only: the event loop adds to these sets while handlers run in worker threads.
        return (is_in_or_equal(absolute, upload_folder())
                and any(absolute in files for files in list(self.temp_file_sets)))

    def ours(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(is_in_or_equal(real, str(folder)) for folder in self.output_folders)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False):
        if not explicit_call:  # explicit: the server's own call (examples cached at start), not a client's
            for block, value in zip(block_fn.inputs, inputs):
                if not getattr(block, "stateful", False):  # gr.State holds the server's values, never a client's
                    for path in payload_paths(value):
                        if not is_url(path) and not self.received(path):
                            raise FileRefused(f"{os.path.basename(path)} was not uploaded to this page: upload "
                                              "the file first")
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)

    async def postprocess_data(self, block_fn: Any, predictions: Any, state: Any) -> list[Any]:
        for block, value in zip(block_fn.outputs, as_list(block_fn, predictions)):
            if isinstance(block, FILE_COMPONENTS):
                for path in answer_paths(block, value):
                    if is_url(path) or not (self.received(path) or self.ours(path)):
                        raise FileRefused(f"the page does not give out {os.path.basename(path)}: it is no "
                                          "upload and no file the page made")
        return await super().postprocess_data(block_fn, predictions, state)


def new_output_folder(output_folder: Path, prefix: str, keep_seconds: float) -> Path:
    """A fresh folder in the page's output folder for what one event gives out (a batch's CSV and thumbnails, a
    model's zip); older folders of the same prefix, past keep_seconds, are deleted first (by then Gradio has
    copied what it showed into its cache)."""
    output_folder.mkdir(parents=True, exist_ok=True)
    for old in output_folder.glob(f"{prefix}*"):
        if time.time() - old.stat().st_mtime > keep_seconds:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=output_folder))


def as_list(block_fn: Any, predictions: Any) -> list[Any]:
    """An event's return value, one entry per output (as Gradio reads it: a dict by component, or one value)."""
    if isinstance(predictions, dict) and predictions and all(isinstance(k, gr.blocks.Block) for k in predictions):
        return [predictions.get(block) for block in block_fn.outputs]
    if len(block_fn.outputs) == 1 and not block_fn.batch:
        return [predictions]
    return list(predictions) if isinstance(predictions, (list, tuple)) else [predictions]


def payload_paths(value: Any) -> Iterator[str]:
    """Every "path" a client's JSON value holds, however deep (file payloads with or without Gradio's meta)."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            yield value["path"]
        for item in value.values():
            yield from payload_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from payload_paths(item)


def answer_paths(block: Any, value: Any) -> Iterator[str]:
    """Every file an event's answer for a file component names: a path, a FileData, a gallery's (media, caption)
    pairs, an update (gr.update(value=…) or a component returned as one)."""
    if isinstance(value, gr.blocks.Block):
        value = value.constructor_args.get("value")
    elif isinstance(value, dict) and value.get("__type__") == "update":
        value = value.get("value")
    if isinstance(value, gradio_models()):
        value = value.model_dump()
    if isinstance(value, (str, os.PathLike)):
        yield os.fspath(value)
    elif isinstance(value, dict):
        yield from payload_paths(value)
    elif isinstance(value, (list, tuple)):
        gallery = isinstance(block, gr.Gallery)
        for item in value:
            if gallery and isinstance(item, (list, tuple)) and item:  # (media, caption): the caption is text
                item = item[0]
            yield from answer_paths(block, item)
