"""What every request passes before a route reads it: the login or a key, a body limit per route, a cap on open
streams."""
from __future__ import annotations

import json
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.requests import HTTPConnection

# Gradio's routes (its internals, named in one place): the page's login form and assets, its event streams, and
# its uploads, kept on disk until the sweep deletes them.
from .access import LOGIN_REQUIRED, Access
from .bodies import too_large
from .gradio_internals import API_PREFIX, ASSET_PREFIXES, LOGIN_PATHS, STREAM_PREFIXES, UPLOAD_PREFIX


# Without a login or key, only these answer on a server that takes them: the probes, and what the page needs to
# show its login form.
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", *LOGIN_PATHS}
PUBLIC_PREFIXES = ASSET_PREFIXES


class UploadBudget:
    """The bytes the page's uploads may put on disk: per client address and in total, over the time an upload is
    kept (app.py's --upload-retention, after which the sweep deletes it). Charged as the bytes arrive, never
    refunded early (a refused upload's part is deleted by the same sweep)."""

    def __init__(self, per_client: int, total: int, keep_seconds: float):
        self.per_client, self.total, self.keep_seconds = per_client, total, keep_seconds
        self._charges: deque[tuple[float, str, int]] = deque()  # (when, client, bytes), oldest first
        self._by_client: Counter[str] = Counter()
        self._sum = 0

    def charge(self, client: str, size: int, now: float | None = None) -> str | None:
        """Takes `size` bytes of `client`'s budget; or, if it would pass a bound, takes nothing and says why."""
        now = time.monotonic() if now is None else now
        while self._charges and now - self._charges[0][0] > self.keep_seconds:
            _, old_client, old_size = self._charges.popleft()
            self._sum -= old_size
            self._by_client[old_client] -= old_size
            if self._by_client[old_client] <= 0:
                del self._by_client[old_client]
        if self._by_client[client] + size > self.per_client:
            return (f"this client has uploaded {self._by_client[client] // 2 ** 20} MB in the last "
                    f"{self.keep_seconds / 60:.0f} minutes, the most allowed")
        if self._sum + size > self.total:
            return f"the server holds {self._sum // 2 ** 20} MB of recent uploads, the most it keeps"
        self._charges.append((now, client, size))
        self._by_client[client] += size
        self._sum += size
        return None


@dataclass
class GuardConf:
    """access: who may call (the login, keys). body_limits: (path prefix, bytes), the first match applies;
    default_body_limit: every other route. logged_in: whether a request carries a valid Gradio login cookie.
    as_logged_in: the request's scope with the page's login added, for Gradio's own check (which knows only its
    cookie) of a request the guard let in by its Authorization header (None: Gradio has no login).
    uploads: the disk budget of the page's uploads (None: unbounded)."""

    access: Access = field(default_factory=Access)
    body_limits: list[tuple[str, int]] = field(default_factory=list)
    default_body_limit: int = 1024 * 1024
    streams_per_client: int = 32
    logged_in: Callable[[HTTPConnection], bool] = lambda connection: False
    as_logged_in: Callable[[dict], dict] | None = None
    uploads: UploadBudget | None = None


