"""A server under wrk at each concurrency: images/s, latency, and the server's own core time per request."""
from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Callable

from bench import wrk
from bench.server import JPEGS, ServerProcess


def settle(url: str, path: str, photos: list[Path] | wrk.RequestFiles = JPEGS) -> None:
    """One POST of the first real JPEG (or request file), waited for. Behind requests already queued, it returns
    when the server is idle; without it a slow server's warm-up backlog (the naive demo's: seconds a request) ate
    the first timed run."""
    files = wrk.as_files(photos)
    request = urllib.request.Request(url.rstrip("/") + path, data=files.paths[0].read_bytes(),
                                     headers={"Content-Type": files.content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def under_load(server: ServerProcess, levels: tuple[int, ...], seconds: float, path: str = "/service",
               photos: list[Path] | wrk.RequestFiles = JPEGS) -> dict:
    """wrk at each concurrency, after a short warm-up; the server's memory when it was ready and after. Each
    level also gives server_core_ms: the CPU time the server's processes used during the run, per request
    answered (what the stack and the model cost the machine, whatever the client did), and for ours how that
    splits between the event loop, decoding, the model and the rest (server_core_ms_by_thread)."""
    settle(server.url, path, photos)  # its first call's work (graph tracing, lazy imports) is not timed
    wrk.drive(server.url, photos, 4, 1, path)
    settle(server.url, path, photos)  # wrk stops sending, not the server computing: let the backlog drain
    runs = {f"c{concurrency}": costed(server, lambda: wrk.drive(server.url, photos, concurrency, seconds, path))
            for concurrency in levels}
    return {**runs, "ready_s": round(server.ready_s, 1), "ready_rss_mb": round(server.ready_rss_mb),
            "ready_pss_mb": round(server.ready_pss_mb), "rss_mb": round(server.rss_mb()[0]),
            "pss_mb": round(server.pss_mb())}


def costed(server: ServerProcess, run: Callable[[], dict]) -> dict:
    """A load run's figures (wrk's or the gRPC client's) with the server's core time per request answered during
    it (server_core_ms), and for ours how that splits between its threads (server_core_ms_by_thread) and the
    images per model call its batcher formed (mean_batch, from its /metrics)."""
    batches = server.batches()
    cpu, by_thread = server.cpu_seconds(), server.cpu_seconds_by_thread()
    figures = run()
    used, requests = server.cpu_seconds() - cpu, max(figures["requests"], 1)
    figures["server_core_ms"] = round(1000 * used / requests, 2)
    if by_thread:
        figures["server_core_ms_by_thread"] = {role: round(1000 * (seconds - by_thread.get(role, 0)) / requests, 2)
                                               for role, seconds in server.cpu_seconds_by_thread().items()}
    after = batches and server.batches()  # read last: its own request is not in the figures above
    if after and after[1] > batches[1]:
        figures["mean_batch"] = round((after[0] - batches[0]) / (after[1] - batches[1]), 2)
    return figures
