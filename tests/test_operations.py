"""Operating the server: Prometheus metrics, model versions with hot reload (endpoint, SIGHUP, polling)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import classifier
from conftest import PHOTOS, Server, encode, solid, write_colour_graph, write_conf
from in_process import InProcessServer
from test_app import curl


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of one series in Prometheus' text format (`default` if it is absent, when given)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise KeyError(f"{name} {labels} not in the metrics")


def test_metrics(server_process):
    """A process of its own: Prometheus' registry is the process's, and the tests' process builds many servers."""
    server = server_process
    for _ in range(3):
        curl("-T", str(PHOTOS / "cat.jpeg"), f"{server.url}/service")
    curl("--data-binary", "junk", f"{server.url}/service")
    text = subprocess.run(["curl", "-s", f"{server.url}/metrics"], capture_output=True, text=True).stdout
    assert metric(text, "classifier_requests_total", endpoint="/service", status="200") >= 3
    assert metric(text, "classifier_requests_total", endpoint="/service", status="400") >= 1
    assert metric(text, "classifier_request_seconds_count", endpoint="/service") >= 4
    assert metric(text, "classifier_images_total", outcome="ok") >= 3
    assert metric(text, "classifier_images_total", outcome="CorruptImage") >= 1
    assert metric(text, "classifier_batch_size_count") >= 3
    assert metric(text, "classifier_queue_depth") == 0
    assert metric(text, "classifier_requests_in_progress", endpoint="/service") == 0  # each one's answered
    assert metric(text, "classifier_requests_in_progress", endpoint="/metrics") == 1  # this scrape
    assert metric(text, "classifier_model_load_seconds") > 0
    assert metric(text, "classifier_model_info", format="frozen graph", labels="1000", model_dir="checkpoint_dir",
                  model="checkpoint_dir") == 1


def versioned(tmp_path: Path, versions: list[int]) -> Path:
    for version in versions:
        write_colour_graph(tmp_path / "models" / str(version))
    return write_conf(tmp_path, model_dir="models")


def reverse_labels(folder: Path) -> None:
    """Makes a version distinguishable: same graph, labels in reverse order."""
    (folder / "label_map.txt").write_text("blue\ngreen\nred\n")


def test_the_highest_version_is_served(tmp_path):
    conf = versioned(tmp_path, [1, 2, 10])
    reverse_labels(tmp_path / "models" / "10")
    model = classifier.load(conf)
    assert model.version == 10 and model.describe().startswith("version 10 · frozen graph")
    assert model.execute([encode(solid("red"))], 1)[0][0][0] == "blue"  # version 10's labels


def test_labels_shared_by_all_versions(tmp_path):
    conf = versioned(tmp_path, [1])
    shutil.move(tmp_path / "models" / "1" / "label_map.txt", tmp_path / "models" / "label_map.txt")
    assert classifier.load(conf).labels == ["red", "green", "blue"]


def red_label(url: str, tmp_path: Path) -> str:
    red = tmp_path / "red.png"
    solid("red").save(red)
    return curl("-T", str(red), f"{url}/service")[1][0][0]


def polled_conf(tmp_path: Path) -> Path:
    """Version 1 of the colour model, its conf polling for new versions each second."""
    conf = versioned(tmp_path, [1])
    conf_data = json.loads(conf.read_text())
    conf_data["http_server"]["reload"] = {"poll_seconds": 1}
    conf.write_text(json.dumps(conf_data))
    return conf


@pytest.fixture()
def versioned_server(tmp_path):
    (tmp_path / "api-keys").write_text("key-before\n")
    running = Server("--conf", str(polled_conf(tmp_path)), "--auth", "ops:pw",  # a process: SIGHUP, its log
                     "--api-keys", str(tmp_path / "api-keys"))
    yield running, tmp_path
    running.stop()


