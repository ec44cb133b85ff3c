"""Slow clients: uvicorn's HTTP protocol plus the read deadlines it lacks (nginx's client_header/body_timeout)."""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_BODY = b'{"error": "the request did not arrive in time; send it again"}'
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def with_read_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete within `seconds`
    of its first byte (or of the connection), or whose body stops arriving for `seconds`. uvicorn itself waits
    for ever: a few thousand half-sent headers would hold every file descriptor. Idle keep-alive connections are
    uvicorn's own timeout_keep_alive; the connection cap is its limit_concurrency."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        read_timeout = seconds
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # nothing of this request reached the app
                self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm()  # the deadline is for the next part of the body, not for the whole of a large upload

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # between requests, uvicorn's keep-alive timeout takes over

    return TimedHttpToolsProtocol
