"""The Classify function as a tool for LLM agents: Gradio's MCP server offers it, on the page's port, login and
limits (the guard is in front of /gradio_api/mcp as of every Gradio route)."""
from __future__ import annotations

import json
from typing import Any

import gradio as gr

from ...images import limits_of
from ..protocols import base64_image
from .picker import PageModels, picked

TOOL = "classify_photo"  # the one tool offered (gradio_internals.offer_only): never training or serving a model


def data_url_base64(photo: Any) -> Any:
    """The base64 of a photo sent as text: a data URL's is after its comma. Anything but text is passed on as it is,
    for base64_image to refuse with its message."""
    if not isinstance(photo, str):
        return photo
    photo = photo.strip()
    return photo.partition(",")[2] if photo.startswith("data:") else photo


def add_agent_tool(models: PageModels) -> None:
    """Inside the page's Blocks: the tool, as an API endpoint of its own (not queued: Gradio's MCP server calls it
    in-process, without a loopback client that would need the login again)."""

    async def classify_photo(photo: str, model_name: str = "") -> str:
        """Classifies a photo with an image classifier. Returns JSON: {"labels": [{"label": ..., "probability": ...},
        ...]}, the most likely labels, most likely first, each with its probability (0 to 1).

        Args:
            photo: the photo (JPEG, PNG, GIF, BMP, WebP or TIFF) base64-encoded, or as a data:image/...;base64 URL.
            model_name: the model to ask, by name; empty for the server's default model.
        """
        model = await picked(models, model_name)
        try:
            body = base64_image(data_url_base64(photo), limits_of(model.batcher.model).max_bytes, "photo")
            pairs = await model.batcher.classify(body)
        except Exception as exc:  # what the protocols and /service say: not base64, too large, not an image …
            raise gr.Error(str(exc)) from None
        # JSON text: Gradio's MCP server gives an agent a result's str(), which for a dict is Python's repr.
        return json.dumps({"labels": [{"label": label, "probability": round(float(p), 6)} for label, p in pairs]})

    gr.api(classify_photo, api_name=TOOL, queue=False)

