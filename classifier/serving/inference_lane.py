"""The inference routes' own lane: past the web frameworks' layers, through ours, to the same handlers.

Through FastAPI, a request to POST|PUT /service[/{name}], POST /v2/models/…/infer or POST /v1/models/…:predict
(:classify) passes the frameworks' own layers around ours (the server-error and exception middlewares, FastAPI's
telemetry and body-limit layers, the exit stack, the router's walk past every route, FastAPI's request handler)
before its handler runs. None of them
does anything for these routes: the handlers answer every error themselves, as JSON. On the null-model floor
(bench/floor.py) the event loop spent 0.48–0.56 ms a request that way and 0.33–0.36 this way, and the floor
served 1,368–1,601 req/s at c16 against 1,948–2,156 (three interleaved rounds, docs/performance.md).

So these requests go the short way: our layers (the metrics, the allowed hosts, the guard, CORS: the same list
FastAPI's app is given, api.layers) around Starlette routes of the same handlers, each request matched once
(InferenceFirst). Every other request, and every other method on these paths (GET /service's JSON 405, CORS
preflights), goes to the app, which still has these routes too (for /openapi.json, and for anyone serving
create_app's app without the lane in front).
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterable

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Match, Route

from .service import error

log = logging.getLogger(__name__)


class InferenceFirst:
    """Pure ASGI: an HTTP request one of `routes` takes whole (path and method) goes to `lane` with that route in
    its scope, as Starlette's Router leaves it (scope["route"], the path parameters); anything else to `app`. The
    match is made here only: the lane hands the request to the route without walking the routes again."""

    def __init__(self, app: Callable, lane: Callable, routes: list[Route]):
        self.app, self.lane, self.routes = app, lane, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route
                    scope.update(child_scope)
                    await self.lane(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def routes(handler: Callable[..., Awaitable[Any]], paths: Iterable[str], methods: list[str]) -> list[Route]:
    """A FastAPI route's handler (request, then its path parameters by name) as the lane's routes of these paths."""
    async def endpoint(request: Request) -> Any:
        return await handler(request, **request.path_params)

    return [Route(path, endpoint, methods=methods) for path in paths]


def lane(layers: list[Middleware]) -> Callable:
    """The matched route (InferenceFirst) behind `layers` (outermost first), and outside them all, as FastAPI's own
    outermost layer, a JSON 500 for an exception nothing answered (the metrics, inside, count it as a 500)."""
    app: Callable = _matched_route
    for layer in reversed(layers):
        app = layer.cls(app, *layer.args, **layer.kwargs)
    return AnsweredErrors(app)


async def _matched_route(scope: dict, receive: Callable, send: Callable) -> None:
    await scope["route"].handle(scope, receive, send)


class AnsweredErrors:
    """What Starlette's server-error middleware does on the app's way, in our errors' shape: an exception let out
    is logged with its traceback and answered 500 as JSON (if nothing was sent yet), never as a trace."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = False

        async def noting_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error(500, "internal error; the server log has the details")(scope, receive, send)


def first(app: Any) -> InferenceFirst:
    """`app` (api.create_app's, with the page mounted on it or not) with the lane create_app built for it in front
    (app.state.inference_lane and .inference_routes)."""
    return InferenceFirst(app, app.state.inference_lane, app.state.inference_routes)
