"""What the KServe v2 and TF Serving protocols share, over REST and gRPC alike: which model and version they serve,
their bodies' bounds, images and tensors, their errors. No transport: rest_protocols.py and the grpc_* modules
carry them."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..conf import ArchJsonConfLoader
from ..images import ENCODED_INPUT, Limits
from .access import LOGIN_REQUIRED, Access
from .batching import Batcher, Overloaded, Scores
from .bodies import request_limit, too_large
from .errors import refusal_for

MAX_IMAGES = 32  # images (or tensors) in one protocol request, as in one multipart /service request


class ProtocolError(Exception):
    """A request the protocol refuses: the status and the message of the protocol's {"error": …} answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Unauthenticated(ProtocolError):
    """The 401 of a call without a login or key that the server takes: its challenges (WWW-Authenticate)."""

    def __init__(self, message: str, challenge: str):
        super().__init__(401, message)
        self.challenge = challenge


def admin_check(access: Access, authorization: str) -> None:
    """The refusal, as a ProtocolError, of an admin action by whoever sent this Authorization value."""
    if refusal := access.admin_refusal(authorization):
        status, message = refusal
        raise Unauthenticated(message, access.challenge()) if status == 401 else ProtocolError(status, message)


def call_check(access: Access, authorization: str) -> None:
    """The refusal, as a ProtocolError, of a call by whoever sent this Authorization value."""
    if not access.may_call(authorization):
        raise Unauthenticated(LOGIN_REQUIRED, access.challenge())


class Busy(ProtocolError):
    """The 503 of a full queue: retry later (gRPC's RESOURCE_EXHAUSTED; a replaced model's 503 is UNAVAILABLE)."""


