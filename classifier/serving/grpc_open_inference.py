"""The Open Inference Protocol (KServe v2) over gRPC, as Triton serves it: inference.GRPCInferenceService."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

import grpc
import numpy as np

from . import metrics
from .grpc_calls import admin_action, code_of, method_table
from .open_inference import (EXTENSIONS, IMAGE_INPUT, PROBABILITIES, TENSOR_INPUT, check_outputs, input_items,
                             metadata, output_values, raw_contents)
from .protocols import Catalog, ProtocolError, Served
from .protos import open_inference_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
STREAM_IN_FLIGHT = 16  # requests of one ModelStreamInfer stream classified at once; it is read no further ahead
STREAM_SECONDS = 300  # a stream open longer is ended (DEADLINE_EXCEEDED), whatever deadline its client set


class OpenInference:
    """The service's calls on the shared model. Errors are ProtocolErrors, as on the REST routes (grpc_server
    turns them into status codes); health and metadata calls are answered from the serving model as it is now."""

    def __init__(self, models: Catalog):
        self.models = models

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=(await self.models.served(None, load=False)).health.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            served = await self.models.served(request.name, request.version, load=False)
        except ProtocolError:  # an unknown or unloaded model is simply not ready (Triton answers the same)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=served.health.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="image-classifier", version="1", extensions=EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        described = metadata(await self.models.served(request.name, request.version))
        return pb.ModelMetadataResponse(
            name=described["name"], versions=described["versions"], platform=described["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described["outputs"]])

    async def repository_index(self, request: pb.RepositoryIndexRequest,
                               context: Any) -> pb.RepositoryIndexResponse:
        """Every model, its version, state (READY, UNAVAILABLE, LOADING) and why; only the ready ones if asked."""
        listed = [model for model in self.models.index() if not request.ready or model["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**model) for model in listed])

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest,
                                    context: Any) -> pb.RepositoryModelLoadResponse:
        """Loads (or loads again) a model while the others serve: an admin action, as over REST."""
        await admin_action(self.models, context, self.models.load, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest,
                                      context: Any) -> pb.RepositoryModelUnloadResponse:
        await admin_action(self.models, context, self.models.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """One input, `image` (BYTES: encoded images, in raw_input_contents or bytes_contents) or `pixels` (FP32
        [N, H, W, 3]); outputs `probabilities` (or, with a `classification` count, Triton's strings) and `labels`,
        in raw_output_contents, as Triton answers."""
        served = await self.models.served(request.model_name, request.model_version)
        # Off the event loop: converting a large tensor takes a while, and every other call would wait for it.
        items = await asyncio.to_thread(self._items, served, request)
        probabilities, model = await served.class_probabilities(items, f"input {request.inputs[0].name!r}")
        wanted = list(request.outputs) or [pb.ModelInferRequest.InferRequestedOutputTensor(name=PROBABILITIES)]
        check_outputs([output.name for output in wanted])
        answer = pb.ModelInferResponse(model_name=served.name, model_version=served.version,
                                       id=request.id)
        for output in wanted:
            parameters = {key: _value(value) for key, value in output.parameters.items()}
            if "shared_memory_region" in parameters:
                raise ProtocolError(400, "shared memory is not supported by this server")
            datatype, values = output_values(output.name, parameters.get("classification"), probabilities, model)
            answer.outputs.add(name=output.name, datatype=datatype, shape=values.shape)
            answer.raw_output_contents.append(raw_contents(datatype, values))
        return answer

    @staticmethod
    def _items(served: Served, request: pb.ModelInferRequest) -> list[bytes] | np.ndarray:
        if len(request.inputs) != 1:
            raise ProtocolError(400, f"send exactly one input: {IMAGE_INPUT!r} (BYTES, encoded images) or "
                                     f"{TENSOR_INPUT!r} (FP32 [N, H, W, 3])")
        tensor = request.inputs[0]
        if "shared_memory_region" in tensor.parameters:
            raise ProtocolError(400, "shared memory is not supported by this server: send the data in the request")
        shape = [int(size) for size in tensor.shape]
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise ProtocolError(400, f"raw_input_contents holds {len(request.raw_input_contents)} entries for "
                                         "one input")
            return input_items(served, tensor.name, tensor.datatype, shape, raw=request.raw_input_contents[0])
        contents = tensor.contents
        if tensor.datatype == "BYTES":
            return input_items(served, tensor.name, tensor.datatype, shape, encoded=contents.bytes_contents)
        return input_items(served, tensor.name, tensor.datatype, shape,
                           data=np.asarray(contents.fp32_contents, dtype=np.float32))

    async def model_stream_infer(self, requests: AsyncIterator[pb.ModelInferRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's stream (tritonclient's start_stream and async_stream_infer): each request is answered in turn,
        or with its error_message (the stream goes on). Up to STREAM_IN_FLIGHT requests are classified at once,
        in the shared batches; the stream is read no further ahead than that, and ends after STREAM_SECONDS."""
        method = f"{SERVICE}/ModelStreamInfer"
        deadline = time.monotonic() + STREAM_SECONDS
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # bounded by the semaphore: STREAM_IN_FLIGHT
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        reader = asyncio.create_task(self._read_stream(requests, answers, room, context))
        code = grpc.StatusCode.OK
        try:
            while (task := await asyncio.wait_for(answers.get(), max(0.0, deadline - time.monotonic()))) is not None:
                yield await task
                room.release()
        except asyncio.TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort(code, f"the stream has been open for {STREAM_SECONDS} s, the longest one may be: "
                                      "open another")
        finally:
            reader.cancel()
            while not answers.empty():
                if task := answers.get_nowait():
                    task.cancel()
            metrics.GRPC_REQUESTS.labels(method, code.name).inc()

    async def _read_stream(self, requests: AsyncIterator[pb.ModelInferRequest], answers: asyncio.Queue,
                           room: asyncio.Semaphore, context: Any) -> None:
        try:
            while True:
                await room.acquire()  # the next request is read only once an answer has room
                request = await anext(requests, None)
                if request is None:
                    break
                answers.put_nowait(asyncio.create_task(self._stream_answer(request, context)))
        finally:  # the client's side closed (or failed): the answers end after those already under way
            answers.put_nowait(None)

    async def _stream_answer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self.model_infer(request, context))
        except ProtocolError as exc:
            return pb.ModelStreamInferResponse(error_message=f"[{code_of(exc).name}] {exc}",
                                               infer_response=pb.ModelInferResponse(id=request.id))
        except Exception:
            log.exception("gRPC stream request failed")
            return pb.ModelStreamInferResponse(error_message="internal error; the server log has the details",
                                               infer_response=pb.ModelInferResponse(id=request.id))


def _value(parameter: pb.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def handlers(models: Catalog) -> grpc.GenericRpcHandler:
    service = OpenInference(models)
    return method_table(SERVICE, {
        "ServerLive": (service.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (service.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (service.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (service.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (service.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": (service.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "RepositoryIndex": (service.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": (service.repository_model_load, pb.RepositoryModelLoadRequest,
                                pb.RepositoryModelLoadResponse),
        "RepositoryModelUnload": (service.repository_model_unload, pb.RepositoryModelUnloadRequest,
                                  pb.RepositoryModelUnloadResponse),
    }, streams={"ModelStreamInfer": (service.model_stream_infer, pb.ModelInferRequest, pb.ModelStreamInferResponse)})
