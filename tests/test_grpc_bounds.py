"""The gRPC port's bounds on grpcio's real server, in this process: its cap on calls at once, and the longest a
stream may stay open. No model is loaded: the calls used (ServerLive, idle ModelStreamInfer streams) reach none."""
from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from classifier.images import Limits
from classifier.serving import grpc_open_inference
from classifier.serving.grpc_server import GrpcServer
from classifier.serving.protocols import Served

MAX_CALLS = 2
STREAM_SECONDS = 6  # long enough for the streams to reach the server first on a slow machine


class Ready:
    ready = True


@pytest.fixture
def target(monkeypatch):
    """A GrpcServer allowing MAX_CALLS calls at once and streams of STREAM_SECONDS, in an event loop of its own."""
    monkeypatch.setattr(grpc_open_inference, "STREAM_SECONDS", STREAM_SECONDS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(30)

    async def started() -> GrpcServer:
        server = GrpcServer(Served(None, Limits(), None, Ready()), "127.0.0.1", 0, max_calls=MAX_CALLS)
        await server.start()
        await server.ready()
        return server

    server = run(started())
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        run(server.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_calls_past_the_cap_are_refused_and_a_stream_ends_at_its_longest(target):
    ended: queue.Queue = queue.Queue()
    streams = [triton.InferenceServerClient(target) for _ in range(MAX_CALLS)]
    opened = time.monotonic()
    for stream in streams:  # idle streams: each holds one of the calls the cap allows, sending nothing
        stream.start_stream(callback=lambda result, error: ended.put(error))
    probe = triton.InferenceServerClient(target)
    refusal = None
    while refusal is None and time.monotonic() - opened < STREAM_SECONDS - 1:
        try:
            probe.is_server_live()
            time.sleep(0.05)  # the streams' calls have not reached the server yet
        except InferenceServerException as exc:
            refusal = exc
    assert refusal is not None and refusal.status() == "StatusCode.RESOURCE_EXHAUSTED", refusal

    errors = [ended.get(timeout=STREAM_SECONDS + 30) for _ in streams]
    for stream in streams:
        stream.stop_stream()
    assert time.monotonic() - opened >= STREAM_SECONDS
    for error in errors:
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
        assert f"open for {STREAM_SECONDS} s" in error.message()
    assert probe.is_server_live()  # the ended streams gave their calls back
