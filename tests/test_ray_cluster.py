"""Ray Serve across nodes, for real: a three-node cluster (ray.cluster_utils.Cluster: a head and two worker nodes,
each a raylet of its own, all on loopback), the repository's Serve config deployed by `serve run`, app.py's whole
API answered by the replicas of every node with app.py's results, autoscaled up under load and back down after,
and a worker node lost under load."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from bench.server import free_port
from conftest import CAT_LABELS, PHOTOS, ROOT

CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray reports usage unless told not to
    # Ray Serve's proxy sends requests to the replicas on its own node while they have room: on one machine the
    # head's proxy would keep the worker nodes' replicas idle. A cluster behind one load balancer spreads anyway.
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
}
PHOTO = (PHOTOS / "cat.jpeg").read_bytes()


def config_for_this_machine(path: Path, port: int) -> Path:
    """serve.yaml as it is, but for what one machine with three one-CPU nodes needs: the proxy on the head only
    (every node's proxy would want the same port), loopback, a free port, this checkout's paths, one CPU a
    replica, at most three of them, and autoscaling delays of seconds instead of minutes."""
    config = yaml.safe_load(CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=port)
    [application] = config["applications"]
    application["args"]["conf"] = str(ROOT / "conf.json")
    application["runtime_env"]["env_vars"]["PYTHONPATH"] = str(ROOT)
    [deployment] = application["deployments"]
    deployment["ray_actor_options"].update(num_cpus=1, memory=512 * 2 ** 20)
    deployment["autoscaling_config"].update(max_replicas=3, target_ongoing_requests=2, upscale_delay_s=1,
                                            downscale_delay_s=3, metrics_interval_s=0.5, look_back_period_s=2)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Load:
    """Requests from `clients` threads until stopped, each with a deadline: every outcome is recorded (status and
    Retry-After, or the exception); none may hang."""

    def __init__(self, url: str, clients: int = 8):
        self.url, self.stop, self.outcomes, self.sent = url, threading.Event(), [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.sent += 1
                try:
                    response = client.post(f"{self.url}/service", content=PHOTO)
                    outcome = (response.status_code, response.headers.get("retry-after"),
                               response.text[:100] if response.status_code != 200 else "")
                except httpx.HTTPError as exc:
                    outcome = ("error", type(exc).__name__, str(exc)[:100])
                with self.lock:
                    self.outcomes.append(outcome)

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a request hung past its 30 s deadline"
        return Counter(outcome[:2] for outcome in self.outcomes)


def replica_counts() -> dict:
    from ray import serve

    application = serve.status().applications.get("classifier")
    deployment = application.deployments.get("Classifier") if application else None
    return dict(deployment.replica_states) if deployment else {}  # {} while the application is being deployed


def wait_for(condition, timeout: float, what: str, log: list) -> float:
    """Seconds until condition() holds (each change of the replica counts logged), or a failure after timeout."""
    started, last = time.monotonic(), None
    while time.monotonic() - started < timeout:
        counts = replica_counts()
        if counts != last:
            log.append(f"{time.monotonic() - started:5.1f} s: {counts}")
            last = counts
        if condition(counts):
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f} s: {log}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)  # before the nodes start: their processes inherit it
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
        nodes.wait_for_nodes()
        port = free_port()
        config = config_for_this_machine(tmp_path_factory.mktemp("ray") / "serve.yaml", port)
        deployed = subprocess.run(["serve", "run", "--non-blocking", "--address", nodes.address, str(config)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-3000:]
        ray.init(address=nodes.address, logging_level="ERROR")
        yield {"url": f"http://127.0.0.1:{port}", "nodes": nodes, "workers": workers}
    finally:
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_config_files_are_valid_and_the_rayservice_embeds_the_same_config():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    manifest = yaml.safe_load((CONFIG.parent / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded["applications"] == config["applications"]
    autoscaling = config["applications"][0]["deployments"][0]["autoscaling_config"]
    assert autoscaling["min_replicas"] < autoscaling["max_replicas"]


def test_replicas_on_every_node_serve_the_whole_api_autoscaled_and_survive_a_lost_node(cluster, default_model):
    url, log = cluster["url"], []
    wait_for(lambda counts: counts.get("RUNNING", 0) >= 1, 120, "a first replica running", log)

    # Autoscaling: under load, replicas are added up to the maximum, one a node (each asks for a node's CPU).
    load = Load(url)
    up_s = wait_for(lambda counts: counts.get("RUNNING", 0) == 3, 120, "scaled up to 3 replicas", log)
    print(f"\nscaled up to 3 replicas {up_s:.0f} s into the load")

    # Every route, from every node's replica (x-ray-node says which), with app.py's results.
    [expected] = default_model.execute([PHOTOS / "cat.jpeg"], 1)
    answered_by: dict[str, set] = {}
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 60
        while len(answered_by.get("/service", ())) < 3 and time.monotonic() < deadline:
            response = client.post(f"{url}/service", content=PHOTO)
            assert response.status_code == 200
            assert [label for label, _ in response.json()] == [label for label, _ in expected]
            assert all(abs(p - q) <= 1e-5 for (_, p), (_, q) in zip(response.json(), expected))
            answered_by.setdefault("/service", set()).add(response.headers["x-ray-node"])
        assert len(answered_by["/service"]) == 3, answered_by  # head and both workers
        b64 = base64.b64encode(PHOTO).decode()
        routes = {
            "/explain": lambda: client.post(f"{url}/explain", content=PHOTO),
            "/v2": lambda: client.post(f"{url}/v2/models/checkpoint_dir/infer", json={"inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}),
            "/v1": lambda: client.post(f"{url}/v1/models/checkpoint_dir:predict", json={"instances": [{"b64": b64}]}),
            "/healthz": lambda: client.get(f"{url}/healthz"),
            "/readyz": lambda: client.get(f"{url}/readyz"),
            "/metrics": lambda: client.get(f"{url}/metrics"),
        }
        for route, call in routes.items():
            deadline = time.monotonic() + 60
            while len(answered_by.get(route, ())) < 3 and time.monotonic() < deadline:
                response = call()
                assert response.status_code == 200, (route, response.text[:300])
                if route == "/explain":
                    assert response.json()["label"] == expected[0][0]
                if route == "/metrics":
                    assert "classifier_requests_total" in response.text
                answered_by.setdefault(route, set()).add(response.headers["x-ray-node"])
            assert len(answered_by[route]) == 3, (route, answered_by[route])

    # A worker node lost under load: its replica's requests fail, the others answer. A new node joins (as a
    # cloud autoscaler or KubeRay brings one) and the lost replica is replaced on it, the load still running.
    cluster["nodes"].remove_node(cluster["workers"][0])
    wait_for(lambda counts: counts.get("RUNNING", 0) == 2, 60, "the lost replica noticed", log)
    cluster["nodes"].add_node(num_cpus=1)
    replaced_s = wait_for(lambda counts: counts.get("RUNNING", 0) == 3, 120, "the lost replica replaced", log)
    print(f"the lost replica replaced on a new node {replaced_s:.0f} s after it joined")
    outcomes = load.finish()
    print(f"outcomes with a node lost under load: {dict(outcomes)} of {load.sent} sent")
    assert sum(outcomes.values()) == load.sent  # every request sent was answered, none hung
    assert outcomes[(200, None)] > 0.9 * load.sent
    failures = {outcome: count for outcome, count in outcomes.items() if outcome != (200, None)}
    # What was in flight on the lost replica, and only that, fails: Ray Serve's proxy answers it 500 (issue 28
    # asks for a 503 with Retry-After instead: not done yet, see docs/deploy.md), every other request 200.
    assert set(failures) <= {(500, None), (503, "1")}, failures
    assert sum(failures.values()) <= 8, failures  # the load's 8 clients: one request each at most

    # After the load: back down to the minimum, on the nodes that remain.
    down_s = wait_for(lambda counts: counts == {"RUNNING": 1}, 120, "scaled back down to 1 replica", log)
    print(f"scaled down to 1 replica {down_s:.0f} s after the load; replica counts: {log}")
    assert httpx.post(f"{url}/service", content=PHOTO, timeout=30).json()[0][0] in CAT_LABELS
