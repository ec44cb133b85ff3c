"""The gRPC port: KServe v2's and TF Serving's services and grpc.health.v1, with the HTTP routes' login, limits and
batcher, on grpcio's asyncio server in the app's own event loop."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import grpc_open_inference, grpc_tf_serving, metrics
from .access import Access
from .grpc_calls import authorization
from .protocols import Catalog

log = logging.getLogger(__name__)

# The calls that answer without the login, as their REST forms do (/v2/health/*, /healthz): Kubernetes' gRPC
# probes, and KServe v2's server liveness and readiness. Not Health/Watch: a stream that never ends, which held
# the whole call cap when anyone could open it (1,000 of them locked every logged-in client out).
OPEN_METHODS = {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List",
                "/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
IDLE_CONNECTION_SECONDS = 300  # a connection with no call for this long is closed (clients reconnect by themselves)
MAX_WATCHES = 16  # Health/Watch streams at once: a few load balancers' and probes'; more get RESOURCE_EXHAUSTED
WATCH_SECONDS = 300  # the longest a Watch stream stays open (its client opens another), as ModelStreamInfer's


class Login(grpc.aio.ServerInterceptor):
    """The login or a key on every call but the probes, as `authorization` metadata in the HTTP header's form
    (`Basic base64(user:password)` or `Bearer <key>`: tritonclient's headers={…}, or metadata=[("authorization",
    …)] on a stub's call). Admin calls check for more themselves (grpc_calls.admin_action)."""

    def __init__(self, access: Access):
        self.access = access

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        if self.access.may_call(authorization(details.invocation_metadata)):
            return handler
        metrics.GRPC_REQUESTS.labels(details.method.lstrip("/"), "UNAUTHENTICATED").inc()
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the refused one (unary or streaming), answering UNAUTHENTICATED."""
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication required: send the --auth login as "
                                                             "'authorization: Basic …' metadata, or a key as "
                                                             "'authorization: Bearer …'")
    options = {"request_deserializer": handler.request_deserializer,
               "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **options)
    return grpc.unary_unary_rpc_method_handler(refuse, **options)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_in_use(host: str, port: int) -> bool:
    """Whether another process listens on the port: checked before start-up, for a clear message (grpcio's own
    bind failure is a bare RuntimeError, and its default SO_REUSEPORT, turned off below, would share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class BoundedHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose Watch streams are bounded: MAX_WATCHES at once, each WATCH_SECONDS at most."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = 0

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802 (gRPC's name)
        if self.watching >= MAX_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.watching} health watches are open, the most allowed; use Check")
        self.watching += 1
        try:
            await asyncio.wait_for(super().Watch(request, context), WATCH_SECONDS)
        except asyncio.TimeoutError:
            pass  # ended cleanly: the client watches again
        finally:
            self.watching -= 1


class GrpcServer:
    """Both protocols' services, health and the login on one port. max_calls: calls at once (past it, grpcio
    answers RESOURCE_EXHAUSTED); max_connections: connections at once (past it, grpcio closes new ones: each is a
    file descriptor, and 1,100 idle ones ran the process out of them, HTTP included); a request message is at
    most the HTTP routes' body limit."""

    def __init__(self, models: Catalog, host: str, port: int, max_calls: int, max_connections: int = 256):
        self.models, self.host, self.port = models, host, port
        self.health = BoundedHealth()
        self._services = [grpc_open_inference.SERVICE, *grpc_tf_serving.SERVICES]
        self._handlers = [grpc_open_inference.handlers(models), *grpc_tf_serving.handlers(models)]
        self._max_calls, self._max_connections = max_calls, max_connections
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listens; returns the port (the one asked for, or the one chosen for port 0)."""
        limit = self.models.body_limit
        self.server = grpc.aio.server(
            interceptors=[Login(self.models.access)], maximum_concurrent_rpcs=self._max_calls,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0), ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
                     ("grpc.max_allowed_incoming_connections", self._max_connections)])
        self.server.add_generic_rpc_handlers(self._handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until the warm-up has gone through
        self.port = self.server.add_insecure_port(address(self.host, self.port))
        await self.server.start()
        return self.port

    async def ready(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_seconds: float) -> None:
        """New calls are refused and health says NOT_SERVING; calls in flight get grace_seconds to finish."""
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace_seconds)

    async def _set_health(self, status: int) -> None:
        for service in ["", *self._services]:  # "" is the whole server, as grpc_health_probe asks by default
            await self.health.set(service, status)
