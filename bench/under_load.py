"""A server under wrk at each concurrency: images/s, latency, and the server's own core time per request."""
from __future__ import annotations

import urllib.request
from pathlib import Path

from bench import wrk
from bench.server import JPEGS, ServerProcess


def settle(url: str, path: str, photo: Path = JPEGS[0]) -> None:
    """One POST of a real JPEG (or of a request file, .json), waited for. Behind requests already queued, it
    returns when the server is idle; without it a slow server's warm-up backlog (the naive demo's: seconds a
    request) ate the first timed run."""
    kind = "application/json" if photo.suffix == ".json" else "application/octet-stream"
    request = urllib.request.Request(url.rstrip("/") + path, data=photo.read_bytes(), headers={"Content-Type": kind})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def under_load(server: ServerProcess, levels: tuple[int, ...], seconds: float, path: str = "/service",
               photos: list[Path] = JPEGS, script: Path = wrk.LUA) -> dict:
    """wrk at each concurrency, after a short warm-up; the server's memory when it was ready and after. Each
    level also gives server_core_ms: the CPU time the server's processes used during the run, per request
    answered (what the stack and the model cost the machine, whatever the client did)."""
    settle(server.url, path, photos[0])  # its first call's work (graph tracing, lazy imports) is not timed
    wrk.drive(server.url, photos, 4, 1, path, script)
    settle(server.url, path, photos[0])  # wrk stops sending, not the server computing: let the backlog drain
    runs = {}
    for concurrency in levels:
        cpu = server.cpu_seconds()
        run = wrk.drive(server.url, photos, concurrency, seconds, path, script)
        used = server.cpu_seconds() - cpu
        runs[f"c{concurrency}"] = {**run, "server_core_ms": round(1000 * used / max(run["requests"], 1), 2)}
    return {**runs, "ready_s": round(server.ready_s, 1), "ready_rss_mb": round(server.ready_rss_mb),
            "ready_pss_mb": round(server.ready_pss_mb), "rss_mb": round(server.rss_mb()[0]),
            "pss_mb": round(server.pss_mb())}
