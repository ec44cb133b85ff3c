"""Shared fixtures: the project's paths, the real photos, the default model loaded once, tiny test models."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.null_model import COLOURS, colour_logits, write_colour_graph  # noqa: F401  (the tests' tiny model)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's upload cache for this run, set before Gradio is imported (it reads it once): the in-process servers'
# (tests/in_process.py) and, unless a test gives one its own, the server processes'. Searched by the tests that
# look for what a server copied; deleted at the end of the run.
GRADIO_CACHE = Path(tempfile.mkdtemp(prefix="classifier-tests-gradio-"))
os.environ["GRADIO_TEMP_DIR"] = str(GRADIO_CACHE)

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "photos"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_LABELS = {"espresso", "cup", "coffee mug"}


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
    """A conf.json in UAI's format. main_file defaults to the project's module, importable from ROOT.

    The tiny colour models (size 8) name LiteRT as their runtime unless the test names another: loading one then
    converts it and checks it against TensorFlow, but does not time three engines against each other (~2 s a
    load). The choice by timing ("auto", the product's default) is test_engines' and test_engine_choice's subject,
    and they ask for it by name."""
    if size == 8:
        tensorflow_keys.setdefault("runtime", "litert")
    conf = {"http_server": {"exec": {"main_class": main_class, "main_file": main_file},
                            "tensorflow": {"model_dir": model_dir, "input_width": str(size),
                                           "input_height": str(size), **tensorflow_keys}}}
    path = folder / "conf.json"
    path.write_text(json.dumps(conf))
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
    """The default server, built in this process (tests/in_process.py) and shared by the tests."""
    from in_process import InProcessServer

    running = InProcessServer("--flagging-dir", str(flagging_dir))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    """The default server as `python app.py` runs it, for what only a process shows: its printed start."""
    running = Server("--flagging-dir", str(tmp_path_factory.mktemp("flagged-by-process")))
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
    """Two servers, open and under --auth, each with its own flagging and train folders (so that every copy it
    makes can be searched, with the run's Gradio cache), a flag budget of 3 photos and 4 event streams per client.
    Built in this process on first use, shared by the security tests (test_page_files, test_input_bounds, …)."""
    from in_process import InProcessServer

    started: dict = {}

    def get(auth: tuple[str, str] | None):
        if auth not in started:
            folder = tmp_path_factory.mktemp("auth" if auth else "open")
            args = ["--flagging-dir", str(folder / "flagged"), "--train-dir", str(folder / "trained"),
                    "--max-flagged", "3", "--streams-per-client", "4"]
            if auth:
                args += ["--auth", ":".join(auth)]
            started[auth] = (InProcessServer(*args), folder)
        return started[auth]

    yield get
    for running, _ in started.values():
        running.stop()


# The quick tier (./test.sh -m "not slow", ~1 minute) leaves out the tests that take seconds each: the benchmark,
# the browser, training, Ray, Docker, real processes (kills, signals, the soak), conversions of real models. CI and
# ./test.sh run them all.
SLOW_MODULES = {"test_bench", "test_browser", "test_browser_camera", "test_retrain", "test_train_tab",
                "test_ray_cluster", "test_resources", "test_engine_choice", "test_front_door", "test_proxy",
                "test_operations", "test_conventions", "test_docker", "test_package"}
SLOW_TESTS = {"test_short_soak", "test_the_server_starts_quietly", "test_app_py_prints_the_model_it_serves",
              "test_auth_protects_page_api_and_service", "test_uai_code_served_by_app_py",
              "test_a_batch_zip_of_large_members_is_read_a_chunk_at_a_time",
              "test_the_precision_guard_refuses_an_int8_model_that_disagrees",
              "test_a_recorded_conversion_serves_without_tensorflow",
              "test_bf16_serves_where_the_cpu_runs_it_and_keeps_the_answers",
              "test_each_engine_gives_tensorflows_answers", "test_name_versions_auth_and_reload",
              "test_a_refused_version_is_retried_when_its_files_change",
              "test_an_onnx_model_served_through_every_door",
              "test_an_onnx_model_is_served_in_its_layout_checked_against_onnx_runtime",
              "test_an_encoded_image_model_served", "test_auto_serves_the_engine_that_serves_fastest_and_logs_each_figure",
              "test_calls_past_the_cap_are_refused_and_a_stream_ends_at_its_longest",
              "test_a_large_16_bit_png_is_reduced_before_the_float_conversion",
              "test_the_command_lines_json_holds_plain_numbers", "test_sigterm_finishes_accepted_requests",
              "test_auth_is_asked_of_every_call_but_the_probes", "test_a_taken_grpc_port_stops_start_up_with_a_clear_message",
              "test_no_event_takes_or_gives_back_a_server_file_in_any_shape",
              "test_share_without_internet_keeps_serving",
              "test_a_batch_of_real_photos_still_classifies", "test_a_burst_of_reloads_loads_the_model_once"}


# Under pytest-xdist (./test.sh runs two workers), the controller builds the Docker image, since it outlives the
# workers and runs one build whichever worker runs the Docker tests; it names the file the result goes to.
BUILD_REPORT = "CLASSIFIER_DOCKER_BUILD"


def is_xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config) -> None:
    if is_xdist_controller(config):  # before the workers start: they inherit the environment
        os.environ[BUILD_REPORT] = str(GRADIO_CACHE / "docker-build.json")


def start_docker_build(config, ids) -> None:
    """The Docker image takes minutes of pip and disk to build: begun once the tests are collected, beside them."""
    if not config.option.collectonly and any(id.startswith("tests/test_docker.py") for id in ids):
        import test_docker

        test_docker.start_building()


def pytest_collection_finish(session) -> None:
    if not hasattr(session.config, "workerinput"):  # in one process; under xdist, the controller's hook below
        start_docker_build(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:
    start_docker_build(node.config, ids)


def pytest_sessionfinish(session) -> None:
    test_docker = sys.modules.get("test_docker")
    if test_docker:
        test_docker.BUILDING.stop()  # and dockerd, if the build started it
    shutil.rmtree(GRADIO_CACHE, ignore_errors=True)  # this process's (the controller's holds the build's report)


# ./test.sh runs the tests on two pytest-xdist workers, then the Ray cluster test alone (CLASSIFIER_TESTS_ALONE:
# "exclude" in the first run, "only" in the second): it loads the whole machine, and beside the other worker's tests
# two fresh clones' runs lost 2 requests of ~1600–1900 (a 500) when a node was removed; alone it passed in every CI
# run. Run first: the benchmark, the longest module. Run last: the Docker tests, whose image is built beside all the
# others (in its place among them, they waited 77 s of a fresh machine's run).
ALONE = {"test_ray_cluster"}
RUN_FIRST = ["test_bench"]
RUN_LAST = ["test_docker"]


def pytest_collection_modifyitems(config, items) -> None:
    alone = os.environ.get("CLASSIFIER_TESTS_ALONE")
    if alone in ("exclude", "only"):
        kept = [item for item in items if (item.module.__name__ in ALONE) == (alone == "only")]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    for item in items:
        if item.module.__name__ in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if shares_a_module_fixture(item):  # one worker runs the module (--dist loadgroup): its fixtures made once
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    place = {name: -1 for name in RUN_FIRST} | {name: position for position, name in enumerate(RUN_LAST, 1)}
    items.sort(key=lambda item: place.get(item.module.__name__, 0))  # stable: the order is otherwise kept


def shares_a_module_fixture(item) -> bool:
    # pytest has no public way to ask which fixtures (with their scopes) an item uses: _fixtureinfo holds them.
    definitions = item._fixtureinfo.name2fixturedefs.values()
    return any(fixture.scope == "module" for fixtures in definitions for fixture in fixtures)
