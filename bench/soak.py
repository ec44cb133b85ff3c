"""Load and soak: python -m bench.soak [--requests 10000] [--concurrency 32]. Bounded in count and time.

80 % real photos and 20 % hostile files (bench.hostile) against a server on loopback. Checks: every 200 equals
the single-request result for that file, every hostile file gets its status, no 5xx, the server process is the
same one at the end and answers /healthz, and RSS grows < 10 %. Writes bench/results/soak.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from bench.hostile import make as make_hostile
from bench.load import drive_http
from bench.server import ROOT, ServerProcess

PHOTOS = sorted(p for p in (ROOT / "tests" / "photos").iterdir() if p.suffix in (".png", ".jpg", ".jpeg")) \
    + sorted((ROOT / "examples").glob("*.jp*g"))


def same_result(a: list, b: list, tolerance: float = 1e-5) -> bool:
    return [label for label, _ in a] == [label for label, _ in b] and all(
        abs(p - q) <= tolerance for (_, p), (_, q) in zip(a, b))


def run(requests: int, concurrency: int, max_seconds: float, hostile_share: float = 0.2,
        server_args: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        expected = make_hostile(Path(folder))
        files = [(p.name, p.read_bytes(), 200) for p in PHOTOS] + [
            (name, (Path(folder) / name).read_bytes(), status) for name, status in expected.items()]
    photo_count = len(PHOTOS)
    rng = np.random.default_rng(0)
    # The mix: each request picks a real photo with probability 1 - hostile_share, else a hostile file.
    picks = [int(rng.integers(0, photo_count)) if rng.random() >= hostile_share
             else photo_count + int(rng.integers(0, len(files) - photo_count)) for _ in range(requests)]
    bodies = [files[i][1] for i in picks]

    server = ServerProcess(*server_args)
    try:
        pid = server.pid
        # The reference: each file alone, one request at a time.
        reference = {}
        for name, body, _ in files:
            stats = drive_http(server.url, [body], 1, 1, keep_bodies=True)
            _, status, _, response = stats.bodies[0]
            reference[name] = (status, json.loads(response))
        drive_http(server.url, [f[1] for f in files[:photo_count]], concurrency, 200)  # warm every path
        rss_before = server.rss_mb()[0]
        stats = drive_http(server.url, bodies, concurrency, requests, keep_bodies=True, max_seconds=max_seconds)
        rss_after, rss_peak = server.rss_mb()
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
            healthy = response.status == 200
        alive = server.process.poll() is None and server.pid == pid
    finally:
        server.stop()

    wrong, by_file = [], Counter()
    for index, status, _, response in stats.bodies:
        name, _, expected_status = files[picks[index]]
        by_file[(name, status)] += 1
        reference_status, reference_body = reference[name]
        if status != expected_status or reference_status != expected_status:
            wrong.append(f"{name}: status {status}, expected {expected_status}")
        elif status == 200 and not same_result(json.loads(response), reference_body):
            wrong.append(f"{name}: a 200 that differs from the single-request result")
    result = {
        "requests": stats.requests, "concurrency": concurrency, "seconds": round(stats.seconds, 1),
        "img_s": round(stats.requests / stats.seconds, 1),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "hostile_requests": sum(1 for i in picks[:stats.requests] if i >= photo_count),
        "wrong": len(wrong), "wrong_examples": wrong[:10],
        "server_errors": sum(v for k, v in stats.statuses.items() if k >= 500),
        "same_process_alive": alive, "healthz_after": healthy,
        "rss_before_mb": round(rss_before), "rss_after_mb": round(rss_after), "rss_peak_mb": round(rss_peak),
        "rss_growth": round(rss_after / rss_before - 1, 3),
        "statuses_by_file": {f"{name} → {status}": n for (name, status), n in sorted(by_file.items())},
    }
    result["passed"] = (not wrong and result["server_errors"] == 0 and alive and healthy
                        and result["rss_growth"] < 0.10)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop sending after this long")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    result = run(args.requests, args.concurrency, args.max_seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "statuses_by_file"}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
