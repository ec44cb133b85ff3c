"""Many models in one server: a model repository of three formats (a frozen graph, a folder with its conf.json, a
Teachable Machine .zip) and a broken one, each reached by name on every door (curl, tritonclient over HTTP and
gRPC, TF Serving's REST and gRPC stubs), listed in the repository index, loaded and unloaded while the others
serve; the admin actions behind the login."""
from __future__ import annotations

import base64
import zipfile
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

import app
from classifier import ConfError
from classifier.from_path import discover
from conftest import AUTH, CAT_LABELS, PHOTOS, ROOT, encode, solid, write_colour_graph, write_conf
from in_process import InProcessServer
from test_conventions import keras2_h5
from test_grpc import tf_serving
from test_operations import metric

RED = encode(solid("red"))
CAT = (PHOTOS / "cat.jpeg").read_bytes()


def teachable_machine_zip(path: Path) -> Path:
    """converted_keras.zip as Teachable Machine exports it (keras_model.h5, numbered labels.txt)."""
    keras2_h5(path.parent / "keras_model.h5")
    (path.parent / "labels.txt").write_text("0 red\n1 green\n2 blue\n")
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(path.parent / "keras_model.h5", "keras_model.h5")
        archive.write(path.parent / "labels.txt", "labels.txt")
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("repository")
    write_colour_graph(folder / "colours" / "model")
    write_conf(folder / "colours")  # a folder holding its conf.json: served as the conf says
    made = tmp_path_factory.mktemp("tm")
    teachable_machine_zip(made / "converted_keras.zip").rename(folder / "tm.zip")
    (folder / "broken.pb").write_bytes(b"not a graph")
    (folder / "README.md").write_text("the models of this server\n")  # not a model
    return folder


@pytest.fixture(scope="module")
def served(repository):
    """The repository, the default ImageNet graph beside it by name, colours as the default model."""
    running = InProcessServer("--model-repository", str(repository), "--model", f"imagenet={ROOT / 'checkpoint_dir'}",
                              "--default-model", "colours", "--open-admin")
    yield running
    running.stop()


def service(url: str, body: bytes, name: str | None = None) -> requests.Response:
    return requests.post(f"{url}/service" + (f"/{name}" if name else ""), data=body, timeout=60)


def triton_image(module, body: bytes):
    tensor = module.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([body], dtype=object))
    return tensor


# Naming: what is a model, and by which name.
def test_a_repository_names_each_model_by_its_folder_or_file_stem(repository, tmp_path):
    assert sorted(discover(repository)) == ["broken", "colours", "tm"]  # README.md is no model
    assert discover(repository)["colours"] == repository / "colours" / "conf.json"
    (tmp_path / "a.pb").write_bytes(b"")
    (tmp_path / "a.onnx").write_bytes(b"")
    with pytest.raises(ConfError, match="two entries are named 'a'"):
        discover(tmp_path)
    (tmp_path / "a.onnx").unlink()
    (tmp_path / "two words.pb").write_bytes(b"")
    with pytest.raises(ConfError, match="'two words' cannot name a model"):
        discover(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfError, match="no models in it"):
        discover(tmp_path / "empty")


def test_one_model_is_served_as_before_and_several_by_name():
    graph = str(ROOT / "checkpoint_dir")
    assert app.models_by_name(None, []) == {} and app.models_by_name(None, [graph]) == {}
    assert list(app.models_by_name(None, [f"imagenet={graph}"])) == ["imagenet"]
    assert sorted(app.models_by_name(None, [graph, f"{graph}/frozen_inference_graph.pb"])) == \
        ["checkpoint_dir", "frozen_inference_graph"]
    with pytest.raises(ConfError, match="served already"):
        app.models_by_name(None, [f"a={graph}", f"a={graph}"])
    with pytest.raises(SystemExit, match="--default-model nope: no model of that name"):
        app.settings_from(app.parse_args(["--model", f"a={graph}", "--default-model", "nope"]))


