"""The Classify tab: a photo is classified as soon as it arrives; on request, a heatmap shows why (/explain)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ...explain import overlay
from ...images import decode, limits_of
from ..batching import Batcher
from ..explanations import Explainer
from .flagging import FlagBudget, Flagging
from .uploads import Photo, photo_bytes


def classify_tab(batcher: Batcher, explainer: Explainer, examples: list[Path], flagging_dir: Path, model_line: str,
                 top_k: int, flag_budget: FlagBudget = FlagBudget()) -> None:
    async def classify(image: str | bytes | None) -> dict[str, float] | None:
        if image is None:  # the photo was cleared
            return None
        body = await photo_bytes(image, batcher.model)
        try:
            pairs = await batcher.classify(body)
        except Exception as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        return {label: probability for label, probability in pairs}

    async def explain(image: str | bytes | None, label: str | None) -> Image.Image:
        """The photo with the heat of `label` (default: the top label) laid over it."""
        body = await photo_bytes(image, batcher.model)
        try:
            explanation = await explainer.explain(body, label or None)
            photo = await asyncio.to_thread(decode, body, limits_of(batcher.model))
            return await asyncio.to_thread(overlay, photo, explanation.grid)
        except Exception as exc:
            raise gr.Error(str(exc)) from None

    async def show_why(image: str | bytes | None, wanted: bool, labels: dict | None) -> tuple[Any, Any]:
        """After each classification, and when the toggle changes: the label choices and the overlay, or nothing
        at all while the toggle is off (no explanation is computed)."""
        if not wanted or image is None or not labels:
            return gr.Dropdown(visible=False), gr.Image(visible=False, value=None)
        # gr.Label hands its value over as {label: probability}, most probable first.
        choices = [entry["label"] for entry in labels["confidences"]] if "confidences" in labels else list(labels)
        return (gr.Dropdown(choices=choices, value=choices[0] if choices else None, visible=True),
                gr.Image(value=await explain(image, None), visible=True))

    gr.Markdown(f"## Image classifier\nDrop a photo (or paste one, take one, click an example) to classify it. "
                f"**Model:** {model_line}.")
    with gr.Row():
        with gr.Column():
            photo = Photo(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Photo")
            with gr.Row():
                wanted = gr.Checkbox(label="Show why (heatmap)", value=False)
                why_label = gr.Dropdown(label="Explain label", choices=[], allow_custom_value=True, visible=False)
            flag = gr.Button("Flag", size="sm")
        with gr.Column():
            labels = gr.Label(num_top_classes=top_k, label="Top labels")
            heatmap = gr.Image(label="Why: the regions that drove the score", type="pil", interactive=False,
                               visible=False, format="png", elem_id="heatmap")
    gr.Examples([[str(path)] for path in examples], inputs=photo)

    # A drop, a paste, a webcam shot and an example all change the photo: that is what classifies.
    classified = photo.change(classify, photo, labels, api_name="classify",
                              concurrency_limit=batcher.conf.max_batch_size)  # enough in flight to fill a batch
    classified.then(show_why, [photo, wanted, labels], [why_label, heatmap], api_visibility="private")
    wanted.change(show_why, [photo, wanted, labels], [why_label, heatmap], api_visibility="private")
    why_label.input(explain, [photo, why_label], heatmap, api_name="explain")

    # Flagging as gr.Interface wires it (the same CSV, read by the Train tab; the same "Flag" event), bounded.
    flagging = Flagging([photo, labels], flagging_dir, flag_budget, lambda: limits_of(batcher.model))
    flag.click(flagging.flag, [photo, labels], flag, preprocess=False, queue=False, api_name="Flag",
               api_visibility="undocumented")