class Served:
    """A model behind the protocol routes, as their clients name it: its name (its repository name, else its conf's
    model_name) and the version folder that serves (hot reload changes it; a folder without versions is version 1).
    """

    def __init__(self, batcher: Batcher, limits: Limits, health: Any, name: str | None = None):
        self.batcher, self.limits, self.health = batcher, limits, health
        self.body_limit = request_limit(limits)  # a JSON body is held in memory whole
        self._fixed_name = name
        self._named: tuple[Any, str] | None = None  # (model, its name): read from its conf once per model

    @property
    def model(self) -> Any:
        return self.batcher.model

    @property
    def name(self) -> str:
        if self._fixed_name:
            return self._fixed_name
        model = self.model
        if self._named is None or self._named[0] is not model:  # a hot reload may bring another conf
            self._named = (model, ArchJsonConfLoader(model.conf).get_model_name())
        return self._named[1]

    @property
    def max_containers(self) -> int:
        """JSON arrays and objects the largest request can need: MAX_IMAGES tensors as nested lists
        ([N][H][W][3]: one per row and pixel), or MAX_IMAGES {"b64": …} objects; and room for the rest."""
        width, height = self.input_size or (0, 0)
        return MAX_IMAGES * (height * (width + 1) + 1) + 1024

    @property
    def max_values(self) -> int:
        """JSON values (numbers, strings) the largest request can need: MAX_IMAGES tensors' numbers, and room for
        the names and fields around them."""
        width, height = self.input_size or (0, 0)
        return MAX_IMAGES * height * width * 3 + 1024

    def json(self, body: bytes, what: str) -> dict:
        """json_object with this model's bounds."""
        return json_object(body, what, self.max_containers, self.max_values)

    @property
    def version(self) -> str:
        return str(self.model.version or 1)

    @property
    def labels(self) -> list[str]:
        return list(self.model.labels)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(width, height) of the model's input tensor, or None for a model that takes encoded images only: a
        UAI-style class (execute() alone), or a model that decodes images itself."""
        if not self.model.gives_probabilities:
            return None
        decodes_itself = getattr(getattr(self.model, "convention", None), "dtype", None) == ENCODED_INPUT
        return None if decodes_itself else getattr(self.model, "input_size", None)

    def check_version(self, version: str | None) -> None:
        """Raises the ProtocolError (404) for a version that does not serve."""
        if version not in (None, "", self.version):
            raise ProtocolError(404, f"version {version} of {self.name!r} is not served; version {self.version} is "
                                     "(the highest version folder)")

    def decoded(self, body: bytes, encoding: str) -> bytes:
        """The body as sent, decompressed when its Content-Encoding says gzip or deflate; refused when empty."""
        encoding = (encoding or "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            body = self._decompress(body, encoding)
        elif encoding != "identity":
            raise ProtocolError(415, f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
        if not body:
            raise ProtocolError(400, "the request body is empty")
        return body

    def _decompress(self, body: bytes, encoding: str) -> bytes:
        # Bounded: a few kilobytes of gzip can inflate to gigabytes.
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            data = inflater.decompress(body, self.body_limit + 1)
        except zlib.error as exc:
            raise ProtocolError(400, f"the {encoding} body cannot be decompressed: {exc}") from None
        if len(data) > self.body_limit or inflater.unconsumed_tail:
            raise ProtocolError(413, too_large("the decompressed body", self.body_limit))
        return data

    def image(self, encoded: Any, where: str) -> bytes:
        """An image sent as base64 text (JSON has no bytes), checked against the size limit."""
        return base64_image(encoded, self.limits.max_bytes, where)

    def tensors(self, values: Any, where: str) -> np.ndarray:
        """Ready model inputs, [N, H, W, 3] as the model's preprocess makes them (its input convention). The count
        is checked before the (slow) conversion of nested lists."""
        if self.input_size is None:
            raise ProtocolError(400, f"{where}: the serving model takes encoded images only, not tensors")
        check_count(len(values), where)
        width, height = self.input_size
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(400, f"{where}: not a tensor of numbers: {exc}") from None
        if array.ndim != 4 or array.shape[1:] != (height, width, 3):
            raise ProtocolError(400, f"{where}: the shape must be [N, {height}, {width}, 3] (RGB, as the model's "
                                     f"preprocess makes it), not {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ProtocolError(400, f"{where}: the tensor holds NaN or infinite values")
        return array

    async def class_probabilities(self, items: list[bytes] | np.ndarray, where: str) -> tuple[np.ndarray, Any]:
        """Probability rows [N, classes] for encoded images or ready tensors, through the shared batcher (each
        item joins the batches of every other request), and the model that gave them."""
        check_count(len(items), where)
        prepared = isinstance(items, np.ndarray)
        results = await asyncio.gather(*(self.batcher.classify(item, probabilities=True, prepared=prepared)
                                         for item in items), return_exceptions=True)
        for number, result in enumerate(results):
            if isinstance(result, Exception):  # the first bad image decides the status
                refusal = refusal_for(result, subject=f"{where} image {number}")
                if refusal is None:
                    raise result  # a bug: the transport answers 500 / INTERNAL and logs it
                raise (Busy if isinstance(result, Overloaded) else ProtocolError)(refusal.status, refusal.message)
        models = {id(result.model) for result in results}
        if len(models) > 1:
            raise ProtocolError(503, "the model was replaced while this request ran; send it again")
        scores: list[Scores] = results
        return np.stack([s.class_probabilities for s in scores]).astype(np.float32), scores[0].model


class Catalog(Protocol):
    """The models the protocols serve, by name (repository.Repository): what the routes of both transports ask."""

    access: Access  # who may call, and who may change what is served
    body_limit: int  # the largest request any of its models takes (the gRPC port's message limit)

    async def served(self, name: str | None, version: str | None = None, load: bool = True) -> Served:
        """The model of that name (None: the default) and version, loaded first if it waits for a request (unless
        `load` is false); ProtocolError 404 (unknown), 409 (refused at load), 503 (unloaded)."""

    def index(self) -> list[dict]:
        """Each model's name, version, state (READY, UNAVAILABLE, LOADING) and the reason (Triton's index)."""

    async def load(self, name: str) -> Any: ...

    async def unload(self, name: str) -> Any: ...

    async def reconfigure(self, confs: dict[str, Path]) -> None:
        """The models served become confs' (TF Serving's HandleReloadConfigRequest)."""


def base64_image(encoded: Any, max_bytes: int, where: str) -> bytes:
    """An image sent as base64 text (JSON has no bytes; the MCP tool's argument too), refused before it is
    decoded when it would be larger than max_bytes."""
    if not isinstance(encoded, str):
        raise ProtocolError(400, f"{where}: an image must be a base64 string, not {type(encoded).__name__}")
    if len(encoded) * 3 // 4 > max_bytes + 3:
        raise ProtocolError(413, f"{where}: the image is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, f"{where}: not valid base64; send the image's bytes base64-encoded") from None


def check_count(count: int, where: str) -> None:
    """The 400 for a request of no images or of more than MAX_IMAGES: checked before anything is converted."""
    if count == 0:
        raise ProtocolError(400, f"{where}: no images")
    if count > MAX_IMAGES:
        raise ProtocolError(400, f"{where}: {count} images; at most {MAX_IMAGES} per request")


def json_object(text: bytes, what: str, max_containers: int, max_values: int | None = None) -> dict:
    """The body's JSON object, or the 400 that says what is wrong with it. Call it in a worker thread: a large
    body takes a while to parse.

    Before parsing, what it holds is counted (byte counts: ~10 ms for 64 MB) against what the largest request
    this server takes can hold: its arrays and objects (55 MB of `[],` would otherwise become 18 million Python
    lists, seconds of one core with the GIL held and 2 GB of memory, before any check could refuse it), and its
    values, by their separators (64 MB inflated from 65 KB of gzip held 16.7 million numbers: 350 MB each)."""
    containers = text.count(b"[") + text.count(b"{")
    if containers > max_containers:
        raise ProtocolError(413, f"{what} holds {containers} JSON arrays and objects; a request of at most "
                                 f"{MAX_IMAGES} images needs at most {max_containers}")
    values = text.count(b",") + 1
    if max_values is not None and values > max_values:
        raise ProtocolError(413, f"{what} holds about {values} JSON values; a request of at most {MAX_IMAGES} "
                                 f"images needs at most {max_values}")
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: also an integer of over 4,300 digits
        raise ProtocolError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(400, f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be a JSON object")
    return value
