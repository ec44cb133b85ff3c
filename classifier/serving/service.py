"""The plain HTTP API: POST|PUT /service, /healthz, /readyz, with JSON errors and the status that fits each."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from .. import describe
from ..images import Limits
from .batching import Batcher
from .bodies import MAX_FILES, request_limit, too_large
from .access import Access
from .errors import RETRY_AFTER_SECONDS, refusal_for
from .guard import byte_count
from .protocols import ProtocolError, Unauthenticated, admin_check, call_check

log = logging.getLogger(__name__)



def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def error_for(exc: Exception, subject: str = "") -> JSONResponse:
    """The JSON error response for an exception from decoding or the batcher (errors.ERRORS); never a stack
    trace."""
    if refusal := refusal_for(exc, subject):
        extra = {"Retry-After": str(RETRY_AFTER_SECONDS)} if refusal.status == 503 else {}
        return error(refusal.status, refusal.message, **extra)
    log.error("unexpected error while classifying", exc_info=exc)
    return error(500, "internal error while classifying the image; the server log has the details")


def json_response(result: Any) -> JSONResponse:
    """The result as JSON; one that cannot be (an object, a NaN) is a 500 that says so, with the traceback logged."""
    try:
        return JSONResponse(result)
    except (TypeError, ValueError) as exc:
        log.exception("the model's result cannot be sent as JSON")
        return error(500, f"the model's result cannot be sent as JSON: {exc}")


class Health:
    """Liveness and readiness: ready once the model is loaded and one warm-up request has gone through."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "warming up"




def create_router(models: Any, reloading: bool = True) -> APIRouter:
    """/service (the default model) and /service/{name}, /admin/reload and the probes. models: the repository
    (repository.Repository), which holds who may call (models.access). reloading: offer /admin/reload (Ray Serve's
    replicas do not: it would reload only one)."""
    router = APIRouter()
    router.include_router(service_router(models))
    if reloading:
        router.include_router(admin_router(models))
    router.include_router(probes_router(models))
    return router


def unauthorised(request: Request, access: Access, admin: bool = False) -> JSONResponse | None:
    """The 401 for a request without a login or key (the guard refuses it first in app.py; Ray's replicas have
    none), or, for an admin action, also the 403 of a sender who may not make it; None if they may."""
    try:
        (admin_check if admin else call_check)(access, request.headers.get("authorization", ""))
    except ProtocolError as exc:
        return protocol_error(exc)
    return None


def protocol_error(exc: ProtocolError) -> JSONResponse:
    """A ProtocolError as every route answers it: {"error": message} with its HTTP status (KServe v2 and TF
    Serving alike), the challenges of a 401, Retry-After of a 503."""
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = exc.challenge
    if exc.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return error(exc.status, str(exc), **headers)


SERVICE_PATH, SERVICE_BY_NAME_PATH = "/service", "/service/{name}"  # the default model; a model by name


