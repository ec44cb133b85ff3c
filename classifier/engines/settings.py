"""Each engine's threading settings: the defaults that served fastest under /service load, and an override."""
from __future__ import annotations

import json
import os

# Measured by bench/engine_settings.py (README's Performance section: the table and the machines).
DEFAULTS = {
    # "per-core": a batch is spread image by image over one single-threaded interpreter per core, a lone image
    # runs on one interpreter with every core; "lean": the same with that interpreter also one of the batch's (one
    # fewer a model; for servers of many models); "shared": one interpreter with every core runs each whole batch.
    "litert": {"layout": "per-core"},
    # OpenVINO's own properties, passed to compile_model as they are.
    "openvino": {"PERFORMANCE_HINT": "LATENCY"},
}
OVERRIDE_VARIABLE = "CLASSIFIER_ENGINE_SETTINGS"  # JSON: {"openvino": {"PERFORMANCE_HINT": "THROUGHPUT"}, …}


def settings(engine: str) -> dict:
    """The engine's settings: DEFAULTS, updated by $CLASSIFIER_ENGINE_SETTINGS (for measuring others)."""
    chosen = dict(DEFAULTS.get(engine, {}))
    override = os.environ.get(OVERRIDE_VARIABLE)
    if override:
        chosen.update(json.loads(override).get(engine, {}))
    return chosen
