"""The Open Inference Protocol (KServe v2) over REST, as Triton speaks it: /v2 health, metadata and infer."""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any, Awaitable, Callable, Iterator

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..labels import best
from .guard import byte_count
from . import rest_protocols as rest
from .protocols import Catalog, ProtocolError, Served, check_count

log = logging.getLogger(__name__)

IMAGE_INPUT, TENSOR_INPUT = "image", "pixels"  # encoded images (BYTES [N]); ready tensors (FP32 [N, H, W, 3])
PROBABILITIES, LABELS = "probabilities", "labels"  # FP32 [N, classes]; the top-k label names, BYTES [N, k]
OUTPUTS = (PROBABILITIES, LABELS)
EXTENSIONS = ["binary_tensor_data", "classification"]  # Triton's names for the two extensions spoken here
PLATFORMS = {"frozen graph": "tensorflow_graphdef", "SavedModel": "tensorflow_savedmodel", "Keras": "keras"}


PREFIX = "/v2"
INFER_PATHS = (f"{PREFIX}/models/{{name}}/infer", f"{PREFIX}/models/{{name}}/versions/{{version}}/infer")


def infer_route(models: Catalog) -> Callable[..., Awaitable[Response]]:
    """POST /v2/models/{name}[/versions/{version}]/infer's handler, for FastAPI's routes and the inference lane's
    (inference_lane.py)."""

    @rest.protocol_route
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        """One input, `image` (BYTES: encoded images, base64 in JSON, length-prefixed in binary) or `pixels`
        (FP32 [N, H, W, 3]); outputs `probabilities` (optionally as Triton's classification strings) and
        `labels`."""
        return await _infer(await rest.check(models, request, name, version), request)

    return infer


def create_router(models: Catalog) -> APIRouter:
    """The KServe v2 routes, each model by name. Health needs no login (like /healthz); model metadata, infer and the
    repository index need a login or key (models.access); loading and unloading change what every client is
    served, so they are admin actions (the login, an admin key, or --open-admin)."""
    router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (KServe v2)"])

    @router.get("")
    async def server_metadata() -> dict:
        return {"name": "image-classifier", "version": "1", "extensions": EXTENSIONS}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        return _readiness(await models.served(None, load=False))

    @router.get("/models/{name}/ready")
    @router.get("/models/{name}/versions/{version}/ready")
    @rest.protocol_route
    async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
        return _readiness(await rest.check(models, request, name, version, load=False))

    @router.get("/models/{name}")
    @router.get("/models/{name}/versions/{version}")
    @rest.protocol_route
    async def model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
        return JSONResponse(metadata(await rest.check(models, request, name, version)))

    infer = infer_route(models)
    for path in INFER_PATHS:
        router.add_api_route(path.removeprefix(PREFIX), infer, methods=["POST"])

    @router.post("/repository/index")
    @rest.protocol_route
    async def repository_index(request: Request) -> JSONResponse:
        """Triton's repository extension: every model, its version, state (READY, UNAVAILABLE, LOADING) and why;
        {"ready": true} in the body: only the ready ones."""
        rest.check_login(models, request)
        asked = await rest.optional_json(request, "the index request")
        listed = models.index()
        if asked.get("ready") is True:
            listed = [model for model in listed if model["state"] == "READY"]
        return JSONResponse(listed)

    @router.post("/repository/models/{name}/load")
    @router.post("/repository/models/{name}/unload")
    @rest.protocol_route
    async def repository_change(request: Request, name: str) -> JSONResponse:
        """Loads (or loads again) or unloads a model while the others serve: an admin action."""
        rest.check_admin(models, request)
        await rest.optional_json(request, "the request")
        action = models.load if request.url.path.endswith("/load") else models.unload
        await rest.refused_as_protocol_error(action(name))
        return JSONResponse({})

    return router


def _readiness(served: Served) -> JSONResponse:
    # The spec: 200 means ready, a 4xx means not (Triton answers 400).
    if served.health.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": f"not ready: {served.health.reason}"}, status_code=400)


