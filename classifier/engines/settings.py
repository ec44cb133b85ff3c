"""Each engine's threading settings: the defaults that served fastest under /service load, and an override."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

# Measured by bench/engine_settings.py (README's Performance section: the table and the machines).
DEFAULTS = {
    # "per-core": a batch is spread image by image over one single-threaded interpreter per core, a lone image
    # runs on one interpreter with every core; "lean": the same with that interpreter also one of the batch's (one
    # fewer a model: what a server of models by name prefers, classifier/serving/server.py); "shared": one
    # interpreter with every core runs each whole batch.
    "litert": {"layout": "per-core"},
    # OpenVINO's own properties, passed to compile_model as they are.
    "openvino": {"PERFORMANCE_HINT": "LATENCY"},
}
OVERRIDE_VARIABLE = "CLASSIFIER_ENGINE_SETTINGS"  # JSON: {"openvino": {"PERFORMANCE_HINT": "THROUGHPUT"}, …}
# Defaults of the caller's, for the models loaded within preferring(): a context variable, so that one server's
# choice (a server of many models holds its LiteRT models lean) is not another's in the same process (the tests').
_PREFERRED: ContextVar[dict] = ContextVar("engine_settings_preferred", default={})


@contextmanager
def preferring(defaults: dict | None) -> Iterator[None]:
    """Within it, the models loaded take these settings ({engine: {setting: value}}) over DEFAULTS, and
    $CLASSIFIER_ENGINE_SETTINGS over both."""
    token = _PREFERRED.set(defaults or {})
    try:
        yield
    finally:
        _PREFERRED.reset(token)


def settings(engine: str) -> dict:
    """The engine's settings: DEFAULTS, updated by what the caller prefers (preferring), then by
    $CLASSIFIER_ENGINE_SETTINGS (for measuring others)."""
    chosen = dict(DEFAULTS.get(engine, {}))
    chosen.update(_PREFERRED.get().get(engine, {}))
    override = os.environ.get(OVERRIDE_VARIABLE)
    if override:
        chosen.update(json.loads(override).get(engine, {}))
    return chosen
