"""What the page receives: only files Gradio took in as uploads, photos handed over undecoded, old uploads deleted."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import gradio as gr

from ...images import limits_of, read_bytes
from ..gradio_internals import current_blocks, delete_uploads
from .file_gate import GatedBlocks

log = logging.getLogger(__name__)


def received_upload(path: Any) -> str:
    """`path`, if it names a file that Gradio received as an upload for this app (or cached for the page: the
    examples); else gr.Error. The page's gate (file_gate.GatedBlocks) checks every event's file values before
    the event runs; the events that read a file call this too, with the same rule, where they read it."""
    blocks = current_blocks()
    if not isinstance(path, (str, os.PathLike)) or not isinstance(blocks, GatedBlocks):
        raise gr.Error("no uploaded file was received: upload the file first")
    absolute = os.path.abspath(path)
    if not blocks.received(absolute):
        raise gr.Error(f"{os.path.basename(absolute)} was not uploaded to this page: upload the file first")
    return absolute


class Photo(gr.Image):
    """gr.Image that hands the uploaded file over as it came, undecoded (a Gradio "template component").

    Plain gr.Image opens every upload with Pillow first, so a bad file fails with Gradio's message; this way
    the page and its API go through the same decoding, limits and error messages as /service.
    """

    is_template = True

    def preprocess(self, payload) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path:
            return received_upload(payload.path)
        if payload.url and payload.url.startswith("data:") and "," in payload.url:  # base64 from API callers
            return base64.b64decode(payload.url.split(",", 1)[1])
        raise gr.Error("no image file was received")


async def photo_bytes(image: str | bytes | None, model: Any) -> bytes:
    """The bytes of a photo the page received (Photo.preprocess has checked that Gradio took it in as an upload),
    within the serving model's limits. Raises gr.Error with the same message /service would send."""
    if not image:
        raise gr.Error("Add a photo first: drop one on the box, paste it, or take one with the webcam.")
    if isinstance(image, bytes):
        return image
    try:
        return await asyncio.to_thread(read_bytes, image, limits_of(model))
    except Exception as exc:
        raise gr.Error(str(exc)) from None


async def delete_old_uploads(demo: gr.Blocks, retention: int) -> None:
    """Deletes the files uploaded to the page (and the page's own copies) `retention` seconds after they were made,
    looking every min(60, retention) seconds, until cancelled; then deletes them all.

    Gradio's own delete_cache does this with the same function, but in a worker thread that iterates the sets of
    uploaded files while the event loop adds to them: the first "Set changed size during iteration" ends its task
    for good, and the cache grows for ever (bench.soak showed it under concurrent uploads). Here the sweep runs on
    the event loop, where those sets change, and a failed sweep is logged and retried. Flagged photos are copies
    in the flagging folder, which this never touches; Gradio's keep_in_cache files (the examples) are kept.
    """
    try:
        while True:
            await asyncio.sleep(min(60, retention))
            try:
                delete_uploads(demo, retention)
            except Exception:
                log.exception("could not delete old uploads; trying again in %s s", min(60, retention))
    finally:
        delete_uploads(demo, None)