class Guard:
    """Pure ASGI middleware (no buffering: Gradio's event streams pass through untouched).

    - With a login or keys set, a request outside PUBLIC_PATHS without one (HTTP Basic, a Bearer key, or Gradio's
      login cookie) is answered 401 before a byte of its body is read: Gradio's own check runs only after it has
      parsed the body.
    - A body is refused with 413 as soon as it passes its route's limit, by its Content-Length or while it
      streams in (chunked), and every 413 closes the connection: otherwise the server reads, and throws away, the
      rest of a body that may never end (as nginx does, the connection is closed instead).
    - Each client may hold `streams_per_client` of Gradio's event streams open at once; more get 429.
    """

    def __init__(self, app: Callable, conf: GuardConf):
        self.app, self.conf = app, conf
        self.streams: Counter[str] = Counter()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        connection = HTTPConnection(scope)
        if self.conf.access.closed:
            authorization = connection.headers.get("authorization", "")
            if authorization and self.conf.access.may_call(authorization):
                # Gradio's routes only (its API, and the public /config, where gradio_client reads whether it is
                # logged in); our own routes check the header themselves.
                if self.conf.as_logged_in and (path.startswith(API_PREFIX) or path in LOGIN_PATHS):
                    scope = self.conf.as_logged_in(scope)
            elif not self._public(path) and not self.conf.logged_in(connection):
                return await _refuse(send, 401, LOGIN_REQUIRED, ("www-authenticate", self.conf.access.challenge()))
        limit = next((size for prefix, size in self.conf.body_limits if path.startswith(prefix)),
                     self.conf.default_body_limit)
        length = byte_count(connection.headers.get("content-length"))
        if length is not None and length > limit:
            return await _refuse(send, 413, too_large("the request body", limit))
        if scope["method"] == "GET" and path.startswith(STREAM_PREFIXES):
            client = scope["client"][0] if scope.get("client") else ""
            if self.streams[client] >= self.conf.streams_per_client:
                return await _refuse(send, 429, f"this client has {self.streams[client]} event streams open, the "
                                                "most allowed; close a tab", ("retry-after", "5"))
            self.streams[client] += 1
            try:
                return await self.app(scope, receive, send)
            finally:
                self.streams[client] -= 1
                if not self.streams[client]:
                    del self.streams[client]
        budget = self.conf.uploads if path.startswith(UPLOAD_PREFIX) else None
        client = scope["client"][0] if scope.get("client") else ""
        if budget and length is not None and (why := budget.charge(client, length)):
            return await _refuse_upload(send, why)
        charge = (lambda size: budget.charge(client, size)) if budget and length is None else None
        await self._limited(scope, receive, send, limit, charge)

    async def _limited(self, scope: dict, receive: Callable, send: Callable, limit: int,
                       charge: Callable[[int], str | None] | None = None) -> None:
        """The app, with the body cut off at `limit` (or where `charge`, given each part's size, says why not):
        past it, the app's receive() raises, and whatever the app answers then is replaced by a 413 (or 429)
        that closes the connection."""
        state: dict[str, Any] = {"received": 0, "over": False, "started": False, "refused": None}

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                state["received"] += size
                if state["received"] > limit:
                    state["over"] = True
                elif charge and (why := charge(size)):
                    state["over"], state["refused"] = True, why
                if state["over"]:
                    raise BodyTooLargeForRoute(limit)
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"]:
                return  # the app's own answer to the cut-off body: the 413 below is sent instead
            if message["type"] == "http.response.start":
                state["started"] = True
                message = lax_cookies(message)
                if message["status"] == 413:  # the routes' own limits too: never read the rest of the body
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeForRoute:
            pass
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            if state["refused"]:
                await _refuse_upload(send, state["refused"])
            else:
                await _refuse(send, 413, too_large("the request body", limit))

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def lax_cookies(start: dict) -> dict:
    """The response start with every cookie SameSite=Lax: Gradio sets its login cookie SameSite=None (for pages
    embedded in other sites), which sends the login along with another site's requests (CSRF)."""
    headers = start.get("headers", [])
    if not any(name.lower() == b"set-cookie" and b"samesite=none" in value.lower() for name, value in headers):
        return start
    fixed = [(name, re.sub(rb"(?i)samesite=none", b"SameSite=lax", value) if name.lower() == b"set-cookie"
              else value) for name, value in headers]
    return {**start, "headers": fixed}


def route_path(scope: dict) -> str:
    """The request's path as the routes see it: without the --root-path prefix (uvicorn puts it in front)."""
    path, prefix = scope["path"], scope.get("root_path", "")
    return (path[len(prefix):] or "/") if prefix and path.startswith(prefix) else path


class BodyTooLargeForRoute(Exception):
    """Raised into the app from receive() once the body passes its route's limit."""


async def _refuse(send: Callable, status: int, message: str, *headers: tuple[str, str]) -> None:
    """A JSON error answered by the guard itself; the connection is closed after it (its body is never read)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *((k.encode(), v.encode()) for k, v in headers)]})
    await send({"type": "http.response.body", "body": body})


async def _refuse_upload(send: Callable, why: str) -> None:
    """The 429 of an upload past its disk budget (UploadBudget says why)."""
    await _refuse(send, 429, f"upload refused: {why}; try again later", ("retry-after", "60"))


def byte_count(text: str | None) -> int | None:
    """A header's byte count: ASCII digits only (str.isdigit() admits "²", which int() refuses), else None."""
    text = (text or "").strip()
    return int(text) if text and text.isascii() and text.isdigit() else None
