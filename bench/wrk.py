"""The HTTP load generator: Debian's wrk, cycling real JPEG bodies or request files made from them
(request_files.lua), and its own CPU share."""
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
from typing import NamedTuple

LUA = Path(__file__).with_name("request_files.lua")
BOUNDARY = "classifier-bench-boundary"
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


class RequestFiles(NamedTuple):
    """Ready request bodies, one file each, and their content type (raw photos, v2_requests, multipart_requests)."""

    content_type: str
    paths: list[Path]


def as_files(photos: list[Path] | RequestFiles) -> RequestFiles:
    """Request files as they are; photos as raw bodies."""
    return photos if isinstance(photos, RequestFiles) else RequestFiles("application/octet-stream", list(photos))


def drive(url: str, photos: list[Path] | RequestFiles, concurrency: int, seconds: float,
          path: str = "/service") -> dict:
    """POSTs for `seconds` over `concurrency` keep-alive connections from one wrk thread: the photos as raw bodies,
    or request files as they are. Returns images/s, the latency percentiles wrk measured, the non-2xx and
    socket-error counts, and the share of the machine's CPU that wrk itself used (so a reader can tell the server
    was measured, not its client)."""
    files = as_files(photos)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                          "-s", str(LUA), url.rstrip("/") + path, "--", files.content_type, *map(str, files.paths)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"concurrency": concurrency, **parse(run.stdout),
            "client_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}


def v2_requests(photos: list[Path], folder: Path) -> RequestFiles:
    """Each photo as an Open Inference REST request in JSON, written to folder: the JPEG base64
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
    return RequestFiles("application/json", paths)


def multipart_requests(photos: list[Path], field: str, folder: Path) -> RequestFiles:
    """Each photo as a multipart/form-data form with the JPEG as its one file, in `field`, written to folder: how
    BentoML's clients send a file to an API (its image classification examples)."""
    paths = []
    for photo in photos:
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{photo.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode()
        paths.append(Path(folder) / f"{photo.stem}.form")
        paths[-1].write_bytes(head + photo.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return RequestFiles(f"multipart/form-data; boundary={BOUNDARY}", paths)


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
