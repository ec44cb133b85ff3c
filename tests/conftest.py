"""Shared fixtures: the project's paths, the real photos, the default model loaded once, tiny test models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "photos"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_LABELS = {"espresso", "cup", "coffee mug"}
COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="session")
def default_model():
    import classifier

    return classifier.load(ROOT / "conf.json")


def write_conf(folder: Path, model_dir: str = "model", size: int = 8, main_file: str = "retrain_inference",
               main_class: str = "RetrainedClassificationModel", **tensorflow_keys) -> Path:
    """A conf.json in UAI's format. main_file defaults to the project's module, importable from ROOT."""
    conf = {"http_server": {"exec": {"main_class": main_class, "main_file": main_file},
                            "tensorflow": {"model_dir": model_dir, "input_width": str(size),
                                           "input_height": str(size), **tensorflow_keys}}}
    path = folder / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def colour_logits(images):
    """The tiny test models' whole computation: the mean of each channel, ×20, is the logit of that colour."""
    import tensorflow as tf

    return tf.reduce_mean(images, axis=[1, 2]) * 20.0


def write_colour_graph(folder: Path, input_name: str = "Placeholder", output_name: str = "final_result",
                       size: int = 8, extra_placeholder: bool = False) -> Path:
    """A frozen GraphDef with retrain.py's conventions: float [None, H, W, 3] in [0, 1] → Softmax, 3 classes."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name=input_name)
        if extra_placeholder:
            tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="another_input")
        tf.nn.softmax(colour_logits(images), name=output_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frozen_inference_graph.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    (folder / "label_map.txt").write_text("\n".join(COLOURS) + "\n")
    return path


def solid(colour: str, size=(32, 24)):
    from PIL import Image

    return Image.new("RGB", size, {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}[colour])


def encode(image, fmt: str = "PNG", **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo_bytes() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")}


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# A real server: `python app.py` on a free loopback port.
class Server:
    def __init__(self, *args: str, env: dict | None = None, wait_ready: bool = True):
        import socket
        import subprocess
        import sys
        import tempfile
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"app.py did not become ready in 120 s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except Exception:
                self.process.kill()
        Path(self.log.name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def flagging_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flagged")


@pytest.fixture(scope="session")
def server(flagging_dir):
    running = Server("--flagging-dir", str(flagging_dir))
    yield running
    running.stop()
