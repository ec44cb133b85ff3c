"""python -m bench.ray_replicas [--quick]: /service on Ray Serve (one replica, then two) and on app.py, side by side
in one run, on the same cores, driven by the same client (wrk, real JPEGs, concurrency 1 and 16).

Starts a local Ray instance on loopback (this machine's CPUs), deploys classifier.serving.ray_serve, and app.py in
turn. Writes bench/results/ray.json and prints the table rows with the ratio to app.py.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage unless told not to

from bench import wrk
from bench.__main__ import JPEGS
from bench.load import markdown_row
from bench.server import ROOT, ServerProcess, free_port


def start(replicas: int, port: int) -> str:
    """Ray Serve on loopback with `replicas` replicas of ./conf.json's model (one CPU each); its URL."""
    import ray
    from ray import serve

    from classifier.serving.ray_serve import build

    if not ray.is_initialized():
        ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"conf": str(ROOT / "conf.json"), "num_replicas": str(replicas)}), blocking=False)
    return f"http://127.0.0.1:{port}"


def driven(url: str, seconds: float) -> dict:
    wrk.drive(url, JPEGS, 4, 2)  # warm-up, on every replica
    return {f"c{c}": wrk.drive(url, JPEGS, c, seconds) for c in (1, 16)}


def main() -> int:
    import ray
    from ray import serve

    seconds = 5 if "--quick" in sys.argv else 20
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    server = ServerProcess("--no-train")  # first, alone: Ray is not started yet
    try:
        results["app.py"] = driven(server.url, seconds)
    finally:
        server.stop()
    port = free_port()
    try:
        for replicas in (1, 2):
            results[f"ray_{replicas}"] = driven(start(replicas, port), seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    base = results["app.py"]["c16"]["img_s"]
    results["ray_1_c16_over_app_c16"] = round(results["ray_1"]["c16"]["img_s"] / base, 2)
    out = ROOT / "bench" / "results" / "ray.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, label in (("app.py", "app.py"), ("ray_1", "Ray Serve, 1 replica"), ("ray_2", "Ray Serve, 2 replicas")):
        for level in ("c1", "c16"):
            summary = {**results[name][level], "concurrency": int(level[1:])}
            ratio = results[name]["c16"]["img_s"] / base if level == "c16" else None
            print(markdown_row(label, summary) + (f" {ratio:.0%} |" if ratio else " |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
