"""What every gRPC service here shares: a method table of handlers, and a protocol error answered with its code."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Awaitable, Callable

import grpc

from . import metrics
from .errors import code_for_status, refusal_for
from .protocols import Busy, Catalog, ProtocolError, admin_check

log = logging.getLogger(__name__)


def code_of(error: ProtocolError) -> grpc.StatusCode:
    """The gRPC code of a protocol error (errors.CODES, by its HTTP status): a full queue (protocols.Busy) is
    RESOURCE_EXHAUSTED, another 503 (the model replaced mid-request, not yet ready) UNAVAILABLE: retry."""
    if isinstance(error, Busy):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode[code_for_status(error.status)]


async def admin_action(models: Catalog, context: grpc.aio.ServicerContext, action: Callable[..., Awaitable[Any]],
                       *args: Any) -> None:
    """A change of what every client is served (load, unload, a new model list): by the login or an admin key in
    the call's metadata (or on an --open-admin server), else PERMISSION_DENIED; the repository's refusals as their
    codes."""
    admin_check(models.access, authorization(context.invocation_metadata()))
    try:
        await action(*args)
    except Exception as exc:
        if refusal := refusal_for(exc):
            raise ProtocolError(refusal.status, refusal.message) from None
        raise


def authorization(metadata: Any) -> str:
    """The call's `authorization` metadata (as HTTP's Authorization header), or ""."""
    return next((str(value) for key, value in metadata or () if key == "authorization"), "")


def unary(method: str, handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable:
    """The handler, answering a ProtocolError with its gRPC code and message, and anything unexpected with
    INTERNAL (the traceback goes to the log, never to the client); each call is counted in /metrics."""
    @functools.wraps(handler)
    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await handler(request, context)
        except ProtocolError as exc:
            code = code_of(exc)
            await context.abort(code, str(exc))
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed: nobody to answer
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            if context.code() is not None:  # context.abort() above: already answered
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC %s failed", method)
            await context.abort(code, "internal error; the server log has the details")
        finally:
            metrics.GRPC_REQUESTS.labels(method, code.name).inc()
            metrics.GRPC_LATENCY.labels(method).observe(time.perf_counter() - started)
    return answer


def method_table(service: str, methods: dict[str, tuple[Callable, Any, Any]],
                 streams: dict[str, tuple[Callable, Any, Any]] | None = None) -> grpc.GenericRpcHandler:
    """A service's handlers by method name: unary (handler, request class, response class), and bidirectional
    streams likewise. The service name is the protocol's own (inference.GRPCInferenceService, …), which our
    messages' package is not (classifier/serving/protos)."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(unary(f"{service}/{name}", handler),
                                                          request_deserializer=request.FromString,
                                                          response_serializer=response.SerializeToString)
                for name, (handler, request, response) in methods.items()}
    for name, (handler, request, response) in (streams or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(handler, request_deserializer=request.FromString,
                                                               response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(service, handlers)

