"""The Gradio page: Classify (drop a photo: its labels and, on request, why), Batch (many photos), Train tabs."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Awaitable, Callable

import gradio as gr

from ...images import limits_of
from .agent_tool import TOOL, add_agent_tool
from .batch import batch_tab
from .classify import classify_tab
from .file_gate import GatedBlocks
from .flagging import FlagBudget
from .picker import OneModel, PageModels, model_picker, refreshed
from .train import train_tab
from .uploads import delete_old_uploads

__all__ = ["CSS", "TOOL", "FlagBudget", "OneModel", "build_demo", "delete_old_uploads"]

# Pictures and text fit their boxes at any width (the Train tab's matrix and curve were cropped and its summary
# ran past the panel).
CSS = """
.whole-picture img { object-fit: contain !important; width: 100%; height: auto !important; max-height: none; }
.whole-picture .image-container { padding-top: 2.5rem; }  /* below the label and the buttons, which float on top */
.wrapped pre, .wrapped code { white-space: pre-wrap !important; word-break: break-word; }
"""


def build_demo(models: PageModels, examples: list[Path], flagging_dir: Path, train_dir: Path,
               serve_trained: Callable[[Path, str, bool], Awaitable[str]] | None, training_off: str | None = None,
               flag_budget: FlagBudget = FlagBudget(), output_folder: Path | None = None) -> gr.Blocks:
    """models: what the picker offers (the default answers when there is one). serve_trained(folder, name,
    replace): the Train tab's "Serve this model". training_off: why the Train tab is disabled (None: enabled).
    output_folder: where the page writes the files it gives out (CSVs, thumbnails, model zips); every event's
    files are gated (file_gate)."""
    own_folder = None if output_folder else tempfile.TemporaryDirectory(prefix="classifier-page-")
    output_folder = output_folder or Path(own_folder.name)
    with GatedBlocks(title="Image classifier") as demo:
        demo.own_output_folder = own_folder  # deleted with the page (or at exit)
        demo.output_folders = [output_folder.resolve()]
        picker = model_picker(models)
        if picker is not None:
            demo.load(lambda: refreshed(models), None, picker, api_visibility="private", queue=False)
        with gr.Tab("Classify"):
            classify_tab(models, picker, examples, flagging_dir, flag_budget)
        with gr.Tab("Batch"):
            batch_tab(models, picker, output_folder)
        with gr.Tab("Train"):
            if training_off or serve_trained is None:
                gr.Markdown(f"Training is turned off: {training_off}.")
            else:
                train_tab(train_dir, flagging_dir, serve_trained, picker, models,
                          lambda: limits_of(models.default.batcher.model), output_folder)
        add_agent_tool(models)  # an API endpoint, not shown: the tool Gradio's MCP server offers (mcp_server=True)
    return demo
