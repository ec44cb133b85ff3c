"""The KServe v2 and TF Serving protocols over HTTP: the login and body of a request, errors as {"error": …}."""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from fastapi import Request

from .bodies import too_large
from .protocols import Catalog, ProtocolError, Served, admin_check, call_check, json_object
from .errors import refusal_for
from .service import BodyTooLarge, error_for, protocol_error, read_limited

OPTIONS_LIMIT = 64 * 1024  # a repository request's JSON options


async def check(models: Catalog, request: Request, name: str, version: str | None, load: bool = True) -> Served:
    """The model the request names (loaded first if it waits for a request, unless `load` is false); the
    ProtocolError for a request without the login, or for a model or version that does not serve."""
    check_login(models, request)
    return await models.served(name, version, load)


def check_login(models: Catalog, request: Request) -> None:
    """The 401 of a request without a login or key (the guard refuses it first; Ray's replicas have none)."""
    call_check(models.access, request.headers.get("authorization", ""))


def check_admin(models: Catalog, request: Request) -> None:
    """The 401 without a login or key; the 403 of an admin action by a program's key, or on a server with no way
    to log in as an admin (unless --open-admin)."""
    admin_check(models.access, request.headers.get("authorization", ""))


async def optional_json(request: Request, what: str) -> dict:
    """A small JSON object body that may be empty (the repository extension's requests): {} when it is."""
    try:
        sent = await read_limited(request, OPTIONS_LIMIT)
    except BodyTooLarge:
        raise ProtocolError(413, too_large(what, OPTIONS_LIMIT)) from None
    return json_object(sent, what, max_containers=64) if sent.strip() else {}


async def refused_as_protocol_error(action: Awaitable[Any]) -> Any:
    """A repository action's result; its refusal (an unknown model, one that cannot load) as a ProtocolError."""
    try:
        return await action
    except Exception as exc:
        if refusal := refusal_for(exc):
            raise ProtocolError(refusal.status, refusal.message) from None
        raise


async def body(served: Served, request: Request) -> bytes:
    """The whole body, refused (413) past the limit, decompressed when it says gzip or deflate."""
    try:
        sent = await read_limited(request, served.body_limit)
    except BodyTooLarge:
        raise ProtocolError(413, too_large("the request body", served.body_limit)) from None
    return served.decoded(sent, request.headers.get("content-encoding", "identity"))


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
