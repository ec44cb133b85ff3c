"""The Train tab: a .zip of class folders and the flagged photos become a new model, served from the page."""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import gradio as gr
from PIL import Image

from ... import load, retrain
from ...images import Limits
from .class_builder import Classes, class_builder
from .file_gate import new_output_folder
from .live import live_camera
from .picker import PageModels
from .uploads import received_upload


DOWNLOAD_KEEP_SECONDS = 3600  # a trained model's zip, for its Download button
KEEP_TRAINED = 10  # models the Train tab keeps in the train folder (~50 MB each); older ones are deleted


def prune_trained(train_dir: Path, serving: list[Path], keep: int = KEEP_TRAINED) -> None:
    """The Train tab's models beyond the newest `keep`, deleted, except those served (each run left ~53 MB, never
    removed)."""
    models = sorted((p for p in train_dir.glob("model-*") if p.is_dir()), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for old in models[keep:]:
        if not any(Path(folder).resolve().is_relative_to(old.resolve()) for folder in serving):
            shutil.rmtree(old, ignore_errors=True)


def _rows(table) -> list[list]:
    """A Dataframe's value as a list of rows, whether Gradio hands over a pandas DataFrame or a dict."""
    if table is None:
        return []
    if hasattr(table, "values"):
        return table.values.tolist()
    return table.get("data", []) if isinstance(table, dict) else list(table)


def _inside(photo: Path, folder: Path) -> str:
    try:
        return Path(photo).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return Path(photo).name


def _redacted(message: str, folders: dict[Path, str]) -> str:
    """The message with each server folder named in words instead (the visitor has no use for our paths)."""
    for folder, words in folders.items():
        for spelling in {str(Path(folder).resolve()), str(folder)}:
            message = message.replace(spelling, words)
    return message


class Trial:
    """The newest model trained on the page, loaded for "Try it live": one at a time (a model is ~100 MB), one
    frame at a time (a frame that comes while one is classified is dropped)."""

    def __init__(self) -> None:
        self._loaded: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def load(self, output: str) -> None:
        with self._lock:
            self._model(output)

    def _model(self, output: str) -> Any:
        if not self._loaded or self._loaded[0] != output:
            self._loaded = None  # the old one goes first
            self._loaded = (output, load(Path(output) / "conf.json"))
        return self._loaded[1]

    def _classify(self, frame: bytes, output: str) -> list | None:
        if not self._lock.acquire(blocking=False):
            return None
        try:
            answer = self._model(output).execute([frame], 1)[0]
        finally:
            self._lock.release()
        if isinstance(answer, dict):
            raise gr.Error(answer["error"])
        return answer

    async def classify(self, frame: bytes | str, output: str | None) -> list | None:
        if not isinstance(output, str) or not output:
            raise gr.Error("Train a model first.")
        body = frame if isinstance(frame, bytes) else Path(frame).read_bytes()  # Photo checked it: an upload
        return await asyncio.to_thread(self._classify, body, output)


trial = Trial()


class Training:
    """What the Train tab's buttons do: list the flagged photos, train, ready the new model (try it live, its zip),
    serve it. train_dir: where models are written; downloads: where their zips are (the page gives out files from
    there); models: the server's, whose folders pruning the train folder keeps, and which the new one joins."""

    def __init__(self, train_dir: Path, flagging_dir: Path, serve_trained: Callable[[Path, str, bool], Awaitable[str]],
                 downloads: Path, models: PageModels, builder: Any):
        self.train_dir, self.flagging_dir, self.serve_trained = train_dir, flagging_dir, serve_trained
        self.downloads, self.models, self.builder = downloads, models, builder

    def flagged_photos(self) -> dict[str, Path]:
        """The flagged photos by their names on the page: paths inside the flagging folder (the server's own
        folders are not shown to visitors)."""
        return {_inside(photo, self.flagging_dir): photo for photo, _ in retrain.read_flagged(self.flagging_dir)}

    def show_flagged(self) -> list[list[str]]:
        rows = retrain.read_flagged(self.flagging_dir)
        if not rows:
            raise gr.Error("No flagged photos yet: use the Flag button on the Classify tab.")
        return [[_inside(photo, self.flagging_dir), predicted, predicted] for photo, predicted in rows]

    def train(self, zip_path: str | None, labelled: Any, how_many_steps: float, int8: bool = False,
              none_of_these: bool = True, made: Classes | None = None, progress=gr.Progress(track_tqdm=True)):
        # Only photos that were flagged here: the table's names are looked up in the flagging folder.
        known = self.flagged_photos()
        pairs = [(known[row[0]], str(row[2] or "")) for row in _rows(labelled) if row and row[0] in known]
        if not zip_path and not any(label.strip() for _, label in pairs) and not (made and made.names()):
            raise gr.Error("Make classes here, upload a .zip of class folders, or label flagged photos, first.")
        zip_path = received_upload(zip_path) if zip_path else None
        self.train_dir.mkdir(parents=True, exist_ok=True)
        upload = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.train_dir))
        output = self.train_dir / time.strftime("model-%Y%m%d-%H%M%S")
        try:
            image_dir = retrain.extract_zip(Path(zip_path), upload / "zip") if zip_path else upload / "photos"
            retrain.write_labelled(pairs, image_dir)
            if made:
                made.copy_into(image_dir)
            summary = retrain.retrain(retrain.Options(image_dir=image_dir, output_dir=output,
                                                      how_many_training_steps=int(how_many_steps),
                                                      int8=bool(int8), none_of_these=bool(none_of_these)))
        except retrain.RetrainError as exc:  # in the visitor's words: no server folder in it
            raise gr.Error(_redacted(str(exc), {upload: "the uploaded photos", self.train_dir: "the train folder"})) \
                from None
        finally:  # the upload is not kept, whatever happened: the zip in Gradio's cache and what it unpacked to
            shutil.rmtree(upload, ignore_errors=True)
            if zip_path:
                Path(zip_path).unlink(missing_ok=True)
        if made:  # nor the classes made on the page, once trained on (kept after a refusal, to add photos)
            made.delete()
        prune_trained(self.train_dir, self.models.served_folders())
        text = "```\n" + retrain.format_summary(summary) + "\n```"
        return (text, Image.open(output / "report" / "confusion_matrix.png"),
                Image.open(output / "report" / "training_curve.png"), str(output), gr.update(interactive=True))

    def after_training(self, output: str | None, made: Classes | None) -> tuple[Any, ...]:
        """Once /train has answered (its answer keeps its shape): the new model loaded for Try it live, which
        converts it for the engines (the .tflite, OpenVINO's), then zipped with their files beside its folder for
        the Download button; and the classes made on the page, now emptied, shown so."""
        if not output:
            raise gr.Error("Train a model first.")
        trial.load(output)
        folder = new_output_folder(self.downloads, "download-", DOWNLOAD_KEEP_SECONDS)
        archive = retrain.write_archive(Path(output), folder / f"{Path(output).name}.zip")
        return (gr.DownloadButton(value=str(archive), visible=True), *self.builder.shown(made))

    async def serve(self, output: str | None, name: str, replace: bool = False) -> tuple[str, Any]:
        """The trained model served beside the others as `name`: the server's answer, and the page's picker
        showing it, picked."""
        if not output:
            raise gr.Error("Train a model first.")
        if not (name or "").strip():
            raise gr.Error("Give the model a name first (letters, digits, '_', '.' and '-').")
        try:
            said = await self.serve_trained(Path(output), name, bool(replace))
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(f"could not load the new model: {exc}") from None
        names = self.models.names
        return said, gr.Dropdown(choices=names, value=name.strip(), visible=len(names) > 1)


