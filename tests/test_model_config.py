"""TF Serving's model list: --model-config-file at start (re-read with --repository-poll-secs), and ModelService's
HandleReloadConfigRequest through tensorflow-serving-api's own stub, an admin action."""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import requests

from classifier import ConfError
from classifier.serving.model_sources import read_model_config
from conftest import encode, solid, write_colour_graph, write_conf
from in_process import InProcessServer
from test_operations import metric

RED = encode(solid("red"))


def colour_model(folder: Path) -> Path:
    write_colour_graph(folder / "model")
    write_conf(folder)
    return folder


def model_list(*pairs: tuple[str, str]) -> str:
    return "model_config_list {\n" + "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{path}"\n    model_platform: "tensorflow"\n  }}\n'
        for name, path in pairs) + "}\n"


def served_names(url: str) -> dict[str, str]:
    return {row["name"]: row["state"] for row in requests.post(f"{url}/v2/repository/index", timeout=10).json()}


def reload_request(*pairs: tuple[str, str]):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2
    from tensorflow_serving.config import model_server_config_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(text_format.Parse(model_list(*pairs), model_server_config_pb2.ModelServerConfig()))
    return request


def model_service(target: str):
    from tensorflow_serving.apis import model_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    return channel, model_service_pb2_grpc.ModelServiceStub(channel)


def test_the_config_file_names_each_model_and_refuses_what_it_cannot_honour(tmp_path):
    colour_model(tmp_path / "models" / "a")
    config = tmp_path / "models.config"
    config.write_text(model_list(("a", "models/a")))  # relative: from the file's folder
    assert read_model_config(config) == {"a": tmp_path / "models" / "a" / "conf.json"}
    for text, words in [
            ("model_config_list { config { name: 'a' base_path: 'models/a' logging_config {} } }",
             "has no field named \"logging_config\""),
            ("model_config_list { config { name: 'a' base_path: 'models/a' "
             "model_version_policy { specific { versions: 1 } } } }", "serves the newest version folder"),
            ("model_config_list { config { name: 'a' base_path: 'models/a' version_labels { key: 'stable' "
             "value: 1 } } }", "version_labels are not served"),
            ("model_config_list { config { name: 'a' base_path: 'models/b' } }", "does not exist"),
            ("model_config_list { config { name: 'a' } }", "has no base_path"),
            ("model_config_list { config { name: 'a b' base_path: 'models/a' } }", "cannot name a model"),
            ("model_config_list { config { name: 'a' base_path: 'models/a' } config { name: 'a' base_path: "
             "'models/a' } }", "listed twice"),
            ("model_config_list {}", "lists no model"),
            ("model_config_list { config { name: 'a' base_path: 'models/a' model_platform: 'pytorch' } }",
             "model_platform 'pytorch'"),
            ("model_config_list { config { name: 'a' ", "1:"),  # the line and column protobuf's parser stopped at
    ]:
        config.write_text(text)
        with pytest.raises(ConfError, match=f"--model-config-file {config}") as raised:
            read_model_config(config)
        assert words in str(raised.value), text


