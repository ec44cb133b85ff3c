"""The page's model picker: one dropdown above the tabs, and each event's model looked up by the name it holds."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import gradio as gr

from ..batching import Batcher
from ..explanations import Explainer


class Picked(Protocol):
    """What an event needs of one model (a repository's Core, or Ray Serve's remote one)."""

    batcher: Batcher
    explainer: Explainer


class PageModels(Protocol):
    """The models the page offers, by name (the server's Repository)."""

    default_name: str | None  # the one /service answers
    pickable: bool  # a server of models by name (a repository's): the page has a picker, the API a model_name

    @property
    def names(self) -> list[str]: ...

    @property
    def default(self) -> Picked: ...

    def served_folders(self) -> list[Path]: ...

    async def get(self, name: str | None = None) -> Picked: ...


class OneModel:
    """A page of one model (Ray Serve's page): it is every event's model, whatever the name."""

    names: list[str] = []
    default_name = None
    pickable = False  # no picker: the page's API is the one-model API

    def __init__(self, batcher: Batcher, explainer: Explainer):
        self.batcher, self.explainer = batcher, explainer

    @property
    def default(self) -> Picked:
        return self

    def served_folders(self) -> list[Path]:
        return []

    async def get(self, name: str | None = None) -> Picked:
        return self


def model_picker(models: PageModels) -> gr.Dropdown | None:
    """The dropdown every tab's events take as their last input, on a server of models by name (None for a server
    of one model: its page and Gradio API stay as they were, an image in, no model_name, which raw API calls
    would otherwise have to send, for Gradio wants every input). Hidden while the repository has one model. Any
    value is let through (a model added to the repository after the page was built), for the repository answers
    an unknown name with the names it serves."""
    if not models.pickable:
        return None
    names = models.names
    return gr.Dropdown(choices=names, value=models.default_name if len(names) > 1 else None, label="Model",
                       allow_custom_value=True, visible=len(names) > 1, elem_id="model-picker",
                       info="Classify, Batch, the live camera and Show why all use this model")


def with_picker(inputs: list, picker: gr.Dropdown | None) -> list:
    """An event's inputs, and the picker last when the page has one."""
    return [*inputs, picker] if picker is not None else list(inputs)


async def picked(models: PageModels, name: str | None) -> Picked:
    """The model an event names (None or "": the default), loaded first if it waits for its first request; the
    repository's clear message (unknown, unavailable, refused) as the page's error."""
    try:
        return await models.get(name or None)
    except Exception as exc:  # UnknownModel, ModelUnavailable, ModelRefused: the text /service would send
        raise gr.Error(str(exc)) from None


def refreshed(models: PageModels) -> Any:
    """On each page load: the picker's choices as the repository has them now (models added or removed since)."""
    names = models.names
    return gr.Dropdown(choices=names, visible=len(names) > 1)