def train_tab(train_dir: Path, flagging_dir: Path, serve_trained: Callable[[Path, str, bool], Awaitable[str]],
              picker: gr.Dropdown | None, models: PageModels, limits: Callable[[], Limits] = Limits,
              output_folder: Path | None = None) -> None:
    """serve_trained(folder, name, replace): "Serve this model"; picker: the page's, which then shows the new one.
    limits(): the serving model's image limits, which the photos added on the page must keep. output_folder:
    where the Download button's zips are written (the page gives out files from there only)."""
    downloads = output_folder or Path(tempfile.mkdtemp(prefix="classifier-downloads-"))
    gr.Markdown("Make the classes here, and/or upload a **.zip with one folder of photos per class** (folder name = "
                "label), and/or label the photos flagged on the Classify tab: they are merged into the same classes. "
                "A new last layer is trained on the embedded EfficientNet-Lite0's features; then try it, serve it "
                "from here, or download it.")
    with gr.Row():
        with gr.Column():
            builder = class_builder(train_dir, limits)
            photos = gr.File(label="Photos (.zip of class folders)", file_types=[".zip"], elem_id="train-zip")
            with gr.Accordion("Photos flagged on the Classify tab", open=False):
                load_flagged = gr.Button("Load flagged photos")
                flagged = gr.Dataframe(headers=["photo", "model said", "label"], datatype=["str", "str", "str"],
                                       interactive=True, label="Type the right label (empty: leave the photo out)")
            steps = gr.Slider(100, 8000, value=4000, step=100, label="Training steps")
            # Off by default: the page serves the fp32 model, and quantizing and checking the int8 one takes longer
            # than the training (~35 s of a 58 s run on 171 photos, 2 cores).
            int8 = gr.Checkbox(False, label="Also make the int8 model (for \"precision\": \"int8\" in conf.json; "
                                            "about half a minute more)")
            # int8 loses the score (measured: it called none of the unseen stamps so), so int8 needs this off.
            none_of_these = gr.Checkbox(True, label="Calibrate \"none of these\" (for photos of none of the "
                                                    "classes; the int8 model cannot keep it)")
            train_button = gr.Button("Train", variant="primary")
        with gr.Column():
            report = gr.Markdown(elem_classes="wrapped", elem_id="train-report")
            # One above the other, each whole: side by side, both were cropped to their boxes.
            matrix = gr.Image(label="Confusion matrix (test photos)", type="pil", interactive=False, height="auto",
                              elem_classes="whole-picture", elem_id="train-matrix")
            curve = gr.Image(label="Training curve", type="pil", interactive=False, height="auto",
                             elem_classes="whole-picture", elem_id="train-curve")
            with gr.Row():
                # Served beside the others, by this name (checked like a model's name on every route).
                serving_name = gr.Textbox(label="Serve it as", placeholder="a name: letters, digits, _ . -",
                                          max_length=64, elem_id="train-model-name")
                replace = gr.Checkbox(False, label="Replace it (a model of that name is served already)")
            with gr.Row():
                serve_button = gr.Button("Serve this model", interactive=False)
                download = gr.DownloadButton("Download this model (.zip)", visible=False, elem_id="train-download")
            served = gr.Markdown()
    checkpoint = gr.State()
    live_camera(trial.classify, 5, "Try it live: the camera classified by the new model, before serving it",
                "trial", checkpoint)

    actions = Training(train_dir, flagging_dir, serve_trained, downloads, models, builder)
    load_flagged.click(actions.show_flagged, None, flagged, api_name="flagged")
    trained = train_button.click(actions.train, [photos, flagged, steps, int8, none_of_these, builder.classes],
                                 [report, matrix, curve, checkpoint, serve_button], api_name="train",
                                 concurrency_limit=1)
    trained.success(actions.after_training, [checkpoint, builder.classes], [download, *builder.outputs],
                    api_visibility="private", concurrency_limit=1)
    if picker is not None:
        serve_button.click(actions.serve, [checkpoint, serving_name, replace], [served, picker],
                           api_name="serve_trained", concurrency_limit=1)
    else:  # a page of one model: the new one is served by name on the other doors; the page keeps the default
        async def serve(output: str | None, name: str, replace: bool = False) -> str:
            return (await actions.serve(output, name, replace))[0]

        serve_button.click(serve, [checkpoint, serving_name, replace], [served], api_name="serve_trained",
                           concurrency_limit=1)