def wait_for(predicate, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_reload_by_endpoint_sighup_and_polling(versioned_server):
    running, tmp_path = versioned_server
    auth = ("-u", "ops:pw")
    label = lambda: curl(*auth, "-T", str(tmp_path / "red.png"), f"{running.url}/service")[1][0][0]  # noqa: E731
    solid("red").save(tmp_path / "red.png")
    assert label() == "red"

    # The endpoint, behind --auth.
    write_colour_graph(tmp_path / "models" / "2")
    reverse_labels(tmp_path / "models" / "2")
    assert curl("-X", "POST", f"{running.url}/admin/reload")[0] == 401
    status, body, _ = curl(*auth, "-X", "POST", f"{running.url}/admin/reload")
    assert status == 200 and body["version"] == 2 and label() == "blue"

    # A broken new version is refused; the old one keeps serving.
    (tmp_path / "models" / "3").mkdir()
    (tmp_path / "models" / "3" / "frozen_inference_graph.pb").write_bytes(b"broken")
    status, body, _ = curl(*auth, "-X", "POST", f"{running.url}/admin/reload")
    assert status == 409 and "refused" in body["error"] and "not a TensorFlow GraphDef" in body["error"]
    assert label() == "blue"
    assert "refused the model" in running.output() and "still serving version 2" in running.output()

    # SIGHUP: the new version, and the key file read again (keys swapped without a restart).
    shutil.rmtree(tmp_path / "models" / "3")
    write_colour_graph(tmp_path / "models" / "4")
    keyed = lambda key: curl("-H", f"Authorization: Bearer {key}", "-T", str(tmp_path / "red.png"),  # noqa: E731
                             f"{running.url}/service")[0]
    assert keyed("key-before") == 200 and keyed("key-after") == 401
    (tmp_path / "api-keys").write_text("key-after\n")
    running.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: label() == "red")
    assert "now serving version 4" in running.output()
    assert keyed("key-after") == 200 and keyed("key-before") == 401
    assert "key-before" not in running.output() and "key-after" not in running.output()

    # Polling (conf: reload.poll_seconds = 1).
    write_colour_graph(tmp_path / "models" / "5")
    reverse_labels(tmp_path / "models" / "5")
    assert wait_for(lambda: label() == "blue")
    assert "version 5 appeared" in running.output()
    text = subprocess.run(["curl", "-s", f"{running.url}/metrics"], capture_output=True, text=True).stdout
    assert metric(text, "classifier_model_info", version="5") == 1


def test_requests_in_flight_during_a_reload_all_succeed(tmp_path):
    import base64
    import threading

    from bench.load import drive_http

    results = {}
    headers = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
    with InProcessServer("--conf", str(polled_conf(tmp_path)), "--auth", "ops:pw") as running:
        thread = threading.Thread(target=lambda: results.update(
            stats=drive_http(running.url, [encode(solid("green"))], 8, 600, keep_bodies=True, headers=headers)))
        thread.start()
        time.sleep(0.5)
        write_colour_graph(tmp_path / "models" / "2")
        reverse_labels(tmp_path / "models" / "2")
        assert curl("-u", "ops:pw", "-X", "POST", f"{running.url}/admin/reload")[0] == 200
        thread.join(120)
    stats = results["stats"]
    assert stats.statuses == {200: 600}  # nothing lost or failed across the swap
    answers = {json.loads(body)[0][0] for _, _, _, body in stats.bodies}
    assert answers == {"green"}  # green is index 1 in both label orders: every answer is right


def test_json_logs_are_one_object_a_line_with_each_request_s_fields(tmp_path):
    """--log-format json: every line of a real process's output parses (the banner, uvicorn's, the model's), and
    each request has its line: route, path, method, model, status, images, ms, client."""
    import requests

    write_colour_graph(tmp_path / "model")
    running = Server("--conf", str(write_conf(tmp_path)), "--log-format", "json", "--no-train", "--grpc-port", "0")
    try:
        red = encode(solid("red"))
        both = requests.post(f"{running.url}/service", timeout=30,
                             files=[("a", ("a.png", red, "image/png")), ("b", ("b.png", red, "image/png"))])
        assert both.status_code == 200 and len(both.json()) == 2
        assert requests.post(f"{running.url}/service", data=b"not an image", timeout=30).status_code == 400
        assert requests.get(f"{running.url}/healthz", timeout=30).status_code == 200
        time.sleep(0.5)  # the last line written
        output = running.output()
    finally:
        running.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # each one parses
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"] == "uvicorn.error" and "Uvicorn running on" in line["message"] for line in lines)
    assert any(line["logger"] == "app" and line["message"].startswith("* Model:") for line in lines)
    requests_logged = [line for line in lines if line["logger"] == "classifier.requests"]
    served, refused, probe = (next(line for line in requests_logged if line["path"] == path and line["status"] == status)
                              for path, status in (("/service", 200), ("/service", 400), ("/healthz", 200)))
    assert served["images"] == 2 and served["method"] == "POST" and served["route"] == "/service"
    assert served["model"] == "model" and served["ms"] > 0 and served["client"].startswith("127.0.0.1:")
    assert refused["images"] == 1 and probe["images"] == 0 and probe["model"] == ""
    assert not any("uvicorn.access" == line["logger"] for line in lines)  # the request lines are the access log