def test_a_reload_config_request_replaces_the_model_list_as_an_admin_action(tmp_path):
    for name in ("a", "b", "c"):
        colour_model(tmp_path / name)
    config = tmp_path / "models.config"
    config.write_text(model_list(("a", str(tmp_path / "a")), ("b", str(tmp_path / "b"))))
    with InProcessServer("--model-config-file", str(config)) as closed:
        channel, stub = model_service(closed.grpc_target)
        with channel, pytest.raises(grpc.RpcError) as raised:
            stub.HandleReloadConfigRequest(reload_request(("a", str(tmp_path / "a"))), timeout=30)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with InProcessServer("--model-config-file", str(config), "--open-admin") as running:
        assert served_names(running.url) == {"a": "READY", "b": "READY"}
        assert requests.post(f"{running.url}/service/b", data=RED, timeout=30).json()[0][0] == "red"
        channel, stub = model_service(running.grpc_target)
        with channel:
            answer = stub.HandleReloadConfigRequest(
                reload_request(("a", str(tmp_path / "a")), ("c", str(tmp_path / "c"))), timeout=60)
            assert answer.status.error_code == 0
            assert served_names(running.url) == {"a": "READY", "c": "READY"}  # b left out: unloaded, gone
            assert requests.post(f"{running.url}/service/c", data=RED, timeout=30).json()[0][0] == "red"
            assert requests.post(f"{running.url}/service/b", data=RED, timeout=30).status_code == 404
            def loads_of_c() -> float:
                text = requests.get(f"{running.url}/metrics", timeout=10).text
                return metric(text, "classifier_model_loads_total", 0, model="c", how="asked")

            before = loads_of_c()
            stub.HandleReloadConfigRequest(reload_request(("a", str(tmp_path / "a")), ("c", str(tmp_path / "b"))),
                                           timeout=60)  # c's files moved: loaded from there, in c's place
            metadata = requests.get(f"{running.url}/v2/models/c", timeout=10).json()
            assert metadata["name"] == "c" and served_names(running.url) == {"a": "READY", "c": "READY"}
            assert loads_of_c() == before + 1  # loaded anew, from b's folder

            with pytest.raises(grpc.RpcError) as raised:  # the default serves /service and the page
                stub.HandleReloadConfigRequest(reload_request(("c", str(tmp_path / "c"))), timeout=30)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "leaves out 'a', the default model" in raised.value.details()
            with pytest.raises(grpc.RpcError) as raised:
                stub.HandleReloadConfigRequest(reload_request(("a", str(tmp_path / "nowhere"))), timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not exist" in \
                raised.value.details()
            assert served_names(running.url) == {"a": "READY", "c": "READY"}  # nothing changed by either

            (tmp_path / "broken").mkdir()
            (tmp_path / "broken" / "frozen_inference_graph.pb").write_bytes(b"not a graph")
            with pytest.raises(grpc.RpcError) as raised:
                stub.HandleReloadConfigRequest(reload_request(
                    ("a", str(tmp_path / "a")), ("c", str(tmp_path / "c")), ("broken", str(tmp_path / "broken"))),
                    timeout=60)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "model 'broken' cannot be loaded" in raised.value.details()
            assert served_names(running.url) == {"a": "READY", "broken": "UNAVAILABLE", "c": "READY"}


def test_a_reload_config_request_is_refused_for_a_repository_folder(tmp_path):
    colour_model(tmp_path / "repository" / "a")
    with InProcessServer("--model-repository", str(tmp_path / "repository"), "--open-admin") as running:
        channel, stub = model_service(running.grpc_target)
        with channel, pytest.raises(grpc.RpcError) as raised:
            stub.HandleReloadConfigRequest(reload_request(("a", str(tmp_path / "repository" / "a"))), timeout=30)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "add or remove models there" in raised.value.details()


def test_a_changed_config_file_is_applied_while_serving(tmp_path):
    for name in ("a", "b"):
        colour_model(tmp_path / name)
    config = tmp_path / "models.config"
    config.write_text(model_list(("a", "a")))
    with InProcessServer("--model-config-file", str(config), "--repository-poll-secs", "0.2") as running:
        assert served_names(running.url) == {"a": "READY"}
        changed = tmp_path / "models.config.new"
        changed.write_text(model_list(("a", "a"), ("b", "b")))
        changed.rename(config)  # whole, as an editor or a deploy writes it
        deadline = time.monotonic() + 60
        while served_names(running.url) != {"a": "READY", "b": "READY"} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert requests.post(f"{running.url}/service/b", data=RED, timeout=30).json()[0][0] == "red"
        config.write_text("model_config_list { config { name: 'a' ")  # half-written: ignored, logged
        time.sleep(1)
        assert served_names(running.url) == {"a": "READY", "b": "READY"}


def test_the_config_file_is_given_alone():
    import app

    with pytest.raises(SystemExit, match="give it alone"):
        app.settings_from(app.parse_args(["--model-config-file", "x.config", "--model", "a=b"]))
