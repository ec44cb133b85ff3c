"""Connections: uvicorn's HTTP protocol plus what it lacks of nginx's: read deadlines, and a lingering close."""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A response that closes the connection before the request's body has all arrived (a 413, a 401 unread): the
# rest of the body is read and thrown away for this long, or this many bytes, before the socket is closed.
# Closing at once, with data unread, makes the kernel send a reset, and the client may lose the answer.
LINGER_SECONDS = 5
LINGER_BYTES = 8 * 1024 * 1024
_TIMEOUT_BODY = b'{"error": "the request did not arrive in time; send it again"}'
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a lingering close (with_read_timeout sets the deadline)."""

    read_timeout: float = 30
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
        self._reading_body = False  # a client too slow to send its body is not waited for any longer
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # nothing of this request reached the app
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering: asyncio.TimerHandle | None = None
        self._reading_body, self._thrown_away = False, 0  # between a request's headers and its body's end
        super().connection_made(_LingeringTransport(transport, self))
        self._arm()

    def linger(self, transport: asyncio.Transport) -> bool:
        """Called for transport.close(): True if the close is put off (the request body is still arriving).
        The answer is sent and the write side shut (the client reads it, then EOF); what still arrives is
        thrown away until LINGER_SECONDS or LINGER_BYTES, then the socket closes."""
        if not self._reading_body or self._lingering or transport.is_closing():
            return False
        self._disarm()
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._lingering = self.loop.call_later(LINGER_SECONDS, transport.close)
        return True

    def data_received(self, data: bytes) -> None:
        if self._lingering is None:
            return super().data_received(data)
        self._thrown_away += len(data)
        if self._thrown_away > LINGER_BYTES:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._reading_body = True

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm()  # the deadline is for the next part of the body, not for the whole of a large upload

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_body = False
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # between requests, uvicorn's keep-alive timeout takes over


def with_read_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete within `seconds`
    of its first byte (or of the connection), or whose body stops arriving for `seconds`. uvicorn itself waits
    for ever: a few thousand half-sent headers would hold every file descriptor. Idle keep-alive connections are
    uvicorn's own timeout_keep_alive; the connection cap is its limit_concurrency."""
    return type("TimedHttpToolsProtocol", (TimedHttpToolsProtocol,), {"read_timeout": seconds})


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: close() lingers while a request body is still arriving."""

    def __init__(self, transport: asyncio.Transport, protocol: Any):
        self._transport, self._protocol = transport, protocol

    def close(self) -> None:
        if not self._protocol.linger(self._transport):
            self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol._lingering is not None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
