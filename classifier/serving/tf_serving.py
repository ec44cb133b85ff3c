"""TensorFlow Serving's REST API: /v1/models/{name} status and metadata, :predict (rows or columns) and :classify."""
from __future__ import annotations

import asyncio
import re
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..labels import top_k
from . import rest_protocols as rest
from .protocols import Catalog, ProtocolError, Served, check_count

IMAGE_INPUT, TENSOR_INPUT = "image", "pixels"  # {"b64": encoded image}; a tensor [H, W, 3] as preprocess makes it
PREDICT_SIGNATURE, CLASSIFY_SIGNATURE = "serving_default", "classification"
# POST /v1/models/{name}[/versions/{v}]:{verb}; TF Serving's /labels/{label} form has no meaning here.
_TARGET = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:(?P<verb>\w+)")


PREFIX = "/v1/models"
RUN_PATH = f"{PREFIX}/{{target:path}}"  # POST /v1/models/{name}[/versions/{v}]:predict or :classify


def run_route(models: Catalog) -> Callable[[Request, str], Awaitable[JSONResponse]]:
    """POST /v1/models/…:predict and :classify's handler, for FastAPI's route and the inference lane's
    (inference_lane.py)."""

    @rest.protocol_route
    async def run(request: Request, target: str) -> JSONResponse:
        """`:predict` → the probabilities of each instance; `:classify` → each example's top-k [label, score]."""
        match = _TARGET.fullmatch(target)
        if not match or match["verb"] not in ("predict", "classify"):
            raise ProtocolError(404, f"no such method: POST /v1/models/{target}; use "
                                     "/v1/models/{name}[/versions/{v}]:predict or :classify")
        served = await rest.check(models, request, match["name"], match["version"])
        # Off the event loop: a large body takes a while to parse and convert, and every request would wait.
        read = _predict_items if match["verb"] == "predict" else _classify_items
        key, items = await asyncio.to_thread(read, served, await rest.body(served, request))
        probabilities, model = await served.class_probabilities(items, "the request's")
        if match["verb"] == "predict":  # the one output, given bare (TF Serving names outputs only when several)
            return JSONResponse({key: probabilities.tolist()})
        k = model.top_k
        return JSONResponse({"results": [top_k(row, model.labels, k) for row in probabilities]})

    return run


def create_router(models: Catalog) -> APIRouter:
    """The TF Serving REST routes, each model by name; all need --auth's login when it is set (TF Serving has no
    health probe)."""
    router = APIRouter(prefix=PREFIX, tags=["TensorFlow Serving REST API"])

    @router.get("/{name}")
    @router.get("/{name}/versions/{version}")
    @rest.protocol_route
    async def status(request: Request, name: str, version: str | None = None) -> JSONResponse:
        """The version that serves, as TF Serving reports it (LOADING until the warm-up has gone through)."""
        served = await rest.check(models, request, name, version, load=False)
        state = "AVAILABLE" if served.health.ready else "LOADING"
        return JSONResponse({"model_version_status": [
            {"version": served.version, "state": state, "status": {"error_code": "OK", "error_message": ""}}]})

    @router.get("/{name}/metadata")
    @router.get("/{name}/versions/{version}/metadata")
    @rest.protocol_route
    async def metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
        served = await rest.check(models, request, name, version)
        return JSONResponse({"model_spec": {"name": served.name, "signature_name": "", "version": served.version},
                             "metadata": {"signature_def": {"signature_def": signatures(served)}}})

    router.add_api_route(RUN_PATH.removeprefix(PREFIX), run_route(models), methods=["POST"])
    return router


def signatures(served: Served) -> dict:
    """serving_default (predict: an image or a tensor → probabilities) and classification (classify: an image →
    the top-k classes and scores), as TF Serving's metadata describes signatures."""
    k = served.model.top_k
    predict_inputs = {IMAGE_INPUT: _tensor_info("DT_STRING", [-1])}
    if served.input_size:
        width, height = served.input_size
        predict_inputs[TENSOR_INPUT] = _tensor_info("DT_FLOAT", [-1, height, width, 3])
    return {
        PREDICT_SIGNATURE: {"inputs": predict_inputs,
                            "outputs": {"probabilities": _tensor_info("DT_FLOAT", [-1, len(served.labels)])},
                            "method_name": "tensorflow/serving/predict"},
        CLASSIFY_SIGNATURE: {"inputs": {IMAGE_INPUT: _tensor_info("DT_STRING", [-1])},
                             "outputs": {"classes": _tensor_info("DT_STRING", [-1, k]),
                                         "scores": _tensor_info("DT_FLOAT", [-1, k])},
                             "method_name": "tensorflow/serving/classify"}}