def classify_route(models: Any) -> Callable[[Request, str | None], Awaitable[Response]]:
    """POST|PUT /service[/{name}]'s handler: a raw image body → [[label, p], …]; multipart/form-data with files →
    a list of those, in order; name: the model's (None: the default). The same for FastAPI's routes and the
    inference lane's (inference_lane.py)."""

    async def classify_request(request: Request, name: str | None = None) -> Response:
        if refused := unauthorised(request, models.access):
            return refused
        try:
            core = await models.get(name)
            classify = classifier_for(request, core.batcher)
        except ValueError as exc:
            return error(400, str(exc))
        except Exception as exc:  # an unknown model (404), one not loaded (503)
            return error_for(exc)
        if media_type(request) == "multipart/form-data":
            return await classify_multipart(request, classify, core.limits)
        body = await read_image_body(request, core.limits.max_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            return json_response(await classify(body))
        except Exception as exc:
            return error_for(exc)

    return classify_request


def service_router(models: Any) -> APIRouter:
    """POST|PUT /service: UAI's contract, on the default model; /service/{name}: the same, on a model by name."""
    router = APIRouter()
    classify_request = classify_route(models)

    # One route per method: FastAPI names an operation by its route's first method, so a route of both would give
    # POST and PUT one operationId in /openapi.json (clients generated from it clash).
    @router.post(SERVICE_PATH)
    async def service(request: Request) -> Any:
        """A raw image body → [[label, p], …]; multipart/form-data with files → a list of those, in order."""
        return await classify_request(request, None)

    @router.put(SERVICE_PATH)
    async def service_put(request: Request) -> Any:
        """As POST /service."""
        return await classify_request(request, None)

    @router.post(SERVICE_BY_NAME_PATH)
    async def service_by_name(request: Request, name: str) -> Any:
        """As POST /service, on the model of that name (404 with the names served for another)."""
        return await classify_request(request, name)

    @router.put(SERVICE_BY_NAME_PATH)
    async def service_by_name_put(request: Request, name: str) -> Any:
        """As POST /service/{name}."""
        return await classify_request(request, name)

    @router.api_route(SERVICE_PATH, methods=["GET", "HEAD", "DELETE", "PATCH", "OPTIONS"], include_in_schema=False)
    @router.api_route(SERVICE_BY_NAME_PATH, methods=["GET", "HEAD", "DELETE", "PATCH", "OPTIONS"],
                      include_in_schema=False)
    async def wrong_method(request: Request) -> JSONResponse:
        return error(405, f"{request.method} is not allowed: send the image with POST or PUT",
                     Allow="POST, PUT")

    return router


async def classify_multipart(request: Request, classify: Callable[[bytes], Awaitable[Any]], limits: Limits) -> Any:
    """multipart/form-data with up to MAX_FILES image files → their results, in order; the first bad file decides
    the status, its name in the message."""
    limit = request_limit(limits)
    if too_large := _over_length(request, limit):  # refused before a byte is read, when the header says so
        return too_large
    try:
        form = await limited(request, limit).form(max_files=MAX_FILES, max_part_size=limits.max_bytes)
    except BodyTooLarge:
        return error(413, too_large("the request body", limit))
    except Exception as exc:  # malformed multipart, too many files, an oversized field
        return error(400, f"could not read the multipart body: {exc}")
    try:  # the parts are spooled to temporary files: closed whatever the answer
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            return error(400, "the multipart body holds no files; send each image as a file field")
        for upload in files:
            if upload.size is not None and upload.size > limits.max_bytes:
                return error(413, f"{upload.filename}: the image is larger than the limit of "
                                  f"{limits.max_bytes} bytes")
        bodies = [await upload.read() for upload in files]
    finally:
        await form.close()
    results = await asyncio.gather(*(classify(body) for body in bodies), return_exceptions=True)
    for number, (upload, result) in enumerate(zip(files, results), 1):
        if isinstance(result, Exception):
            return error_for(result, subject=upload.filename or f"file {number}")
    return json_response(results)


def admin_router(models: Any) -> APIRouter:
    """POST /admin/reload: what changes the served model (the default), behind the login or an admin key."""
    router = APIRouter()

    @router.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        """Loads the conf's model again (the highest version folder), beside the serving one, and swaps it in."""
        if refused := unauthorised(request, models.access, admin=True):
            return refused
        try:  # a reload already under way is joined, not repeated
            model = await asyncio.wrap_future(models.default.reloader.reload_shared("POST /admin/reload"))
        except Exception as exc:
            return error(409, f"the new model was refused, the previous one still serves: {exc}")
        return JSONResponse({"status": "reloaded", "model": describe(model),
                             "version": model.version})

    return router


def probes_router(models: Any) -> APIRouter:
    """/healthz, /readyz and /metrics: open to all, as probes and scrapers are."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus' text format (scraped without auth, like the probes)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/healthz")
    async def healthz() -> dict:
        """The process is up and answering."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """The default model is loaded and warmed up: send traffic."""
        health = models.default.health
        if not health.ready:
            return error(503, f"not ready: {health.reason}", **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        return JSONResponse({"status": "ready"})

    return router


def classifier_for(request: Request, batcher: Batcher):
    """What answers each image: top-k [label, p] pairs, or, asked with ?none_of_these=true, those under "labels"
    beside the "none_of_these" verdict (the default answer stays as it was). ValueError for another value."""
    asked = request.query_params.get("none_of_these", "false").lower()
    if asked not in ("true", "1", "false", "0"):
        raise ValueError(f"none_of_these must be true or false, not {asked!r}")
    if asked in ("false", "0"):
        return batcher.classify

    async def with_verdict(item: Any) -> dict:
        return (await batcher.classify_with_verdict(item)).as_json()

    return with_verdict


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower-cased: media types are case-insensitive (RFC 9110)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class BodyTooLarge(Exception):
    """The body went past its limit while it was being read."""


def limited(request: Request, limit: int) -> Request:
    """The same request, whose body stops being read once it passes `limit` bytes, whatever the headers say
    (a chunked body has no Content-Length; Starlette's max_part_size does not cover file parts)."""
    received = 0

    async def receive() -> dict:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
        return message

    return Request(request.scope, receive)


def _over_length(request: Request, limit: int) -> JSONResponse | None:
    length = byte_count(request.headers.get("content-length"))
    if length is not None and length > limit:
        return error(413, too_large("the request body", limit))
    return None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, read as it streams in; BodyTooLarge as soon as it passes the limit (before a byte is read
    when Content-Length says so), so nothing is buffered without bound."""
    if _over_length(request, limit):
        raise BodyTooLarge
    return b"".join([chunk async for chunk in limited(request, limit).stream()])


async def read_image_body(request: Request, limit: int) -> bytes | JSONResponse:
    """One image as the raw body, or the JSON error (413 past the limit, 400 when empty) to answer with."""
    try:
        body = await read_limited(request, limit)
    except BodyTooLarge:
        return error(413, f"the image is larger than the limit of {limit} bytes")
    if not body:
        return error(400, "the request body is empty: send the image bytes as the body")
    return body
