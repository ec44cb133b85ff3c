"""Ray Serve across nodes, for real: a three-node cluster (ray.cluster_utils.Cluster: a head and two worker nodes,
each a raylet of its own, all on loopback), the repository's Serve config deployed by `serve run` behind Ray
Serve's HAProxy ingress, app.py's whole API answered by the replicas of every node with app.py's results, the page
on its front deployment, autoscaled up under load and back down after, a model swapped in place under load, and a
worker node lost under load."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from bench.server import free_port
from conftest import CAT_LABELS, PHOTOS, ROOT, encode, solid, write_colour_graph, write_conf

CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
PHOTO = (PHOTOS / "cat.jpeg").read_bytes()
RED = encode(solid("red"))


def cluster_environment() -> dict:
    """What the repository asks of a cluster's environment (the HAProxy ingress and its retries), with HAProxy's
    own stats and metrics ports free ones on this machine (Ray's defaults, 8404 and 9101, may be taken)."""
    from classifier.serving.ray_serve import CLUSTER_ENVIRONMENT

    return {**CLUSTER_ENVIRONMENT, "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            # A stopping replica stays reachable this long for load balancers to forget it (Ray's default 30 s,
            # for one outside the cluster); here the head's HAProxy is the only one, and reloads within a second.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            "RAY_metrics_report_interval_ms": "1000"}  # Ray's metrics reach the nodes' endpoints each second


def colour_repository(folder: Path) -> Path:
    """A second model for the replicas to serve by name beside the default: a tiny colour graph."""
    if not folder.exists():
        write_colour_graph(folder / "colours" / "model")
        write_conf(folder / "colours")
    return folder


def config_for_this_machine(path: Path, port: int, conf: Path, flagged: Path) -> Path:
    """serve.yaml as it is, but for what one machine with three one-CPU nodes needs: the ingress on the head only
    (every node's would want the same port), loopback, a free port, this checkout's paths, one CPU a replica, at
    most three of them, no CPU asked for the page, and autoscaling delays of seconds instead of minutes."""
    config = yaml.safe_load(CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=port)
    classifier_app, page_app = config["applications"]
    classifier_app["args"]["conf"] = str(ROOT / "conf.json")
    classifier_app["args"]["model_repository"] = str(colour_repository(path.parent / "models"))
    page_app["args"]["flagging_dir"] = str(flagged)
    for application in (classifier_app, page_app):
        application["runtime_env"]["env_vars"]["PYTHONPATH"] = str(ROOT)
    [deployment] = classifier_app["deployments"]
    deployment["user_config"]["conf"] = str(conf)
    deployment["ray_actor_options"].update(num_cpus=1, memory=512 * 2 ** 20)
    deployment["autoscaling_config"].update(max_replicas=3, target_ongoing_requests=2, upscale_delay_s=1,
                                            downscale_delay_s=3, metrics_interval_s=0.5, look_back_period_s=2)
    page_app["deployments"][0]["ray_actor_options"].update(num_cpus=0, memory=256 * 2 ** 20)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def deploy(address: str, config: Path) -> None:
    """`serve run --non-blocking` of config: a first deployment, or an update of the running one."""
    deployed = subprocess.run(["serve", "run", "--non-blocking", "--address", address, str(config)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-3000:]


class Load:
    """Requests from `clients` threads until stopped, each with a deadline, each client following the retry rule
    of docs/deploy.md, at most RETRIES times a request: a 503 is sent again after its Retry-After; a 500 that no
    replica gave (no x-replica: Ray's HAProxy answers its own 502, 503 and 504 as 500) a second later; a request
    whose connection the ingress closed before any answer at once (HAProxy closes its old process's connections
    when it reloads for a replica that came or went). Every final outcome is recorded (status and Retry-After, or
    the exception), and each outcome that was retried; none may hang."""

    RETRIES = 3

    def __init__(self, url: str, clients: int = 8):
        self.url, self.stop, self.outcomes, self.retried, self.sent = url, threading.Event(), [], [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.sent += 1
                outcome = self._send(client)
                for _ in range(self.RETRIES):
                    wait = self.retry_after(outcome)
                    if wait is None:
                        break
                    time.sleep(wait)
                    with self.lock:
                        self.retried.append(outcome[:2])
                    outcome = self._send(client)
                with self.lock:
                    self.outcomes.append(outcome)

    @staticmethod
    def retry_after(outcome: tuple) -> float | None:
        """Seconds to wait before sending the request again by the rule, or None: not to be sent again."""
        status, detail, _, replica = outcome
        if status == 503:
            return float(detail or 1)
        if status == 500 and replica is None:  # the ingress's own: no replica could answer (health checks: ~0.5 s)
            return 1.0
        return 0.0 if (status, detail) == ("error", "RemoteProtocolError") else None

    def _send(self, client: httpx.Client) -> tuple:
        """(status, Retry-After, the start of a failure's body, the replica that answered: None for the ingress),
        or ("error", the exception's name, its message, None)."""
        try:
            response = client.post(f"{self.url}/service", content=PHOTO)
            return (response.status_code, response.headers.get("retry-after"),
                    response.text[:100] if response.status_code != 200 else "", response.headers.get("x-replica"))
        except httpx.HTTPError as exc:
            return ("error", type(exc).__name__, str(exc)[:100], None)

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

    environment = cluster_environment()
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # before the nodes start: their processes inherit it
    folder = tmp_path_factory.mktemp("ray")
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
        nodes.wait_for_nodes()
        port = free_port()
        config = config_for_this_machine(folder / "serve.yaml", port, ROOT / "conf.json", folder / "flagged")
        deploy(nodes.address, config)
        ray.init(address=nodes.address, logging_level="ERROR")
        yield {"url": f"http://127.0.0.1:{port}", "nodes": nodes, "workers": workers, "folder": folder}
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

    from classifier.serving.ray_serve import CLUSTER_ENVIRONMENT

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    assert [application["name"] for application in config["applications"]] == ["classifier", "page"]
    manifest = yaml.safe_load((CONFIG.parent / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded["applications"] == config["applications"]
    cluster_spec = manifest["spec"]["rayClusterConfig"]
    for group in [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]:
        [container] = group["template"]["spec"]["containers"]
        assert {entry["name"]: entry["value"] for entry in container["env"]} == CLUSTER_ENVIRONMENT
    autoscaling = config["applications"][0]["deployments"][0]["autoscaling_config"]
    assert autoscaling["min_replicas"] < autoscaling["max_replicas"]
    assert config["applications"][1]["deployments"][0]["num_replicas"] == 1  # the page: Gradio's sessions


def from_every_node(call, check, timeout: float = 60) -> set[str]:
    """The nodes (x-ray-node) whose replicas answered call() 200, with check(response) holding: three calls at a
    time, since HAProxy sends each to the replica with the fewest in flight, until all three nodes answered."""
    nodes: set[str] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(3) as pool:
        while len(nodes) < 3 and time.monotonic() < deadline:
            for response in pool.map(lambda _: call(), range(3)):
                assert response.status_code == 200, response.text[:300]
                assert check is None or check(response) is not False
                nodes.add(response.headers["x-ray-node"])
    return nodes


def ray_metric(name: str, **labels: str) -> dict[str, float]:
    """Ray Serve's own metric `name` (with these labels) summed over every live node's metrics endpoint (the
    endpoints Prometheus scrapes, listed in Ray's service-discovery file), by replica where it has one."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for node in (node for node in ray.nodes() if node["Alive"]):
        text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    key = sample.labels.get("replica", "")
                    totals[key] = totals.get(key, 0) + sample.value
    return totals


def settled_ingress_count(timeout: float = 30) -> float:
    """The requests Ray Serve's ingress counted for the classifier application, once the count has stayed the
    same for 2 s (two of the test cluster's metric reports)."""
    deadline, readings = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        readings.append(sum(ray_metric("ray_serve_num_http_requests_total", application="classifier").values()))
        if len(readings) >= 3 and len(set(readings[-3:])) == 1:
            return readings[-1]
        time.sleep(1)
    pytest.fail(f"the ingress count did not settle within {timeout:.0f} s: {readings}")


def answered(client: httpx.Client, url: str) -> httpx.Response:
    response = client.post(f"{url}/service", content=PHOTO)
    assert response.status_code == 200, response.text[:300]
    return response


def test_replicas_on_every_node_serve_the_whole_api_autoscaled_reloaded_and_survive_a_lost_node(
        cluster, default_model, request):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, log = cluster["url"], []
    wait_for(lambda counts: counts.get("RUNNING", 0) >= 1, 120, "a first replica running", log)

    # Autoscaling: under load, replicas are added up to the maximum, one a node (each asks for a node's CPU).
    load = Load(url)
    request.addfinalizer(load.stop.set)  # a failed check stops the clients before the cluster goes
    up_s = wait_for(lambda counts: counts.get("RUNNING", 0) == 3, 120, "scaled up to 3 replicas", log)
    print(f"\nscaled up to 3 replicas {up_s:.0f} s into the load")

    # Every route, from every node's replica (x-ray-node says which), with app.py's results.
    [expected] = default_model.execute([PHOTOS / "cat.jpeg"], 1)
    replicas: set[str] = set()

    def service(response: httpx.Response) -> None:
        assert [label for label, _ in response.json()] == [label for label, _ in expected]
        assert all(abs(p - q) <= 1e-5 for (_, p), (_, q) in zip(response.json(), expected))
        replicas.add(response.headers["x-replica"])

    b64 = base64.b64encode(PHOTO).decode()
    with httpx.Client(timeout=30) as client:
        routes = {
            "/service": (lambda: client.post(f"{url}/service", content=PHOTO), service),
            "/explain": (lambda: client.post(f"{url}/explain", content=PHOTO),
                         lambda response: response.json()["label"] == expected[0][0]),
            "/v2": (lambda: client.post(f"{url}/v2/models/checkpoint_dir/infer", json={"inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}), None),
            "/v1": (lambda: client.post(f"{url}/v1/models/checkpoint_dir:predict",
                                        json={"instances": [{"b64": b64}]}), None),
            # The repository's other model, by name, on every replica: each holds both.
            "/service/colours": (lambda: client.post(f"{url}/service/colours", content=RED),
                                 lambda response: response.json()[0][0] == "red"),
            "/v2/repository/index": (lambda: client.post(f"{url}/v2/repository/index"),
                                     lambda response: [row["name"] for row in response.json()] ==
                                     ["checkpoint_dir", "colours"]),
            "/healthz": (lambda: client.get(f"{url}/healthz"), None),
            "/readyz": (lambda: client.get(f"{url}/readyz"), None),
            "/metrics": (lambda: client.get(f"{url}/metrics"),
                         lambda response: "classifier_requests_total" in response.text),
        }
        for route, (call, check) in routes.items():
            nodes = from_every_node(call, check)
            assert len(nodes) == 3, (route, nodes)  # head and both workers
        assert len(replicas) == 3

        # The page: its own application at /ui (a browser asking for / is sent there), one front replica that
        # classifies through a handle to the replicas above; a bad file gets the same message as /service's.
        root = client.get(f"{url}/")
        assert root.status_code == 307 and root.headers["location"] == "ui/"
        assert "gradio" in client.get(f"{url}/ui/").text.lower()
        page = Client(f"{url}/ui/", verbose=False)
        shown = page.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
        assert [entry["label"] for entry in shown["confidences"]] == [label for label, _ in expected]
        with pytest.raises(AppError, match="not a recognised image"):
            page.predict(handle_file(str(ROOT / "README.md")), api_name="/classify")

        # Hot reload under load: a conf whose model gives 3 labels, deployed as the user_config: every replica
        # loads it beside the serving one and swaps in place (the same replicas answer: none was restarted).
        reloaded = cluster["folder"] / "top3" / "conf.json"
        reloaded.parent.mkdir()
        conf = json.loads((ROOT / "conf.json").read_text())
        conf["http_server"]["tensorflow"].update(model_dir=str(ROOT / "checkpoint_dir"), top_k=3)
        reloaded.write_text(json.dumps(conf))
        config = config_for_this_machine(cluster["folder"] / "serve.yaml", int(url.rsplit(":", 1)[1]), reloaded,
                                         cluster["folder"] / "flagged")
        started = time.monotonic()
        deploy(cluster["nodes"].address, config)
        swapped: set[str] = set()
        while swapped != replicas and time.monotonic() - started < 120:
            response = answered(client, url)
            if len(response.json()) == 3:
                swapped.add(response.headers["x-replica"])
            assert response.headers["x-replica"] in replicas, "a replica was restarted, not reloaded in place"
        assert swapped == replicas, (swapped, replicas)
        print(f"every replica serves the new conf {time.monotonic() - started:.0f} s after `serve run` began")

    # /metrics above is each replica's own; the cluster's are Ray Serve's, on each node's metrics endpoint, a
    # series per replica for Prometheus to sum: the three replicas are there (within Ray's report interval).
    deadline = time.monotonic() + 30
    while len(served := ray_metric("ray_serve_deployment_request_counter_total", deployment="Classifier")) < 3 \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert set(served) >= replicas and all(count > 0 for count in served.values()), (served, replicas)

    # A worker node lost under load: HAProxy replays what was in flight on its replica on the others (a
    # classification has no side effect), so every request is answered 200, with the client's retry rule (Load)
    # for a 503, the ingress's own 500 or a connection closed by an HAProxy reload. A new node joins (as a cloud
    # autoscaler or KubeRay brings one) and the lost replica is replaced on it, the load still running.
    cluster["nodes"].remove_node(cluster["workers"][0])
    wait_for(lambda counts: counts.get("RUNNING", 0) == 2, 60, "the lost replica noticed", log)
    cluster["nodes"].add_node(num_cpus=1)
    replaced_s = wait_for(lambda counts: counts.get("RUNNING", 0) == 3, 120, "the lost replica replaced", log)
    print(f"the lost replica replaced on a new node {replaced_s:.0f} s after it joined")
    outcomes = load.finish()
    print(f"outcomes with a model swapped and a node lost under load: {dict(outcomes)} of {load.sent} sent, "
          f"after the client rule's retries of {dict(Counter(load.retried))}; the others' bodies: "
          f"{Counter((outcome[2], outcome[3] or 'the ingress') for outcome in load.outcomes if outcome[0] != 200)}")
    assert sum(outcomes.values()) == load.sent  # every request sent was answered, none hung
    assert outcomes == {(200, None): load.sent}, outcomes  # no 500: what was lost in flight HAProxy replayed
    assert len(load.retried) <= 8 * Load.RETRIES, load.retried  # one request in flight a client, retried

    # After the load: back down to the minimum, on the nodes that remain, still serving the new conf.
    down_s = wait_for(lambda counts: counts == {"RUNNING": 1}, 120, "scaled back down to 1 replica", log)
    print(f"scaled down to 1 replica {down_s:.0f} s after the load; replica counts: {log}")
    last = httpx.post(f"{url}/service", content=PHOTO, timeout=30).json()
    assert len(last) == 3 and last[0][0] in CAT_LABELS

    # The ingress's count (HAProxy's, on the head) adds up over the cluster: 10 more sent, 10 more counted.
    before = settled_ingress_count()
    with httpx.Client(timeout=30) as client:
        for _ in range(10):
            answered(client, url)
    assert settled_ingress_count() == before + 10