# Every door, by name.
def test_each_model_answers_by_name_on_every_door(served):
    import tensorflow as tf

    url = served.url
    assert service(url, RED, "colours").json()[0][0] == "red"
    assert service(url, RED, "tm").json()[0][0] == "red"
    assert service(url, CAT, "imagenet").json()[0][0] in CAT_LABELS
    assert service(url, RED).json()[0][0] == "red"  # /service: the default model
    assert requests.post(f"{url}/explain/imagenet", data=CAT, timeout=120).json()["label"] in CAT_LABELS

    over_http = triton_http.InferenceServerClient(f"127.0.0.1:{served.port}")
    over_grpc = triton_grpc.InferenceServerClient(served.grpc_target)
    for name, body, wanted in (("tm", RED, {"red"}), ("imagenet", CAT, CAT_LABELS)):
        for client, module in ((over_http, triton_http), (over_grpc, triton_grpc)):
            answer = client.infer(name, [triton_image(module, body)], outputs=[module.InferRequestedOutput("labels")])
            assert answer.as_numpy("labels")[0][0].decode() in wanted, (name, module.__name__)
            response = answer.get_response()
            assert (response["model_name"] if module is triton_http else response.model_name) == name
        assert over_http.get_model_metadata(name)["name"] == name

    classified = requests.post(f"{url}/v1/models/tm:classify", timeout=60, json={
        "examples": [{"image": {"b64": base64.b64encode(RED).decode()}}]}).json()
    assert classified["results"][0][0][0] == "red"
    _, _, _, _, predict, prediction_service = tf_serving()
    with grpc.insecure_channel(served.grpc_target) as channel:
        request = predict.PredictRequest()
        request.model_spec.name = "imagenet"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto([CAT]))
        answer = prediction_service.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert answer.model_spec.name == "imagenet" and tf.make_ndarray(answer.outputs["probabilities"]).shape == (1, 1000)


def test_the_page_api_takes_the_model_by_name(served, tmp_path):
    """gradio_client: /classify, /explain and /classify_batch take model_name (the page's picker), the default when
    it is left out, and an unknown name is refused with the names served."""
    from gradio_client import Client, handle_file

    red = tmp_path / "red.png"
    red.write_bytes(RED)
    cat = handle_file(str(PHOTOS / "cat.jpeg"))
    client = Client(served.url, verbose=False)
    parameters = [p["parameter_name"] for p in client.view_api(return_format="dict", print_info=False)
                  ["named_endpoints"]["/classify"]["parameters"]]
    assert parameters == ["image", "model_name"]
    assert client.predict(handle_file(str(red)), api_name="/classify")["label"] == "red"  # the default model
    assert client.predict(handle_file(str(red)), "tm", api_name="/classify")["label"] == "red"
    assert client.predict(cat, "imagenet", api_name="/classify")["label"] in CAT_LABELS
    assert Path(client.predict(cat, "", "imagenet", api_name="/explain")).stat().st_size > 0
    gallery, csv, *_ = client.predict([handle_file(str(red)), cat], "as dropped", "imagenet",
                                      api_name="/classify_batch")
    assert len(gallery) == 2 and any(label in Path(csv).read_text() for label in CAT_LABELS)
    with pytest.raises(Exception, match="unknown model 'nope': this server serves 'broken', 'colours'"):
        client.predict(cat, "nope", api_name="/classify")


def test_metrics_are_labelled_by_model_and_only_by_names_served(served):
    before = requests.get(f"{served.url}/metrics", timeout=10).text
    for name in ("tm", "imagenet"):
        assert service(served.url, CAT, name).status_code == 200
    assert service(served.url, CAT).status_code == 200  # /service: the default, colours
    assert service(served.url, CAT, "made-up").status_code == 404
    assert requests.get(f"{served.url}/v1/models/tm", timeout=10).status_code == 200
    text = requests.get(f"{served.url}/metrics", timeout=10).text

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, 0, **labels)

    for model in ("tm", "imagenet", "colours"):
        assert grew("classifier_requests_total", endpoint="/service", model=model, status="200") >= 1, model
        assert grew("classifier_images_total", model=model, outcome="ok") >= 1, model
        assert grew("classifier_batch_size_count", model=model) >= 1, model
        assert metric(text, "classifier_queue_depth", model=model) == 0
    assert grew("classifier_requests_total", endpoint="/service", model="", status="404") >= 1
    assert grew("classifier_requests_total", endpoint="/v1", model="tm", status="200") >= 1
    assert 'model="made-up"' not in text  # a client cannot create series


