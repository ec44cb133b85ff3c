"""What every shape of the server serves from one conf.json: the model, its batcher, explainer, reloader, health.

app.py's server (server.build_server) and each Ray Serve replica (ray_serve.Classifier) build it with load_core;
it imports neither Gradio nor grpcio.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import classifier
from ..images import Limits, limits_of
from ..engines.settings import preferring
from ..loader import example_photos
from . import metrics
from .batching import Batcher, BatchForming
from .explanations import Explainer
from .reload import Reloader
from .service import Health


@dataclass
class Core:
    """What every shape serves (app.py, each Ray Serve replica): the model, its batcher, explainer, reloader and
    health, from one conf.json."""

    conf_path: Path
    batcher: Batcher
    explainer: Explainer
    reloader: Reloader
    health: Health
    reload_poll_seconds: int
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def model(self) -> Any:
        return self.batcher.model

    @property
    def limits(self) -> Limits:
        return limits_of(self.model)

    def poll(self, stop: threading.Event | None = None) -> None:
        """Looks for a new version folder every reload_poll_seconds (if set) in a daemon thread, until `stop` (by
        default, until stop_polling())."""
        if self.reload_poll_seconds:
            threading.Thread(target=self.reloader.poll, args=(self.reload_poll_seconds, stop or self._stop),
                             daemon=True).start()

    def stop_polling(self) -> None:
        self._stop.set()


def load_core(conf_path: Path, top_k: int | None = None,
              serve_batching: Callable[[int], BatchForming] | None = None, name: str | None = None,
              engine_defaults: dict | None = None, **batching: Any) -> Core:
    """The model conf_path names, loaded (and described in /metrics under `name`, else its conf's model_name),
    with its batcher (batching: overrides of the conf's batching; serve_batching(max_batch_size): another way to
    form its batches, Ray Serve's), explainer and reloader. engine_defaults: the engines' settings this model and
    its reloads prefer (engines.settings.preferring). Raises the library's errors (ConfError, ModelError,
    LabelsError) for a broken conf or model."""
    def load_model(conf: Path) -> Any:  # this one, and each reload's (in the reload's own thread)
        with preferring(engine_defaults):
            return classifier.load(conf)

    started = time.monotonic()
    model = load_model(conf_path)
    name = name or classifier.JsonConfLoader(model.conf).get_model_name()
    metrics.describe_model(model, time.monotonic() - started, name)
    if top_k:
        model.top_k = top_k
    conf = classifier.JsonConfLoader(model.conf)
    settings = replace(conf.get_batching(), **{key: value for key, value in batching.items() if value is not None})
    batcher = Batcher(model, settings, forming=serve_batching(settings.max_batch_size) if serve_batching else None,
                      name=name)
    metrics.count_queue(batcher, name)
    reloader = Reloader(Path(conf_path), batcher, example_photos()[0], name, load_model)
    return Core(Path(conf_path), batcher, Explainer(batcher), reloader,
                Health(), conf.get_reload_poll_seconds())
