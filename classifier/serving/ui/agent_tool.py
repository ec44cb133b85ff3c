"""The Classify function as a tool for LLM agents: Gradio's MCP server offers it, on the page's port, login and
limits (the guard is in front of /gradio_api/mcp as of every Gradio route)."""
from __future__ import annotations

import base64
import binascii
import json

import gradio as gr

from ...images import limits_of
from .picker import PageModels, picked

TOOL = "classify_photo"  # the one tool offered (gradio_internals.offer_only): never training or serving a model


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
        body = photo_bytes(photo, limits_of(model.batcher.model).max_bytes)
        try:
            pairs = await model.batcher.classify(body)
        except Exception as exc:  # the same clear message /service sends (not an image, too large, busy …)
            raise gr.Error(str(exc)) from None
        # JSON text: Gradio's MCP server gives an agent a result's str(), which for a dict is Python's repr.
        return json.dumps({"labels": [{"label": label, "probability": round(float(p), 6)} for label, p in pairs]})

    gr.api(classify_photo, api_name=TOOL, queue=False)


def photo_bytes(photo: str, max_bytes: int) -> bytes:
    """The bytes of a base64 photo (a data URL's too), refused with a clear message if it is not base64 or is
    larger than the model takes."""
    if not isinstance(photo, str) or not photo.strip():
        raise gr.Error("photo: send the photo's bytes base64-encoded")
    encoded = photo.strip()
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    if len(encoded) * 3 // 4 > max_bytes + 3:
        raise gr.Error(f"photo: the image is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error("photo: not valid base64; send the photo's bytes base64-encoded") from None
