"""python -m bench.ray_replicas [--quick]: /service on Ray Serve and on app.py, side by side in one run, on the same
cores, driven by the same client (wrk, real JPEGs, concurrency 1 and 16).

Ray Serve runs three ways, each on a local Ray instance of its own (loopback, this machine's CPUs): one replica
behind Ray's Python proxy (its default), then one and two replicas behind its HAProxy ingress (what
classifier.serving.ray_serve.CLUSTER_ENVIRONMENT turns on). Writes bench/results/ray.json and prints the table rows
with each c16's ratio to app.py's.
"""
from __future__ import annotations

import json
import os
import sys

from bench import wrk
from bench.load import markdown_row
from bench.server import JPEGS, ROOT, ServerProcess, free_port

RUNS = {  # name: (label, replicas, HAProxy ingress)
    "ray_proxy_1": ("Ray Serve, Python proxy, 1 replica", 1, False),
    "ray_1": ("Ray Serve, HAProxy ingress, 1 replica", 1, True),
    "ray_2": ("Ray Serve, HAProxy ingress, 2 replicas", 2, True),
}


def driven(url: str, seconds: float) -> dict:
    wrk.drive(url, JPEGS, 4, 2)  # warm-up, on every replica
    return {f"c{c}": wrk.drive(url, JPEGS, c, seconds) for c in (1, 16)}


def on_ray(replicas: int, haproxy: bool, seconds: float) -> dict:
    """A local Ray instance started for this run (its processes inherit the environment set here), measured, and
    stopped."""
    import ray
    from ray import serve

    from classifier.serving.ray_serve import CLUSTER_ENVIRONMENT, build

    saved = dict(os.environ)
    os.environ.update(CLUSTER_ENVIRONMENT if haproxy else {"RAY_USAGE_STATS_ENABLED": "0"})
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"  # no balancer outside to wait for
    port = free_port()
    try:
        ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"conf": str(ROOT / "conf.json"), "num_replicas": str(replicas)}), blocking=False)
        return driven(f"http://127.0.0.1:{port}", seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def main() -> int:
    seconds = 5 if "--quick" in sys.argv else 20
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    server = ServerProcess("--no-train")  # first, alone: Ray is not started yet
    try:
        results["app.py"] = driven(server.url, seconds)
    finally:
        server.stop()
    for name, (_, replicas, haproxy) in RUNS.items():
        results[name] = on_ray(replicas, haproxy, seconds)
    base = results["app.py"]["c16"]["img_s"]
    for name in RUNS:
        results[f"{name}_c16_over_app_c16"] = round(results[name]["c16"]["img_s"] / base, 2)
    out = ROOT / "bench" / "results" / "ray.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, label in [("app.py", "app.py"), *((name, label) for name, (label, _, _) in RUNS.items())]:
        for level in ("c1", "c16"):
            summary = {**results[name][level], "concurrency": int(level[1:])}
            ratio = results[name]["c16"]["img_s"] / base if level == "c16" else None
            print(markdown_row(label, summary) + (f" {ratio:.0%} |" if ratio else " |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
