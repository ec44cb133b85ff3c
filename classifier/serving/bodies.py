"""How large a request body may be: one rule for /service, the protocols over REST and gRPC, and the guard."""
from __future__ import annotations

from ..images import Limits

MAX_FILES = 32  # files in one multipart request
REQUEST_LIMIT = 64 * 1024 * 1024  # one whole request body (multipart, JSON), unless a single image may be larger


def too_large(what: str, limit: int) -> str:
    """The one wording of a body refused for its size (the guard, /service, the protocols)."""
    return f"{what} is larger than the limit of {limit} bytes"


def request_limit(limits: Limits) -> int:
    """The bytes one request body may hold (a multipart body of photos, a protocol's JSON): MAX_FILES images or
    REQUEST_LIMIT, whichever is less, but always room for two images (base64 takes a third more)."""
    return max(2 * limits.max_bytes, min(MAX_FILES * limits.max_bytes, REQUEST_LIMIT))
