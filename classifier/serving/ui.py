"""The Gradio page: a Classify tab (drop a photo, see the top-k labels; the /classify API) and a Train tab."""
from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.route_utils import delete_files_created_by_app
from PIL import Image

from .. import describe, retrain
from ..images import limits_of, read_bytes
from .batching import Batcher

log = logging.getLogger(__name__)


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
            return payload.path
        if payload.url and payload.url.startswith("data:") and "," in payload.url:  # base64 from API callers
            return base64.b64decode(payload.url.split(",", 1)[1])
        raise gr.Error("no image file was received")


def build_demo(model: Any, batcher: Batcher, examples: list[Path], flagging_dir: Path, train_dir: Path,
               serve_checkpoint: Callable[[Path], str], training_off: str | None = None) -> gr.Blocks:
    """training_off: why the Train tab is disabled (None: enabled)."""
    with gr.Blocks(title="Image classifier") as demo:
        with gr.Tab("Classify"):
            # An Interface made inside a Blocks context renders there, like any component.
            classify_tab(batcher, examples, flagging_dir, describe(model), getattr(model, "top_k", 5))
        with gr.Tab("Train"):
            if training_off:
                gr.Markdown(f"Training is turned off: {training_off}.")
            else:
                train_tab(train_dir, flagging_dir, serve_checkpoint)
    return demo


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
                delete_files_created_by_app(demo, retention)
            except Exception:
                log.exception("could not delete old uploads; trying again in %s s", min(60, retention))
    finally:
        delete_files_created_by_app(demo, None)


def classify_tab(batcher: Batcher, examples: list[Path], flagging_dir: Path, model_line: str,
                 top_k: int) -> gr.Interface:
    async def classify(image: str | bytes | None) -> dict[str, float]:
        if not image:
            raise gr.Error("Add a photo first: drop one on the box, paste it, or take one with the webcam.")
        try:
            if not isinstance(image, bytes):  # a file Gradio received in an upload (it refuses any other path)
                image = await asyncio.to_thread(read_bytes, image, limits_of(batcher.model))
            pairs = await batcher.classify(image)
        except Exception as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        return {label: probability for label, probability in pairs}

    return gr.Interface(
        fn=classify,
        inputs=Photo(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Photo"),
        outputs=gr.Label(num_top_classes=top_k, label="Top labels"),
        examples=[[str(path)] for path in examples],
        title="Image classifier",
        description=f"Drop a photo to classify it. **Model:** {model_line}.",
        flagging_mode="manual",
        flagging_dir=str(flagging_dir),
        api_name="classify",
        concurrency_limit=batcher.conf.max_batch_size,  # enough requests in flight to fill a batch
    )


def _rows(table) -> list[list]:
    """A Dataframe's value as a list of rows, whether Gradio hands over a pandas DataFrame or a dict."""
    if table is None:
        return []
    if hasattr(table, "values"):
        return table.values.tolist()
    return table.get("data", []) if isinstance(table, dict) else list(table)


def train_tab(train_dir: Path, flagging_dir: Path, serve_checkpoint: Callable[[Path], str]) -> None:
    gr.Markdown("Upload a **.zip with one folder of photos per class** (folder name = label), and/or label the "
                "photos flagged on the Classify tab. A new last layer is trained on the embedded "
                "EfficientNet-Lite0's features; then serve the new model from here.")
    with gr.Row():
        with gr.Column():
            photos = gr.File(label="Photos (.zip of class folders)", file_types=[".zip"])
            with gr.Accordion("Photos flagged on the Classify tab", open=False):
                load_flagged = gr.Button("Load flagged photos")
                flagged = gr.Dataframe(headers=["photo", "model said", "label"], datatype=["str", "str", "str"],
                                       interactive=True, label="Type the right label (empty: leave the photo out)")
            steps = gr.Slider(100, 8000, value=4000, step=100, label="Training steps")
            train_button = gr.Button("Train", variant="primary")
        with gr.Column():
            report = gr.Markdown()
            with gr.Row():
                matrix = gr.Image(label="Confusion matrix (test photos)", type="pil", interactive=False)
                curve = gr.Image(label="Training curve", type="pil", interactive=False)
            serve_button = gr.Button("Serve this model", interactive=False)
            served = gr.Markdown()
    checkpoint = gr.State()

    def show_flagged():
        rows = retrain.read_flagged(flagging_dir)
        if not rows:
            raise gr.Error(f"No flagged photos yet in {flagging_dir}: use the Flag button on the Classify tab.")
        return [[str(photo), predicted, predicted] for photo, predicted in rows]

    def train(zip_path: str | None, labelled, how_many_steps: float, progress=gr.Progress(track_tqdm=True)):
        # Only photos that were flagged here: the table's paths are checked against the flagging folder.
        known = {str(photo): photo for photo, _ in retrain.read_flagged(flagging_dir)}
        pairs = [(known[row[0]], str(row[2] or "")) for row in _rows(labelled) if row and row[0] in known]
        if not zip_path and not any(label.strip() for _, label in pairs):
            raise gr.Error("Upload a .zip of class folders, or label flagged photos, first.")
        train_dir.mkdir(parents=True, exist_ok=True)
        upload = Path(tempfile.mkdtemp(prefix=".upload-", dir=train_dir))
        output = train_dir / time.strftime("model-%Y%m%d-%H%M%S")
        try:
            image_dir = retrain.extract_zip(Path(zip_path), upload / "zip") if zip_path else upload / "photos"
            retrain.write_labelled(pairs, image_dir)
            summary = retrain.retrain(retrain.Options(image_dir=image_dir, output_dir=output,
                                                      how_many_training_steps=int(how_many_steps)))
        except retrain.RetrainError as exc:
            raise gr.Error(str(exc)) from None
        finally:  # the upload is not kept, whatever happened: the zip in Gradio's cache and what it unpacked to
            shutil.rmtree(upload, ignore_errors=True)
            if zip_path:
                Path(zip_path).unlink(missing_ok=True)
        text = "```\n" + retrain.format_summary(summary) + "\n```"
        return (text, Image.open(output / "report" / "confusion_matrix.png"),
                Image.open(output / "report" / "training_curve.png"), str(output), gr.update(interactive=True))

    def serve(output: str | None) -> str:
        if not output:
            raise gr.Error("Train a model first.")
        try:
            return serve_checkpoint(Path(output) / "conf.json")
        except Exception as exc:
            raise gr.Error(f"could not load the new model: {exc}") from None

    load_flagged.click(show_flagged, None, flagged, api_name="flagged")
    train_button.click(train, [photos, flagged, steps], [report, matrix, curve, checkpoint, serve_button],
                       api_name="train", concurrency_limit=1)
    serve_button.click(serve, [checkpoint], [served], api_name="serve_trained", concurrency_limit=1)
