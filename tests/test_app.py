"""app.py on a real loopback port: curl on /service, gradio_client on /classify, health, share, auth."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import CAT_LABELS, COFFEE_LABELS, PHOTOS, ROOT, Server, encode, solid
from in_process import InProcessServer


def curl(*args: str) -> tuple[int, dict | list, dict]:
    """Runs curl; returns the status, the JSON body and the response headers."""
    run = subprocess.run(["curl", "-s", "-i", "--max-time", "60", *args], capture_output=True, timeout=90)
    head, _, body = run.stdout.partition(b"\r\n\r\n")
    while head.split(b" ")[1:2] == [b"100"]:  # curl -T sends Expect: 100-continue; the answer follows
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), json.loads(body) if body else None, headers


def test_post_and_put_raw_body(server):
    status, post, _ = curl("-X", "POST", f"{server.url}/service", "-T", str(PHOTOS / "cat.jpeg"))
    assert status == 200 and post[0][0] in CAT_LABELS and len(post) == 5
    status, put, _ = curl(f"{server.url}/service", "-T", str(PHOTOS / "cat.jpeg"))  # curl -T without -X sends PUT
    assert status == 200 and put == post
    label, probability = post[0]
    assert isinstance(label, str) and 0 < probability <= 1


def test_any_content_type(server, tmp_path):
    for content_type in ("image/jpeg", "application/octet-stream", "text/plain"):
        status, result, _ = curl("-H", f"Content-Type: {content_type}", "--data-binary",
                                 f"@{PHOTOS / 'coffee.jpeg'}", f"{server.url}/service")
        assert status == 200 and result[0][0] in COFFEE_LABELS


def test_multipart_several_files_in_order(server):
    status, results, _ = curl("-F", f"first=@{PHOTOS / 'coffee.png'}", "-F", f"second=@{PHOTOS / 'cat.jpeg'}",
                              "-F", f"third=@{PHOTOS / 'chelsea.png'}", f"{server.url}/service")
    assert status == 200 and len(results) == 3
    assert results[0][0][0] in COFFEE_LABELS and results[1][0][0] in CAT_LABELS and results[2][0][0] in CAT_LABELS


def test_error_statuses(server, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    svg = tmp_path / "drawing.jpg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    ico = tmp_path / "icon.ico"
    ico.write_bytes(encode(solid("red", (16, 16)), "ICO"))
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (20 * 1024 * 1024 + 1))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((PHOTOS / "cat.jpeg").read_bytes()[:15000])

    cases = [(empty, 400, "empty"), (text, 400, "not a recognised image"), (svg, 415, "SVG images are not supported"),
             (ico, 415, "ICO images are not supported"), (big, 413, "larger than the limit"),
             (truncated, 400, "truncated or damaged")]
    for path, expected_status, message in cases:
        status, body, headers = curl("-X", "POST", "-T", str(path), f"{server.url}/service")
        assert (status, headers["content-type"]) == (expected_status, "application/json"), (path, body)
        assert message in body["error"], body

    status, body, _ = curl("-F", f"good=@{PHOTOS / 'cat.jpeg'}", "-F", f"bad=@{ico}", f"{server.url}/service")
    assert status == 415 and body["error"].startswith("icon.ico: ICO images")
    status, body, _ = curl("-F", "field=just text", f"{server.url}/service")
    assert status == 400 and "no files" in body["error"]
    for method in ("GET", "DELETE", "PATCH"):
        status, body, headers = curl("-X", method, f"{server.url}/service")
        assert status == 405 and headers["allow"] == "POST, PUT" and "POST or PUT" in body["error"]


def test_health_and_readiness(server):
    assert curl(f"{server.url}/healthz")[:2] == (200, {"status": "ok"})
    assert curl(f"{server.url}/readyz")[:2] == (200, {"status": "ready"})


def test_gradio_client_round_trip(server):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/classify"]["parameters"]] == ["image"]  # one model: no model_name
    result = client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
    assert result["label"] in CAT_LABELS
    assert len(result["confidences"]) == 5
    _, service, _ = curl(f"{server.url}/service", "-T", str(PHOTOS / "cat.jpeg"))
    assert result["confidences"][0]["confidence"] == pytest.approx(service[0][1], abs=1e-5)


def test_page_shows_the_model_and_no_analytics(server):
    status = subprocess.run(["curl", "-s", f"{server.url}/config"], capture_output=True, text=True, timeout=30)
    config = json.loads(status.stdout)
    assert "frozen graph · 1000 labels · 224×224 input" in json.dumps(config, ensure_ascii=False)
    assert config["analytics_enabled"] is False


def test_app_py_prints_the_model_it_serves_and_one_line_a_request(server_process):
    assert "* Model: frozen graph · 1000 labels · 224×224 input" in server_process.output()
    # Text logs: uvicorn's access line, once; the request log's own line is JSON mode's (test_operations.py).
    logged = len(server_process.output())
    assert curl(f"{server_process.url}/healthz")[0] == 200
    deadline = time.monotonic() + 10
    while "/healthz" not in server_process.output()[logged:] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # a second line, if there were one
    lines = [line for line in server_process.output()[logged:].splitlines() if "/healthz" in line]
    assert len(lines) == 1 and '"GET /healthz HTTP/1.1" 200' in lines[0], lines


def test_an_unknown_flag_is_an_error_not_ignored():
    run = subprocess.run([sys.executable, "app.py", "--prot", "8080"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "unrecognized arguments: --prot 8080" in run.stderr, run.stderr[-500:]


def test_share_without_internet_keeps_serving():
    running = Server("--share")
    try:
        status, result, _ = curl(f"{running.url}/service", "-T", str(PHOTOS / "chelsea.png"))
        assert status == 200 and result[0][0] in CAT_LABELS
        deadline = time.monotonic() + 60
        while "share link" not in running.output() and time.monotonic() < deadline:
            time.sleep(0.5)
        output = running.output()
        assert "Could not open a share link" in output and "still serving locally" in output
        assert "--share without --auth" in output
        assert curl(f"{running.url}/healthz")[0] == 200
    finally:
        running.stop()


def test_auth_protects_page_api_and_service():
    running = InProcessServer("--auth", "ann:s3cret")
    try:
        assert curl("-T", str(PHOTOS / "cat.jpeg"), f"{running.url}/service")[0] == 401
        assert curl("-u", "ann:wrong", "-T", str(PHOTOS / "cat.jpeg"), f"{running.url}/service")[0] == 401
        status, result, _ = curl("-u", "ann:s3cret", "-T", str(PHOTOS / "cat.jpeg"), f"{running.url}/service")
        assert status == 200 and result[0][0] in CAT_LABELS
        assert curl(f"{running.url}/healthz")[0] == 200  # probes stay open

        from gradio_client import Client, handle_file

        with pytest.raises(Exception):
            Client(running.url, verbose=False)
        client = Client(running.url, auth=("ann", "s3cret"), verbose=False)
        assert client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")["label"] in CAT_LABELS
    finally:
        running.stop()


def test_broken_model_fails_fast(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "frozen_inference_graph.pb").write_bytes(b"not a graph")
    (tmp_path / "conf.json").write_text(json.dumps({"http_server": {
        "exec": {"main_class": "RetrainedClassificationModel", "main_file": "retrain_inference"},
        "tensorflow": {"model_dir": "model", "input_width": 224, "input_height": 224}}}))
    import app

    # In-process: the factory app.py runs, given its argv (SystemExit(message) is Python's exit code 1 and the
    # message on stderr, with no traceback). --grpc-port 0: no test depends on a fixed port being free.
    with pytest.raises(SystemExit) as stopped:
        app.build(["--conf", str(tmp_path / "conf.json"), "--port", "1", "--grpc-port", "0"])
    message = str(stopped.value.code)
    assert message.startswith("error: cannot start:") and "not a TensorFlow GraphDef" in message
