"""Shared fixtures: the project's paths, the real photos, the default model loaded once, tiny test models."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "photos"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_LABELS = {"espresso", "cup", "coffee mug"}
COLOURS = ["red", "green", "blue"]


def require_debian_package(path: Path, package: str) -> None:
    """Skips the test when a Debian package it needs is missing, unless ./test.sh installed them (as root):
    then a missing one is a failure, so CI can never pass by skipping."""
    if path.exists():
        return
    message = f"Debian's {package} is not installed ({path} is missing): apt-get install -y {package}"
    if os.environ.get("CLASSIFIER_SYSTEM_PACKAGES") == "required":
        pytest.fail(message)
    pytest.skip(message)


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
from bench.server import ServerProcess as Server  # noqa: E402  (one implementation, shared with the benchmark)


@pytest.fixture(scope="session")
def flagging_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flagged")


@pytest.fixture(scope="session")
def server(flagging_dir):
    running = Server("--flagging-dir", str(flagging_dir))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def expected(server, photo_bytes) -> dict[str, list]:
    """What /service answers for each shared photo: the reference every protocol (REST and gRPC) must match."""
    import requests

    return {name: requests.post(f"{server.url}/service", data=body, timeout=60).json()
            for name, body in sorted(photo_bytes.items())}


AUTH = ("émile", "pässwörd")  # non-ASCII on purpose: credentials are compared as bytes


@pytest.fixture(scope="session")
def guarded(tmp_path_factory):
    """Two servers, open and under --auth, each with its own Gradio cache, flagging and train folders (so that
    every copy it makes can be searched), a flag budget of 3 photos and 4 event streams per client. Started on
    first use, shared by the tests of the second security review (test_hole_*.py)."""
    started: dict = {}

    def get(auth: tuple[str, str] | None):
        if auth not in started:
            folder = tmp_path_factory.mktemp("auth" if auth else "open")
            args = ["--flagging-dir", str(folder / "flagged"), "--train-dir", str(folder / "trained"),
                    "--max-flagged", "3", "--streams-per-client", "4"]
            if auth:
                args += ["--auth", ":".join(auth)]
            started[auth] = (Server(*args, env={"GRADIO_TEMP_DIR": str(folder / "gradio")}), folder)
        return started[auth]

    yield get
    for running, _ in started.values():
        running.stop()


# The quick tier (./test.sh -m "not slow") leaves out the end-to-end tests that take tens of seconds each: the
# benchmark, the browser, training, Ray, kills and the soak. CI runs them all.
SLOW_MODULES = {"test_bench", "test_browser", "test_retrain", "test_train_tab", "test_ray_cluster", "test_resources",
                "test_engine_choice", "test_front_door", "test_proxy", "test_operations",
                "test_conventions", "test_hole_connections", "test_docker"}
SLOW_TESTS = {"test_short_soak", "test_auth_protects_page_api_and_service", "test_uai_code_served_by_app_py",
              "test_a_batch_zip_of_large_members_is_read_a_chunk_at_a_time",
              "test_the_precision_guard_refuses_an_int8_model_that_disagrees",
              "test_a_recorded_conversion_serves_without_tensorflow",
              "test_bf16_serves_where_the_cpu_runs_it_and_keeps_the_answers",
              "test_each_engine_gives_tensorflows_answers", "test_name_versions_auth_and_reload",
              "test_a_refused_version_is_retried_when_its_files_change"}


def pytest_collection_finish(session) -> None:
    """The Docker image takes minutes of pip and disk to build: begun now, beside the other tests."""
    if any(item.module.__name__ == "test_docker" for item in session.items):
        import test_docker

        test_docker.start_building()


def pytest_sessionfinish(session) -> None:
    test_docker = sys.modules.get("test_docker")
    if test_docker:
        test_docker.BUILDING.stop()  # and dockerd, if the build started it


# Run last, in this order: the Docker tests, whose image is built beside all the others (in its place among them,
# they waited 77 s of a fresh machine's run for it); then the benchmark, whose smoke run drives servers against the
# clock, which that build would starve.
RUN_LAST = ["test_docker", "test_bench"]


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.module.__name__ in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    last = {name: place for place, name in enumerate(RUN_LAST, 1)}
    items.sort(key=lambda item: last.get(item.module.__name__, 0))  # stable: the order is otherwise kept
