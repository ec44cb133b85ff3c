"""python -m bench.ray_replicas: /service on Ray Serve with one and with two replicas, side by side in one run.

Starts a local Ray instance on loopback (2 CPUs), deploys classifier.serving.ray_serve with 1 then 2 replicas, and
drives each like `python -m bench` drives app.py (real JPEGs, concurrency 16). Writes bench/results/ray.json.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage unless told not to

from bench.load import drive_http, markdown_row
from bench.server import ROOT, free_port


def start(replicas: int, port: int) -> str:
    import ray
    from ray import serve

    from classifier.serving.ray_serve import build

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"conf": str(ROOT / "conf.json"), "num_replicas": str(replicas)}), blocking=False)
    return f"http://127.0.0.1:{port}"


def main() -> int:
    import ray
    from ray import serve

    quick = "--quick" in sys.argv
    bodies = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*.jp*g"))]
    port, results = free_port(), {}
    try:
        for replicas in (1, 2):
            url = start(replicas, port)
            drive_http(url, bodies, 4, 40)  # warm-up, on every replica
            results[f"replicas_{replicas}"] = drive_http(url, bodies, 16, 100 if quick else 1000).summary()
    finally:
        serve.shutdown()
        ray.shutdown()
    out = ROOT / "bench" / "results" / "ray.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, summary in results.items():
        print(markdown_row(f"Ray Serve, {name.split('_')[1]} replica(s)", summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
