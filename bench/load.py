"""Load generators: raw HTTP/1.1 keep-alive POSTs to /service, and gradio_client calls to /classify."""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


@dataclass
class Stats:
    """What one run measured: throughput, latency percentiles, and the status of every response."""

    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: Counter = field(default_factory=Counter)
    # With keep_bodies: (item index, status, response head, response body) for every response.
    bodies: list[tuple[int, int, bytes, bytes]] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        latencies = np.array(self.latencies_ms)
        return {"concurrency": self.concurrency, "requests": self.requests,
                "img_s": round(self.requests / self.seconds, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                "p90_ms": round(float(np.percentile(latencies, 90)), 1),
                "p99_ms": round(float(np.percentile(latencies, 99)), 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


def markdown_row(name: str, summary: dict) -> str:
    """One row of README's tables: | path | concurrency | images/s | p50 ms | p90 ms | p99 ms |."""
    s = summary
    return f"| {name} | {s['concurrency']} | {s['img_s']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |"


async def _connection(host: str, port: int, path: str, work, bodies: list[bytes], stats: Stats,
                      keep_bodies: bool, deadline: float, extra_headers: bytes) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for index in work:  # a shared iterator: each connection takes the next request when it is free
            if time.perf_counter() > deadline:
                break
            body = bodies[index % len(bodies)]
            started = time.perf_counter()
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n%s"
                         b"Content-Length: %d\r\n\r\n" % (path.encode(), host.encode(), extra_headers, len(body))
                         + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            response = await reader.readexactly(length)
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            stats.statuses[status] += 1
            if keep_bodies:
                stats.bodies.append((index, status, head, response))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def drive_http(url: str, bodies: list[bytes], concurrency: int, requests: int, path: str = "/service",
               keep_bodies: bool = False, max_seconds: float = 3600, headers: dict | None = None) -> Stats:
    """`requests` POSTs over `concurrency` keep-alive connections, cycling through `bodies`; it stops by itself
    after max_seconds even if requests remain (stats.requests then says how many were sent)."""
    parsed = urlparse(url)
    stats = Stats(concurrency, requests, 0.0, [])
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())
    started = time.perf_counter()

    async def run() -> None:
        work = iter(range(requests))
        await asyncio.gather(*(_connection(parsed.hostname, parsed.port, path, work, bodies, stats, keep_bodies,
                                           started + max_seconds, extra) for _ in range(concurrency)))

    asyncio.run(run())
    stats.seconds = time.perf_counter() - started
    stats.requests = len(stats.latencies_ms)
    return stats


def drive_gradio(url: str, photos: list[Path], concurrency: int, requests: int) -> Stats:
    """`requests` calls of /classify through gradio_client, from `concurrency` threads with a client each."""
    from gradio_client import Client, handle_file

    # A 60 s timeout, not httpx's 5 s: on a loaded 2-core machine a first upload may take longer, and a slow
    # call is a figure to report, not a crash. One untimed call per client first: the server's first requests
    # import what uploads and the queue need.
    clients = [Client(url, verbose=False, httpx_kwargs={"timeout": 60}) for _ in range(concurrency)]
    for client in clients:
        client.predict(handle_file(str(photos[0])), api_name="/classify")
    stats = Stats(concurrency, requests, 0.0, [])
    counter = itertools.count()

    def worker(client) -> None:
        while (i := next(counter)) < requests:
            started = time.perf_counter()
            client.predict(handle_file(str(photos[i % len(photos)])), api_name="/classify")
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            stats.statuses[200] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, clients))
    stats.seconds = time.perf_counter() - started
    return stats
