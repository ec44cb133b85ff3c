"""The Gradio page: drop a photo, see the top-k labels; examples, webcam, clipboard, flagging, and the /classify API."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .batching import Batcher


def build_demo(model: Any, batcher: Batcher, examples: list[Path], flagging_dir: Path) -> gr.Blocks:
    async def classify(image_path: str | None) -> dict[str, float]:
        if not image_path:
            raise gr.Error("Add a photo first: drop one on the box, paste it, or take one with the webcam.")
        try:
            pairs = await batcher.classify(Path(image_path).read_bytes())
        except Exception as exc:  # the same clear message /service sends
            raise gr.Error(str(exc)) from None
        return {label: probability for label, probability in pairs}

    describe = model.describe() if hasattr(model, "describe") else type(model).__name__
    return gr.Interface(
        fn=classify,
        # image_mode=None and filepath: Gradio hands over the uploaded file untouched, so the page decodes
        # exactly as /service does (same formats, limits, EXIF handling and error messages).
        inputs=gr.Image(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                        label="Photo"),
        outputs=gr.Label(num_top_classes=getattr(model, "top_k", 5), label="Top labels"),
        examples=[[str(path)] for path in examples],
        title="Image classifier",
        description=f"Drop a photo to classify it. **Model:** {describe}.",
        flagging_mode="manual",
        flagging_dir=str(flagging_dir),
        api_name="classify",
        concurrency_limit=batcher.conf.max_batch_size,  # enough requests in flight to fill a batch
    )
