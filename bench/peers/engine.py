"""The peers' model: our model class from conf.json, and its serving engine again with one thread (imported by the
peers' own processes: no TensorFlow, only the engine cache the benchmark's first section filled)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def single_threaded(conf: Path) -> tuple[Any, Callable]:
    """The loaded model (its preprocess, runtime and postprocess), and its engine on one thread: each of a peer's
    two worker processes gets one core, the layout that served fastest for LitServe (bench/litserve_app.py)."""
    import classifier
    from classifier.engines.litert import LiteRTPredictor
    from classifier.engines.openvino import OpenVINOPredictor

    model = classifier.load(conf)  # a warm cache: the engine the server chose
    engine = model.runtime.predict
    if isinstance(engine, LiteRTPredictor):
        return model, LiteRTPredictor(engine.path, 1)
    if isinstance(engine, OpenVINOPredictor):
        return model, OpenVINOPredictor(engine.path, engine.precision, 1)
    return model, engine