def metadata(served: Served) -> dict:
    """The model's name, versions, platform, inputs and outputs (shapes with -1 for the batch dimension)."""
    model = served.model
    runtime_format = getattr(getattr(model, "runtime", None), "format", None)
    inputs = [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
    if served.input_size:
        width, height = served.input_size
        inputs.append({"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, height, width, 3]})
    outputs = []
    if served.input_size:
        outputs = [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(served.labels)]},
                   {"name": LABELS, "datatype": "BYTES", "shape": [-1, model.top_k]}]
    return {"name": served.name, "versions": [served.version],
            "platform": PLATFORMS.get(runtime_format, "python"), "inputs": inputs, "outputs": outputs}


async def _infer(served: Served, request: Request) -> Response:
    body = await rest.body(served, request)
    # Off the event loop: a large body takes a while to parse, and every other request would wait for it.
    header, tensor, items = await asyncio.to_thread(_read_request, served, body,
                                                    request.headers.get("inference-header-content-length"))
    probabilities, model = await served.class_probabilities(items, f"input {tensor.get('name')!r}")
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    binary_default = parameters.get("binary_data_output") is True
    requested = header.get("outputs") or [{"name": PROBABILITIES}]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ProtocolError(400, "outputs must be a list of objects with a name")
    check_outputs([wanted.get("name") for wanted in requested])
    outputs, blobs = [], []
    for wanted in requested:
        output, blob = _output(wanted, probabilities, model, binary_default)
        outputs.append(output)
        if blob is not None:
            blobs.append(blob)
    answer = {"model_name": served.name, "model_version": served.version, "outputs": outputs}
    if "id" in header:
        answer["id"] = header["id"]
    if not blobs:
        return JSONResponse(answer)
    head = json.dumps(answer).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def check_outputs(names: list[Any]) -> None:
    """The 400 for outputs named twice, or more of them than there are: each answer is [N, classes] big."""
    if len(names) != len(set(map(str, names))) or len(names) > len(OUTPUTS):
        raise ProtocolError(400, f"outputs must name each of {', '.join(map(repr, OUTPUTS))} at most once, "
                                 f"not {len(names)} outputs")


def _read_request(served: Served, body: bytes, header_length: str | None) -> tuple[dict, dict, list | np.ndarray]:
    """The request's JSON header, its one input tensor, and that input's images or tensors."""
    header, binary = _split(served, body, header_length)
    if not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
        raise ProtocolError(400, f"send exactly one input: {IMAGE_INPUT!r} (BYTES, encoded images) or "
                                 f"{TENSOR_INPUT!r} (FP32 [N, H, W, 3])")
    tensor = header["inputs"][0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, "an input must be a JSON object with name, shape, datatype and data")
    return header, tensor, _input_items(served, tensor, binary)


def _split(served: Served, body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary part after it (the binary tensor extension), or the whole JSON body."""
    length = byte_count(header_length)
    if header_length is None:
        head, binary = body, b""
    elif length is not None and length <= len(body):
        head, binary = body[:length], body[length:]
    else:
        raise ProtocolError(400, f"Inference-Header-Content-Length {header_length!r} must be a byte count no larger "
                                 f"than the body ({len(body)} bytes)")
    return served.json(head, "the inference request"), binary


def _input_items(served: Served, tensor: dict, binary: bytes) -> list[bytes] | np.ndarray:
    """The input's encoded images, or its tensors, from its JSON data or its part of the binary data."""
    name = tensor.get("name")
    parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    if "shared_memory_region" in parameters:
        raise ProtocolError(400, "shared memory is not supported by this server: send the data in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise ProtocolError(400, f"input {name!r}: binary_data_size {size!r} does not fit the "
                                     f"{len(binary)} bytes after the JSON header")
        return input_items(served, name, tensor.get("datatype"), tensor.get("shape"), raw=binary[:size])
    if "data" not in tensor:
        raise ProtocolError(400, f"input {name!r} has neither data nor binary_data_size")
    return input_items(served, name, tensor.get("datatype"), tensor.get("shape"), data=tensor["data"])


def input_items(served: Served, name: Any, datatype: Any, shape: Any, *, raw: bytes | None = None,
                data: Any = None, encoded: list[bytes] | None = None) -> list[bytes] | np.ndarray:
    """One input tensor's encoded images or ready tensors, checked: its name, datatype and shape, then its values,
    from `raw` (the binary form: FP32 little-endian, or length-prefixed BYTES elements), `data` (JSON: numbers,
    or base64 text for BYTES, flat or nested) or `encoded` (gRPC's bytes_contents: the images themselves)."""
    expected = {IMAGE_INPUT: "BYTES", TENSOR_INPUT: "FP32"}
    if name not in expected:
        raise ProtocolError(400, f"unknown input {name!r}: this model takes {IMAGE_INPUT!r} (BYTES, encoded "
                                 f"images) or {TENSOR_INPUT!r} (FP32 [N, H, W, 3])")
    if datatype != expected[name]:
        raise ProtocolError(400, f"input {name!r} must have datatype {expected[name]}, not {datatype!r}")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(400, f"input {name!r}: shape must be a list of non-negative integers, not {shape!r}")
    where = f"input {name!r}"
    check_count(shape[0], where)  # before anything is converted: 16 million empty elements are not 16 million images
    count = int(np.prod(shape, dtype=np.int64))
    if name == TENSOR_INPUT:
        width, height = served.input_size or (0, 0)
        if shape[1:] != [height, width, 3]:
            raise ProtocolError(400, f"{where}: the shape must be [N, {height}, {width}, 3] (RGB, as the model's "
                                     f"preprocess makes it), not {shape}")
        values = np.frombuffer(raw[:len(raw) // 4 * 4], "<f4") if raw is not None else data
        try:
            array = np.asarray(values, dtype=np.float32).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(400, f"{where}: the data does not fill the shape {shape}: {exc}") from None
        return served.tensors(array, where)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ProtocolError(400, f"{where}: one encoded image per element, shape [N] or [N, 1], not {shape}")
    if raw is not None:
        images = _length_prefixed(raw, name, served.limits.max_bytes, count)
    elif encoded is not None:
        images = list(encoded[:count + 1])
        for number, image in enumerate(images):
            if len(image) > served.limits.max_bytes:
                raise ProtocolError(413, f"{where} element {number}: the image is larger than the limit of "
                                         f"{served.limits.max_bytes} bytes")
    else:
        elements = _flatten(data, count) if isinstance(data, list) else [data]
        images = [served.image(element, f"{where} element {index}") for index, element in enumerate(elements)]
    if len(images) != count:
        raise ProtocolError(400, f"{where}: the shape {shape} holds {count} images but the data has {len(images)}")
    return images


def _flatten(data: list, most: int) -> list[Any]:
    """The elements of nested JSON lists, row-major (the spec allows the data flat or nested), without recursion,
    stopping once there are more than `most` (the caller then says the count is wrong)."""
    elements: list[Any] = []
    pending: list[Iterator[Any]] = [iter(data)]
    while pending and len(elements) <= most:
        element = next(pending[-1], _END)
        if element is _END:
            pending.pop()
        elif isinstance(element, list):
            pending.append(iter(element))
        else:
            elements.append(element)
    return elements


_END = object()


def _length_prefixed(raw: bytes, name: str, max_bytes: int, count: int) -> list[bytes]:
    """Triton's binary BYTES elements: each a 4-byte little-endian length, then that many bytes; parsing stops
    past `count` (the shape's count, itself at most MAX_IMAGES), where the caller refuses the mismatch."""
    images, offset = [], 0
    while offset < len(raw) and len(images) <= count:
        if offset + 4 > len(raw):
            raise ProtocolError(400, f"input {name!r}: the binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if length > max_bytes:
            raise ProtocolError(413, f"input {name!r} element {len(images)}: the image is larger than the limit "
                                     f"of {max_bytes} bytes")
        if offset + 4 + length > len(raw):
            raise ProtocolError(400, f"input {name!r}: element {len(images)} is cut short")
        images.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    return images


def _output(wanted: dict, probabilities: np.ndarray, model: Any, binary_default: bool) -> tuple[dict, bytes | None]:
    """One requested output as JSON data, or as binary data (its bytes are returned to follow the header)."""
    name = wanted.get("name")
    parameters = wanted.get("parameters") if isinstance(wanted.get("parameters"), dict) else {}
    if "shared_memory_region" in parameters:
        raise ProtocolError(400, "shared memory is not supported by this server")
    datatype, values = output_values(name, parameters.get("classification"), probabilities, model)
    output = {"name": name, "datatype": datatype, "shape": list(values.shape)}
    if not parameters.get("binary_data", binary_default):
        output["data"] = values.ravel().tolist()
        return output, None
    blob = raw_contents(datatype, values)
    output["parameters"] = {"binary_data_size": len(blob)}
    return output, blob


def output_values(name: Any, classes: Any, probabilities: np.ndarray, model: Any) -> tuple[str, np.ndarray]:
    """An output's datatype and values: `probabilities` (FP32 [N, classes], or with a `classification` count, as
    Triton's classification extension gives it: "probability:index:label" strings, best first) or `labels` (the
    top-k names, BYTES [N, k])."""
    labels = list(model.labels)
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ProtocolError(400, f"output {name!r}: classification must be a count ≥ 1, not {classes!r}")
    if name == PROBABILITIES and classes is None:
        return "FP32", probabilities
    if name == PROBABILITIES:
        return "BYTES", np.array([[f"{row[i]:f}:{i}:{labels[i]}" for i in best(row, classes)]
                                  for row in probabilities], dtype=object)
    if name == LABELS:
        k = classes or model.top_k
        return "BYTES", np.array([[labels[i] for i in best(row, k)] for row in probabilities], dtype=object)
    raise ProtocolError(400, f"unknown output {name!r}: this model gives {PROBABILITIES!r} and {LABELS!r}")


def raw_contents(datatype: str, values: np.ndarray) -> bytes:
    """The binary form of an output (REST's binary extension, gRPC's raw_output_contents): FP32 little-endian, or
    each BYTES element as a 4-byte little-endian length and its UTF-8 bytes."""
    if datatype == "FP32":
        return values.astype("<f4").tobytes()
    encoded = [str(value).encode() for value in values.ravel()]
    return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
