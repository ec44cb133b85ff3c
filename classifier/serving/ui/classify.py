"""The Classify tab: a photo is classified as soon as it arrives; on request, a heatmap shows why (/explain)."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ... import describe
from ...explain import overlay
from ...images import decode, limits_of
from ...results import Classified
from .flagging import FlagBudget, Flagging
from .live import batched, live_camera
from .picker import PageModels, picked, with_picker
from .uploads import Photo, photo_bytes


class Verdicts:
    """The page's last "none of these" lines, by photo, from classify to show_verdict: at most SIZE kept."""

    SIZE = 256

    def __init__(self) -> None:
        self._lines: OrderedDict[Any, str] = OrderedDict()

    def put(self, image: Any, line: str) -> None:
        self._lines[image] = line
        while len(self._lines) > self.SIZE:
            self._lines.popitem(last=False)

    def pop(self, image: Any) -> str:
        return self._lines.pop(image, "") if isinstance(image, (str, bytes)) else ""


def verdict_line(labels: list[str], answer: Classified) -> str:
    """'Not one of: birds, flowers, … (closest: fruit 62 %)', for a photo of none of the classes."""
    named = ", ".join(labels[:4]) + (", …" if len(labels) > 4 else "")
    closest, probability = answer.labels[0]
    return f"Not one of: {named} (closest: {closest} {probability * 100:.0f} %)"


class Classifying:
    """What the Classify tab's events do: classify a photo with the picked model (leaving its "none of these"
    line), show that line, explain a label, and show or hide the explanation."""

    def __init__(self, models: PageModels):
        self.models, self.verdicts = models, Verdicts()

    async def classify(self, image: str | bytes | None, model_name: str | None = None) -> dict[str, float] | None:
        """The top labels (the API's answer, whatever the model); a model calibrated for "none of these" also
        leaves its verdict for show_verdict, which runs next."""
        if image is None:  # the photo was cleared
            return None
        batcher = (await picked(self.models, model_name)).batcher
        body = await photo_bytes(image, batcher.model)
        model = batcher.model
        try:
            if model.none_of_these_above is None:
                pairs = await batcher.classify(body)
            else:
                answer = await batcher.classify_with_verdict(body)
                pairs = answer.labels
                self.verdicts.put(image, verdict_line(model.labels, answer) if answer.none_of_these else "")
        except Exception as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        return {label: probability for label, probability in pairs}

    def show_verdict(self, image: str | bytes | None) -> Any:
        line = self.verdicts.pop(image)
        return gr.Markdown(f"### {line}" if line else "", visible=bool(line))

    async def explain(self, image: str | bytes | None, label: str | None,
                      model_name: str | None = None) -> Image.Image:
        """The photo with the heat of `label` (default: the top label) laid over it, by the picked model."""
        model = await picked(self.models, model_name)
        body = await photo_bytes(image, model.batcher.model)
        try:
            explanation = await model.explainer.explain(body, label or None)
            photo = await asyncio.to_thread(decode, body, limits_of(model.batcher.model))
            return await asyncio.to_thread(overlay, photo, explanation.grid)
        except Exception as exc:
            raise gr.Error(str(exc)) from None

    async def show_why(self, image: str | bytes | None, wanted: bool, labels: dict | None,
                       model_name: str | None = None) -> tuple[Any, Any]:
        """After each classification, and when the toggle changes: the label choices and the overlay, or nothing
        at all while the toggle is off (no explanation is computed)."""
        if not wanted or image is None or not labels:
            return gr.Dropdown(visible=False), gr.Image(visible=False, value=None)
        # gr.Label hands its value over as {label: probability}, most probable first.
        choices = [entry["label"] for entry in labels["confidences"]] if "confidences" in labels else list(labels)
        return (gr.Dropdown(choices=choices, value=choices[0] if choices else None, visible=True),
                gr.Image(value=await self.explain(image, None, model_name), visible=True))

    async def model_line(self, model_name: str | None) -> str:
        model = await picked(self.models, model_name)
        return intro(describe(model.batcher.model))


def intro(model_line: str) -> str:
    return (f"## Image classifier\nDrop a photo (or paste one, take one, click an example) to classify it. "
            f"**Model:** {model_line}.")


def classify_tab(models: PageModels, picker: gr.Dropdown | None, examples: list[Path], flagging_dir: Path,
                 flag_budget: FlagBudget = FlagBudget()) -> None:
    """picker: the page's model picker, each event's last input (the Gradio API's `model_name`), if it has one."""
    actions = Classifying(models)
    batcher = models.default.batcher
    # One model: its top_k labels shown, as before. Several: each answer is its own model's top_k.
    top_k = batcher.model.top_k if len(models.names) <= 1 else None
    heading = gr.Markdown(intro(describe(batcher.model)))
    with gr.Row():
        with gr.Column():
            photo = Photo(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Photo")
            with gr.Row():
                wanted = gr.Checkbox(label="Show why (heatmap)", value=False)
                why_label = gr.Dropdown(label="Explain label", choices=[], allow_custom_value=True, visible=False)
            flag = gr.Button("Flag", size="sm")
        with gr.Column():
            verdict = gr.Markdown(visible=False, elem_id="none-of-these")
            labels = gr.Label(num_top_classes=top_k, label="Top labels")
            heatmap = gr.Image(label="Why: the regions that drove the score", type="pil", interactive=False,
                               visible=False, format="png", elem_id="heatmap")
    gr.Examples([[str(path)] for path in examples], inputs=photo)
    live_camera(batched(models), top_k, "Live camera: classify what the camera sees, several times a second", "live",
                extra_input=picker)

    # A drop, a paste, a webcam shot and an example all change the photo: that is what classifies.
    classified = photo.change(actions.classify, with_picker([photo], picker), labels, api_name="classify",
                              concurrency_limit=batcher.conf.max_batch_size)  # enough in flight to fill a batch
    classified.then(actions.show_verdict, photo, verdict, api_visibility="private", queue=False)
    why_inputs = with_picker([photo, wanted, labels], picker)
    classified.then(actions.show_why, why_inputs, [why_label, heatmap], api_visibility="private")
    wanted.change(actions.show_why, why_inputs, [why_label, heatmap], api_visibility="private")
    why_label.input(actions.explain, with_picker([photo, why_label], picker), heatmap, api_name="explain")
    if picker is not None:  # another model picked: its line, and the photo shown classified again by it
        picker.change(actions.model_line, picker, heading, api_visibility="private", queue=False)
        picker.change(actions.classify, [photo, picker], labels, api_visibility="private")

    # Flagging as gr.Interface wires it (the same CSV, read by the Train tab; the same "Flag" event), bounded.
    flagging = Flagging([photo, labels], flagging_dir, flag_budget, lambda: limits_of(batcher.model))
    flag.click(flagging.flag, [photo, labels], flag, preprocess=False, queue=False, api_name="Flag",
               api_visibility="undocumented")