def _tensor_info(dtype: str, shape: list[int]) -> dict:
    return {"dtype": dtype, "name": "",
            "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape], "unknown_rank": False}}


def _predict_items(served: Served, body: bytes) -> tuple[str, list[bytes] | np.ndarray]:
    """Row format ({"instances": [...]}) answers as {"predictions": [...]}; columnar ({"inputs": ...}) as
    {"outputs": ...}: the answer's key, and the images or tensors to classify."""
    request = served.json(body, "the request")
    signature = request.get("signature_name", PREDICT_SIGNATURE)
    if signature != PREDICT_SIGNATURE:
        raise ProtocolError(400, f"signature {signature!r} has no predict method; :predict serves "
                                 f"{PREDICT_SIGNATURE!r} (and :classify serves {CLASSIFY_SIGNATURE!r})")
    if ("instances" in request) == ("inputs" in request):
        raise ProtocolError(400, 'send either "instances" (row format) or "inputs" (columnar format), not both '
                                 "or neither")
    if "instances" in request:
        return "predictions", _rows(served, request["instances"])
    return "outputs", _columns(served, request["inputs"])


def _classify_items(served: Served, body: bytes) -> tuple[str, list[bytes]]:
    """{"examples": [{"image": {"b64": …}}, …]}: answered as {"results": [[[label, score], …], …]}, top-k."""
    request = served.json(body, "the request")
    signature = request.get("signature_name", CLASSIFY_SIGNATURE)
    if signature not in (CLASSIFY_SIGNATURE, PREDICT_SIGNATURE):
        raise ProtocolError(400, f"signature {signature!r} not found; :classify serves {CLASSIFY_SIGNATURE!r}")
    examples = request.get("examples")
    if not isinstance(examples, list):
        raise ProtocolError(400, 'send "examples": a list of {"image": {"b64": "<base64 image>"}} objects')
    check_count(len(examples), '"examples"')
    context = request.get("context") if isinstance(request.get("context"), dict) else {}
    images = []
    for number, example in enumerate(examples):
        features = {**context, **example} if isinstance(example, dict) else None
        if not features or IMAGE_INPUT not in features:
            raise ProtocolError(400, f'example {number}: expected {{"{IMAGE_INPUT}": {{"b64": "<base64 image>"}}}}')
        images.append(_b64(served, features[IMAGE_INPUT], f"example {number}"))
    return "results", images


def _rows(served: Served, instances: Any) -> list[bytes] | np.ndarray:
    """Each instance is one image ({"b64": …}), one tensor ([H][W][3]), or an object naming its input."""
    if not isinstance(instances, list) or not instances:
        raise ProtocolError(400, '"instances" must be a non-empty list')
    check_count(len(instances), '"instances"')  # before a single one is converted
    named = [instance[IMAGE_INPUT] if _names(instance, IMAGE_INPUT) else
             instance[TENSOR_INPUT] if _names(instance, TENSOR_INPUT) else instance for instance in instances]
    if all(_is_b64(value) for value in named):
        return [_b64(served, value, f"instance {number}") for number, value in enumerate(named)]
    if all(isinstance(value, list) for value in named):
        return served.tensors(named, '"instances"')
    raise ProtocolError(400, 'every instance must be an image ({"b64": "<base64 image>"}) or every one a float '
                             f'tensor [H][W][3]; an object may name its input, "{IMAGE_INPUT}" or "{TENSOR_INPUT}"')


def _columns(served: Served, inputs: Any) -> list[bytes] | np.ndarray:
    """The batch as one value: a list of {"b64": …}, a float tensor [N][H][W][3], or an object naming its input."""
    if isinstance(inputs, dict) and len(inputs) == 1 and (IMAGE_INPUT in inputs or TENSOR_INPUT in inputs):
        inputs = next(iter(inputs.values()))
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, '"inputs" must hold a non-empty list: of {"b64": …} images, or a float tensor '
                                 "[N][H][W][3]")
    check_count(len(inputs), '"inputs"')
    if all(_is_b64(value) for value in inputs):
        return [_b64(served, value, f"input {number}") for number, value in enumerate(inputs)]
    return served.tensors(inputs, '"inputs"')


def _names(instance: Any, key: str) -> bool:
    return isinstance(instance, dict) and set(instance) == {key}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _b64(served: Served, value: Any, where: str) -> bytes:
    """TF Serving's JSON for bytes: {"b64": "<base64>"}."""
    if not _is_b64(value):
        raise ProtocolError(400, f'{where}: an image must be sent as {{"b64": "<base64 image>"}}')
    return served.image(value["b64"], where)
