"""One table: each error a request can meet, its HTTP status and its gRPC code (by name: no transport imported)."""
from __future__ import annotations

from dataclasses import dataclass

from ..explain import LabelError
from ..images import CorruptImage, EmptyImage, ImageError, ImageTooLarge, UnsupportedFormat
from .batching import Overloaded

RETRY_AFTER_SECONDS = 1


class UnknownModel(LookupError):
    """A model name the server does not serve; the message lists the names it does."""


class ModelUnavailable(Exception):
    """A model the server holds but cannot serve now: unloaded, loading, or refused when it was loaded."""


class ModelRefused(Exception):
    """A load or unload that cannot be done: the model's files are refused, or it is the default (unloading)."""


# (error, HTTP status, gRPC code): the first that matches wins. A full queue is RESOURCE_EXHAUSTED, for a client
# to back off; a 503 that is not (the model replaced mid-request, not yet ready) is UNAVAILABLE: retry.
ERRORS: list[tuple[type[Exception], int, str]] = [
    (ImageTooLarge, 413, "RESOURCE_EXHAUSTED"),
    (UnsupportedFormat, 415, "INVALID_ARGUMENT"),
    (EmptyImage, 400, "INVALID_ARGUMENT"),
    (CorruptImage, 400, "INVALID_ARGUMENT"),
    (ImageError, 400, "INVALID_ARGUMENT"),
    (LabelError, 400, "INVALID_ARGUMENT"),
    (Overloaded, 503, "RESOURCE_EXHAUSTED"),
    (UnknownModel, 404, "NOT_FOUND"),
    (ModelUnavailable, 503, "UNAVAILABLE"),
    (ModelRefused, 409, "FAILED_PRECONDITION"),
]
# A protocol's own refusals (protocols.ProtocolError), by their HTTP status.
CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
         409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
         503: "UNAVAILABLE"}


@dataclass(frozen=True)
class Refusal:
    """What to answer for an error: the HTTP status, the gRPC code's name, the message (never a traceback)."""

    status: int
    code: str
    message: str


def refusal_for(exc: Exception, subject: str = "") -> Refusal | None:
    """The refusal for an error of decoding, the batcher or the model's labels; None for an unexpected one
    (a bug: the caller answers 500 / INTERNAL and logs the traceback)."""
    for kind, status, code in ERRORS:
        if isinstance(exc, kind):
            return Refusal(status, code, f"{subject}: {exc}" if subject else str(exc))
    return None


def code_for_status(status: int) -> str:
    return CODES.get(status, "INTERNAL")

