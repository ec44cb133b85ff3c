"""The KServe v2 and TF Serving protocols over HTTP: the login and body of a request, errors as {"error": …}."""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from .bodies import too_large
from .guard import LOGIN_CHALLENGE, basic_auth_ok
from .protocols import ProtocolError, Served
from .service import BodyTooLarge, error, error_for, read_limited


def check(served: Served, request: Request, name: str, version: str | None) -> None:
    """Raises the ProtocolError for a request without the login, or for another model or version."""
    if not basic_auth_ok(request, served.credentials):
        raise ProtocolError(401, "authentication required")
    served.check_model(name, version)


async def body(served: Served, request: Request) -> bytes:
    """The whole body, refused (413) past the limit, decompressed when it says gzip or deflate."""
    try:
        sent = await read_limited(request, served.body_limit)
    except BodyTooLarge:
        raise ProtocolError(413, too_large("the request body", served.body_limit)) from None
    return served.decoded(sent, request.headers.get("content-encoding", "identity"))


def protocol_error(exc: ProtocolError) -> JSONResponse:
    """Both protocols answer errors as {"error": message} with the HTTP status (KServe v2 and TF Serving alike)."""
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = LOGIN_CHALLENGE
    if exc.status == 503:
        headers["Retry-After"] = "1"
    return error(exc.status, str(exc), **headers)


def protocol_route(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The handler, answering a ProtocolError in the protocols' format and anything unexpected with a JSON 500
    (the traceback goes to the log, never to the client)."""
    @functools.wraps(handler)  # FastAPI reads the handler's parameters through __wrapped__
    async def answer(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except ProtocolError as exc:
            return protocol_error(exc)
        except Exception as exc:
            return error_for(exc)
    return answer
