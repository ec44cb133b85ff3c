"""The HTTP load generator: Debian's wrk, cycling real JPEG bodies (jpeg_bodies.lua), and its own CPU share."""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

LUA = Path(__file__).with_name("jpeg_bodies.lua")
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def drive(url: str, photos: list[Path], concurrency: int, seconds: float, path: str = "/service") -> dict:
    """POSTs for `seconds` over `concurrency` keep-alive connections from one wrk thread. Returns images/s, the
    latency percentiles wrk measured, the non-2xx and socket-error counts, and the share of the machine's CPU
    that wrk itself used (so a reader can tell the server was measured, not its client)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
                          "-s", str(LUA), url.rstrip("/") + path, "--", *map(str, photos)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"concurrency": concurrency, **parse(run.stdout),
            "client_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}


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
