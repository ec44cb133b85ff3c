"""The inference routes' own lane (classifier/serving/inference_lane.py): taken by POST|PUT /service, v2 infer and
TF Serving's :predict and :classify only, behind the same layers as every other route; a JSON 500 for what
nothing answered."""
from __future__ import annotations

import base64
import logging
from dataclasses import replace

import pytest
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.testclient import TestClient

from classifier.serving import inference_lane, metrics
from classifier.serving.server import Settings, build_server
from conftest import encode, solid, write_colour_graph, write_conf


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory) -> Settings:
    folder = tmp_path_factory.mktemp("tiny")
    write_colour_graph(folder / "model")
    return Settings(conf=write_conf(folder), flagging_dir=folder / "flagged", train_dir=folder / "trained",
                    allowed_hosts=["testserver"], cors_origins=["https://app.example"])


class Counting:
    """The app behind the lane, counting the requests that reach it."""

    def __init__(self, app):
        self.app, self.paths = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.paths.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


def test_inference_requests_take_the_lane_and_every_other_request_the_app(tiny_settings):
    server = build_server(tiny_settings)
    assert isinstance(server.app, inference_lane.InferenceFirst)
    behind = server.app.app = Counting(server.app.app)
    red = encode(solid("red"))
    infer = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                         "data": [base64.b64encode(red).decode()]}]}
    with TestClient(server.app) as client:
        name = server.models.served_name(server.models.entry())
        assert client.post("/service", content=red).json()[0][0] == "red"
        assert client.put(f"/service/{name}", content=red).json()[0][0] == "red"
        v2 = client.post(f"/v2/models/{name}/infer", json=infer)
        assert v2.status_code == 200 and v2.json()["outputs"][0]["name"] == "probabilities"
        b64 = {"b64": base64.b64encode(red).decode()}
        classified = client.post(f"/v1/models/{name}:classify", json={"examples": [{"image": b64}]})
        assert classified.status_code == 200 and classified.json()["results"][0][0][0] == "red"
        assert client.post(f"/v1/models/{name}:explode", json={}).status_code == 404  # the handler's own 404
        assert behind.paths == []  # none of those reached the app
        wrong = client.get("/service")  # other methods, other routes: the app, as before
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST, PUT" and "error" in wrong.json()
        assert client.get("/healthz").status_code == 200
        assert [path for _, path in behind.paths] == ["/service", "/healthz"]


def test_the_lane_passes_the_same_layers(tiny_settings, tmp_path):
    """The allowed hosts, the login, the body limit, CORS and the metrics hold on the lane as on the app."""
    keys = tmp_path / "keys"
    keys.write_text("a-key-of-sufficient-length-0123456789\n")
    server = build_server(replace(tiny_settings, api_keys=keys))
    red = encode(solid("red"))
    key = {"Authorization": "Bearer a-key-of-sufficient-length-0123456789"}
    with TestClient(server.app) as client:
        assert client.post("/service", content=red, headers={"Host": "rebind.example", **key}).status_code == 400
        refused = client.post("/service", content=red)
        assert refused.status_code == 401 and "www-authenticate" in refused.headers
        limit = server.core.limits.max_bytes
        assert client.post("/service", content=b"x" * (limit + 2 ** 20), headers=key).status_code == 413
        answered = client.post("/service", content=red, headers={"Origin": "https://app.example", **key})
        assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == "https://app.example"
        text = client.get("/metrics").text
    served = [line for line in text.splitlines() if line.startswith("classifier_requests_total{")
              and 'endpoint="/service"' in line]
    assert any('status="401"' in line for line in served) and any('status="200"' in line for line in served), served


def test_an_exception_nothing_answered_is_a_json_500_logged_and_counted(caplog):
    async def broken(request):
        raise RuntimeError("a bug in a handler")

    async def fine(request):
        return Response("ok")

    routes = [Route("/service", broken, methods=["POST"]), Route("/service/ok", fine, methods=["POST"])]
    lane = inference_lane.lane([Middleware(metrics.MetricsMiddleware)])
    served = inference_lane.InferenceFirst(Router(), lane, routes)  # the app: no routes of its own (404)
    with TestClient(served, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        answer = client.post("/service", content=b"x")
        assert answer.status_code == 500 and answer.json() == {
            "error": "internal error; the server log has the details"}
        assert "Traceback" not in answer.text and client.post("/service/ok").text == "ok"
    assert "a bug in a handler" in caplog.text
