"""The HTTP load generator: Debian's wrk, cycling real JPEG bodies (jpeg_bodies.lua), and its own CPU share."""
from __future__ import annotations

import base64
import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

LUA = Path(__file__).with_name("jpeg_bodies.lua")  # raw JPEG bodies: POST /service, LitServe's, BentoML's
V2_LUA = Path(__file__).with_name("v2_bodies.lua")  # Open Inference (KServe v2) REST: v2_requests' JSON files
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def drive(url: str, photos: list[Path], concurrency: int, seconds: float, path: str = "/service",
          script: Path = LUA) -> dict:
    """POSTs for `seconds` over `concurrency` keep-alive connections from one wrk thread. Returns images/s, the
    latency percentiles wrk measured, the non-2xx and socket-error counts, and the share of the machine's CPU
    that wrk itself used (so a reader can tell the server was measured, not its client)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                          "-s", str(script), url.rstrip("/") + path, "--", *map(str, photos)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"concurrency": concurrency, **parse(run.stdout),
            "client_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}


def v2_requests(photos: list[Path], folder: Path) -> list[Path]:
    """Each photo as an Open Inference REST request in JSON, written to folder for v2_bodies.lua: the JPEG base64
    in one BYTES element of the input "image", the top 5 asked for as Triton's classification extension gives
    them. JSON, not the binary tensor extension: KServe's own server decodes binary BYTES as UTF-8 text, so
    JSON is how its documentation sends images."""
    paths = []
    for photo in photos:
        request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                               "data": [base64.b64encode(photo.read_bytes()).decode()]}],
                   "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}]}
        paths.append(Path(folder) / f"{photo.stem}.json")
        paths[-1].write_text(json.dumps(request))
    return paths


def parse(output: str) -> dict:
    """wrk's report → requests, img_s, p50/p90/p99 in ms, non_2xx and socket errors."""
    percentiles = {int(p): float(v) * UNITS_MS[unit]
                   for p, v, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)}
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"requests": requests, "img_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1),
            "p50_ms": round(percentiles[50], 1), "p90_ms": round(percentiles[90], 1),
            "p99_ms": round(percentiles[99], 1), "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}
