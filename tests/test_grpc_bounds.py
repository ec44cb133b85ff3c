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
from classifier.serving.access import Access
from classifier.serving.grpc_server import GrpcServer
from classifier.serving.protocols import Served

MAX_CALLS = 2
STREAM_SECONDS = 6  # long enough for the streams to reach the server first on a slow machine


class Ready:
    ready = True


class OneModel:
    """The protocols' catalog (protocols.Catalog) of one Served, with no model behind it."""

    def __init__(self, served: Served, access: Access):
        self.one, self.access, self.body_limit = served, access, served.body_limit

    async def served(self, name, version=None, load=True) -> Served:
        return self.one


def started_server(credentials=None, max_calls=100, max_connections=256):
    """A GrpcServer in an event loop of its own: (its address, a function that stops it)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(30)

    async def start() -> GrpcServer:
        server = GrpcServer(OneModel(Served(None, Limits(), Ready()), Access(credentials)), "127.0.0.1", 0,
                            max_calls=max_calls, max_connections=max_connections)
        await server.start()
        await server.ready()
        return server

    server = run(start())

    def stop() -> None:
        run(server.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return f"127.0.0.1:{server.port}", stop


@pytest.fixture
def target(monkeypatch):
    """A GrpcServer allowing MAX_CALLS calls at once and streams of STREAM_SECONDS, in an event loop of its own."""
    monkeypatch.setattr(grpc_open_inference, "STREAM_SECONDS", STREAM_SECONDS)
    address, stop = started_server(max_calls=MAX_CALLS)
    try:
        yield address
    finally:
        stop()


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


def test_health_watch_needs_the_login_and_is_capped(monkeypatch):
    """Issue 38 item 5: Watch streams never end; open to anyone, 1,000 of them held every call of the cap."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from classifier.serving import grpc_server

    monkeypatch.setattr(grpc_server, "MAX_WATCHES", 2)
    target, stop = started_server(credentials=("u", "p"))
    login = [("authorization", "Basic dTpw")]
    try:
        channel = grpc.insecure_channel(target)
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        watches = [stub.Watch(health_pb2.HealthCheckRequest(), metadata=login, timeout=30) for _ in range(2)]
        assert all(next(iter(w)).status == health_pb2.HealthCheckResponse.SERVING for w in watches)
        with pytest.raises(grpc.RpcError) as capped:
            next(iter(stub.Watch(health_pb2.HealthCheckRequest(), metadata=login, timeout=10)))
        assert capped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()
        channel.close()
    finally:
        stop()


def test_connections_past_the_cap_are_closed_and_the_others_answer():
    """Issue 38 item 6: each connection is a file descriptor; 1,100 idle ones ran the process out of them."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, stop = started_server(max_connections=3)
    # Each channel its own connection (grpcio would otherwise share one between channels of the same target).
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    try:
        for channel in channels[:3]:
            grpc.channel_ready_future(channel).result(timeout=10)
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channels[3]).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        channels[3].close()  # (it would keep trying, and take the slot below)
        channels[0].close()  # a slot comes free: a new connection is taken
        time.sleep(1)
        fresh = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(fresh)
        assert health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    finally:
        for channel in channels:
            channel.close()
        stop()
