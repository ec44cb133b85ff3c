"""The serving stack's own cost: POST /service on a model that costs nothing, with an 8×8 JPEG as the photo.

What it measures is everything but decoding a real photo and running a real model: HTTP, the guard, the route,
the decode pool's and the model threads' hops, batching, the result as JSON, /metrics."""
from __future__ import annotations

from pathlib import Path

from bench.null_model import tiny_jpeg, write_colour_graph
from bench.server import ServerProcess, conf_variant
from bench.under_load import under_load


def serving_floor(folder: Path, levels: tuple[int, ...], seconds: float) -> dict:
    """/service under wrk at each level, served by the null model (bench/null_model.py) through LiteRT."""
    folder.mkdir(parents=True, exist_ok=True)
    write_colour_graph(folder / "model")
    conf = conf_variant(folder, tensorflow={"model_dir": str(folder / "model"), "input_width": "8",
                                            "input_height": "8", "runtime": "litert", "top_k": 3})
    photo = tiny_jpeg(folder / "red.jpeg")
    import classifier

    classifier.load(conf)  # converted and checked here, where TensorFlow is loaded: the server starts without it
    server = ServerProcess("--conf", str(conf), "--no-train")
    try:
        return {"photo_bytes": photo.stat().st_size, **under_load(server, levels, seconds, photos=[photo])}
    finally:
        server.stop()