@pytest.mark.browser
def test_the_page_picks_a_model_and_classifies_with_it(served):
    """Chromium: the picker above the tabs offers every model, the default chosen; picking another classifies the
    photo shown again, with the new model's labels."""
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, DROP_ZONE, FLAGS, TOP_LABEL, choose_file
    from conftest import require_debian_package

    require_debian_package(CHROMIUM, "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served.url + "/")
            page.wait_for_selector(DROP_ZONE, timeout=60_000)
            picker = page.locator("#model-picker input")
            assert picker.input_value() == "colours"
            choose_file(page, DROP_ZONE, [PHOTOS / "cat.jpeg"])
            page.wait_for_selector(TOP_LABEL, timeout=60_000)
            assert page.inner_text(TOP_LABEL).strip() in {"red", "green", "blue"}  # the colour model's answer
            picker.click()
            options = page.locator("#model-picker [role=option]")
            options.first.wait_for(timeout=10_000)
            assert [option.get_attribute("aria-label") for option in options.all()] == \
                ["broken", "colours", "imagenet", "tm"]
            page.locator('#model-picker [role=option][aria-label="imagenet"]').click()
            page.wait_for_function(f"""labels => {{
                const shown = document.querySelector('{TOP_LABEL}');
                return shown && labels.includes(shown.innerText.trim());
            }}""", arg=sorted(CAT_LABELS), timeout=60_000)
            page.get_by_text("1000 labels").wait_for(timeout=30_000)  # the heading names the picked model
        finally:
            browser.close()


def test_an_unknown_name_is_404_and_a_broken_model_is_listed_unavailable_while_the_others_serve(served, repository):
    broken_file = repository / "broken.pb"
    refused = service(served.url, RED, "nope")
    assert refused.status_code == 404
    assert refused.json()["error"] == "unknown model 'nope': this server serves 'broken', 'colours', 'imagenet', 'tm'"
    assert requests.get(f"{served.url}/v2/models/nope", timeout=10).status_code == 404
    assert requests.get(f"{served.url}/v1/models/nope", timeout=10).status_code == 404
    with pytest.raises(InferenceServerException) as raised:
        triton_grpc.InferenceServerClient(served.grpc_target).infer("nope", [triton_image(triton_grpc, RED)])
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "'colours'" in raised.value.message()

    broken = service(served.url, RED, "broken")
    assert broken.status_code == 503
    assert broken.json()["error"] == f"model 'broken' is unavailable: {broken_file} is not a TensorFlow GraphDef: " \
                                     "Error parsing message with type 'tensorflow.GraphDef'"
    for client in (triton_http.InferenceServerClient(f"127.0.0.1:{served.port}"),
                   triton_grpc.InferenceServerClient(served.grpc_target)):
        index = client.get_model_repository_index()
        rows = index if isinstance(index, list) else [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models]
        states = {row["name"]: (row["state"], row["reason"]) for row in rows}
        assert states["broken"][0] == "UNAVAILABLE" and "not a TensorFlow GraphDef" in states["broken"][1]
        assert {name: state for name, (state, _) in states.items() if name != "broken"} == \
            {"colours": "READY", "imagenet": "READY", "tm": "READY"}
        assert not client.is_model_ready("broken") and client.is_model_ready("tm")
    ready_only = requests.post(f"{served.url}/v2/repository/index", json={"ready": True}, timeout=10).json()
    assert [row["name"] for row in ready_only] == ["colours", "imagenet", "tm"]


def test_a_model_is_unloaded_and_loaded_again_while_the_others_serve(served):
    client = triton_grpc.InferenceServerClient(served.grpc_target)
    client.unload_model("tm")
    assert service(served.url, RED, "tm").status_code == 503
    assert service(served.url, RED, "tm").json()["error"] == "model 'tm' is unavailable: unloaded"
    assert service(served.url, CAT, "imagenet").status_code == 200  # the others serve on
    index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert index["tm"] == ("UNAVAILABLE", "unloaded")
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    assert 'classifier_model_info{model="tm"' not in text  # its series went with it
    assert metric(text, "classifier_model_unloads_total", model="tm") >= 1

    triton_http.InferenceServerClient(f"127.0.0.1:{served.port}").load_model("tm")
    assert service(served.url, RED, "tm").json()[0][0] == "red"
    described = metric(requests.get(f"{served.url}/metrics", timeout=10).text, "classifier_model_info", model="tm")
    assert described == 1
    with pytest.raises(InferenceServerException, match="is the default"):
        client.unload_model("colours")  # it serves /service and the page
    with pytest.raises(InferenceServerException, match="cannot be loaded: .*not a TensorFlow GraphDef"):
        client.load_model("broken")
    refused = requests.post(f"{served.url}/v2/repository/models/nope/load", timeout=10)
    assert refused.status_code == 404 and "'tm'" in refused.json()["error"]


def colour_model(folder: Path, labels: list[str]) -> Path:
    """A tiny colour model of its own labels, its conf.json naming LiteRT (conftest.write_conf)."""
    write_colour_graph(folder / "model")
    (folder / "model" / "label_map.txt").write_text("\n".join(labels) + "\n")
    return write_conf(folder)


def test_a_model_added_to_a_server_of_one_conf_is_served_as_itself(tmp_path):
    """The Train tab's "Serve this model" on a server of one conf (python app.py, no repository) adds that model;
    until 2026-12-05 the name was given the default model instead."""
    import asyncio

    from classifier.serving.server import repository_of

    default = colour_model(tmp_path / "default", ["red", "green", "blue"])
    added = colour_model(tmp_path / "added", ["rot", "gruen", "blau"])
    models = repository_of(app.settings_from(app.parse_args(["--conf", str(default)])))

    async def add_and_classify() -> list:
        await models.add("added", added)
        core = await models.get("added")
        assert core is not models.default and core.conf_path == added
        return await core.batcher.classify(RED)

    assert asyncio.run(add_and_classify())[0][0] == "rot"
    assert models.default.model.labels == ["red", "green", "blue"]


def test_models_by_name_hold_litert_lean_and_a_server_of_one_per_core(tmp_path, monkeypatch):
    """A server of models by name loads LiteRT in the lean layout (one interpreter fewer a model), a reload too;
    a server of one conf keeps the per-core layout; $CLASSIFIER_ENGINE_SETTINGS overrides both."""
    from classifier.serving.server import repository_of

    conf = colour_model(tmp_path / "colours", ["red", "green", "blue"])

    def engine(*args: str) -> tuple[str, Any]:
        models = repository_of(app.settings_from(app.parse_args(list(args))))
        return models.default.model.runtime.engine, models.default

    lean, core = engine("--model", f"colours={conf.parent}")
    assert lean.endswith("(lean)"), lean
    assert core.reloader.reload("a test").runtime.engine.endswith("(lean)")  # in the reload's own thread
    single, _ = engine("--conf", str(conf))
    assert single.startswith("LiteRT") and "(" not in single, single  # per-core: no suffix
    monkeypatch.setenv("CLASSIFIER_ENGINE_SETTINGS", '{"litert": {"layout": "per-core"}}')
    overridden, _ = engine("--model", f"colours={conf.parent}")
    assert "(" not in overridden, overridden


def test_loading_and_unloading_are_admin_actions(tmp_path):
    write_colour_graph(tmp_path / "repository" / "a" / "model")
    write_conf(tmp_path / "repository" / "a")
    write_colour_graph(tmp_path / "files")  # b: one model file, its labels beside it
    models = ["--model-repository", str(tmp_path / "repository"),
              "--model", f"b={tmp_path / 'files' / 'frozen_inference_graph.pb'}"]
    with InProcessServer(*models) as open_server:  # no login and no --open-admin: refused, saying how
        refused = requests.post(f"{open_server.url}/v2/repository/models/b/unload", timeout=10)
        assert refused.status_code == 403 and "--auth USER:PASS" in refused.json()["error"]
        with pytest.raises(InferenceServerException) as raised:
            triton_grpc.InferenceServerClient(open_server.grpc_target).unload_model("b")
        assert raised.value.status() == "StatusCode.PERMISSION_DENIED"
        assert requests.post(f"{open_server.url}/v2/repository/index", timeout=10).status_code == 200
    with InProcessServer(*models, "--auth", ":".join(AUTH)) as guarded:
        url = f"{guarded.url}/v2/repository/models/b/unload"
        assert requests.post(url, timeout=10).status_code == 401
        assert requests.post(f"{guarded.url}/v2/repository/index", timeout=10).status_code == 401
        # httpx: UTF-8 credentials (requests would send them in Latin-1)
        assert httpx.post(url, auth=AUTH, timeout=10).status_code == 200
        assert service(guarded.url, RED, "b").status_code == 401
        assert httpx.post(f"{guarded.url}/service/b", content=RED, auth=AUTH, timeout=10).status_code == 503


def states(url: str) -> dict[str, tuple[str, str]]:
    return {row["name"]: (row["state"], row["reason"])
            for row in requests.post(f"{url}/v2/repository/index", timeout=10).json()}


def test_at_most_n_models_stay_loaded_the_least_recently_used_making_room(tmp_path):
    for name in ("a", "b", "c"):
        write_colour_graph(tmp_path / name / "model")
        write_conf(tmp_path / name)
    with InProcessServer("--model-repository", str(tmp_path), "--max-loaded-models", "2") as running:
        url = running.url
        assert states(url)["c"] == ("UNAVAILABLE", "not loaded: --max-loaded-models 2; it loads on its first request")
        assert service(url, RED, "c").json()[0][0] == "red"  # loaded on its request, and b (not a: the
        now = states(url)                                    # default) unloaded to make room
        assert {name: state for name, (state, _) in now.items()} == {"a": "READY", "b": "UNAVAILABLE", "c": "READY"}
        assert now["b"][1].startswith("unloaded to make room (--max-loaded-models 2)")
        assert service(url, RED, "b").status_code == 200 and states(url)["c"][0] == "UNAVAILABLE"
        assert service(url, RED).status_code == 200  # the default stays
        text = requests.get(f"{url}/metrics", timeout=10).text
        assert metric(text, "classifier_model_loads_total", model="c", how="on request") >= 1
    with InProcessServer("--model-repository", str(tmp_path), "--lazy-load", "--default-model", "b") as lazy:
        assert states(lazy.url) == {"a": ("UNAVAILABLE", "not loaded yet: it loads on its first request"),
                                    "b": ("READY", ""),
                                    "c": ("UNAVAILABLE", "not loaded yet: it loads on its first request")}
        client = triton_http.InferenceServerClient(f"127.0.0.1:{lazy.port}")
        assert not client.is_model_ready("a")  # asking whether it is ready loads nothing
        answer = client.infer("a", [triton_image(triton_http, RED)], outputs=[triton_http.InferRequestedOutput("labels")])
        assert answer.as_numpy("labels")[0][0].decode() == "red" and states(lazy.url)["a"] == ("READY", "")


def test_a_model_added_to_the_folder_is_served_and_one_removed_leaves(tmp_path):
    import shutil
    import time

    def colour_model(name: str) -> None:
        write_colour_graph(tmp_path / ".making" / name / "model")
        write_conf(tmp_path / ".making" / name)
        (tmp_path / ".making" / name).rename(tmp_path / name)  # whole, as a copy done elsewhere then moved in

    def until(check, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, states(running.url)
            time.sleep(0.1)

    colour_model("a")
    with InProcessServer("--model-repository", str(tmp_path), "--repository-poll-secs", "0.2") as running:
        colour_model("b")
        until(lambda: states(running.url).get("b") == ("READY", ""))
        assert service(running.url, RED, "b").json()[0][0] == "red"
        shutil.rmtree(tmp_path / "b")
        until(lambda: "b" not in states(running.url))
        assert service(running.url, RED, "b").status_code == 404
        shutil.rmtree(tmp_path / "a")  # the default: it keeps serving from memory
        time.sleep(1)
        assert states(running.url) == {"a": ("READY", "")} and service(running.url, RED).status_code == 200
