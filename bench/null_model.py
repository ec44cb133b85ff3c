"""A model that costs nothing: a few-KB graph on 8×8 images (the mean of each channel is its colour's logit).

The benchmark's floor serves it to measure the serving stack's own cost per request; the tests serve it as their
tiny colour model (tests/conftest.py), so both use the one graph."""
from __future__ import annotations

import io
from pathlib import Path

COLOURS = ["red", "green", "blue"]


def colour_logits(images):
    """The whole computation: the mean of each channel, ×20, is the logit of that colour."""
    import tensorflow as tf

    return tf.reduce_mean(images, axis=[1, 2]) * 20.0


def write_colour_graph(folder: Path, input_name: str = "Placeholder", output_name: str = "final_result",
                       size: int = 8, extra_placeholder: bool = False, probabilities: bool = True) -> Path:
    """A frozen GraphDef with retrain.py's conventions: float [None, H, W, 3] in [0, 1] → Softmax, 3 classes.
    probabilities=False: the logits themselves under output_name (a base model's features, for retraining)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name=input_name)
        if extra_placeholder:
            tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="another_input")
        logits = colour_logits(images)
        tf.nn.softmax(logits, name=output_name) if probabilities else tf.identity(logits, name=output_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frozen_inference_graph.pb"
    # Deterministic: the same graph, the same bytes (a protobuf map's order may vary), so that what is keyed by the
    # model's bytes (the engines' cache, retraining's bottleneck cache) finds a graph written again.
    path.write_bytes(graph.as_graph_def().SerializeToString(deterministic=True))
    (folder / "label_map.txt").write_text("\n".join(COLOURS) + "\n")
    return path


def tiny_jpeg(path: Path, size: int = 8) -> Path:
    """A size×size red JPEG (a few hundred bytes): its decoding costs microseconds."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (230, 20, 20)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path
