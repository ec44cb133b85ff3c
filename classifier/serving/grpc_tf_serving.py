"""TensorFlow Serving's gRPC API: PredictionService (Predict, Classify, GetModelMetadata) and ModelService
(GetModelStatus, HandleReloadConfigRequest), as tensorflow-serving-api's stubs call them on port 8500."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import any_pb2, json_format, wrappers_pb2

from ..labels import top_k
from ..conf import ConfError
from .grpc_calls import admin_action, method_table
from .model_sources import models_of
from .protocols import Catalog, ProtocolError, Served, check_count
from .protos import tf_serving_pb2 as pb
from .tf_serving import CLASSIFY_SIGNATURE, IMAGE_INPUT, PREDICT_SIGNATURE, TENSOR_INPUT, signatures

PREDICTION_SERVICE, MODEL_SERVICE = "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"
SERVICES = [PREDICTION_SERVICE, MODEL_SERVICE]
PROBABILITIES = "probabilities"  # Predict's one output, as in the REST metadata's serving_default signature
# The Any in GetModelMetadata's answer names TF Serving's own message, which the client unpacks it as.
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


class TFServing:
    """The two services' calls on the shared model; errors are ProtocolErrors (grpc_server maps their codes)."""

    def __init__(self, models: Catalog):
        self.models = models

    async def _spec(self, spec: pb.ModelSpec, signature: str, load: bool = True) -> tuple[pb.ModelSpec, Served]:
        """The request's model, checked (name, version), and its spec answered back as TF Serving does: with the
        version that served and the signature used."""
        version = str(spec.version.value) if spec.HasField("version") else None
        served = await self.models.served(spec.name, version, load)
        if spec.WhichOneof("version_choice") == "version_label":
            raise ProtocolError(404, f"version label {spec.version_label!r} is not served: this server has no "
                                     f"labels; ask for version {served.version}, or for none")
        return pb.ModelSpec(name=served.name, version=wrappers_pb2.Int64Value(value=int(served.version)),
                            signature_name=signature), served

    async def predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        """inputs {"image": DT_STRING [N] of encoded images} or {"pixels": DT_FLOAT [N, H, W, 3]} → outputs
        {"probabilities": DT_FLOAT [N, classes]}."""
        signature = request.model_spec.signature_name or PREDICT_SIGNATURE
        if signature != PREDICT_SIGNATURE:
            raise ProtocolError(400, f"signature {signature!r} has no predict method; Predict serves "
                                     f"{PREDICT_SIGNATURE!r} (and Classify serves {CLASSIFY_SIGNATURE!r})")
        spec, served = await self._spec(request.model_spec, signature)
        unknown = set(request.output_filter) - {PROBABILITIES}
        if unknown:
            raise ProtocolError(400, f"output_filter names {sorted(unknown)}: {PREDICT_SIGNATURE!r} has one output, "
                                     f"{PROBABILITIES!r}")
        if len(request.inputs) != 1 or not set(request.inputs) <= {IMAGE_INPUT, TENSOR_INPUT}:
            raise ProtocolError(400, f"send one input: {IMAGE_INPUT!r} (DT_STRING [N], encoded images) or "
                                     f"{TENSOR_INPUT!r} (DT_FLOAT [N, H, W, 3]), not {sorted(request.inputs)}")
        name, tensor = next(iter(request.inputs.items()))
        # Off the event loop: converting a large tensor takes a while, and every other call would wait for it.
        items = await asyncio.to_thread(self._images if name == IMAGE_INPUT else self._tensors, served, tensor, name)
        probabilities, _ = await served.class_probabilities(items, f"input {name!r}")
        output = pb.TensorProto(dtype=pb.DT_FLOAT, tensor_content=probabilities.astype("<f4").tobytes())
        output.tensor_shape.dim.add(size=probabilities.shape[0])
        output.tensor_shape.dim.add(size=probabilities.shape[1])
        return pb.PredictResponse(model_spec=spec, outputs={PROBABILITIES: output})

    @staticmethod
    def _images(served: Served, tensor: pb.TensorProto, name: str) -> list[bytes]:
        if tensor.dtype != pb.DT_STRING:
            raise ProtocolError(400, f"input {name!r} must be DT_STRING (encoded images), not "
                                     f"{_dtype_name(tensor.dtype)}")
        shape = _shape(tensor)
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise ProtocolError(400, f"input {name!r}: one encoded image per element, shape [N] or [N, 1], not "
                                     f"{shape}")
        images = list(tensor.string_val)
        check_count(len(images), f"input {name!r}")
        if shape and shape[0] != len(images):
            raise ProtocolError(400, f"input {name!r}: the shape {shape} holds {shape[0]} images but string_val has "
                                     f"{len(images)}")
        for number, image in enumerate(images):
            if len(image) > served.limits.max_bytes:
                raise ProtocolError(413, f"input {name!r} element {number}: the image is larger than the limit of "
                                         f"{served.limits.max_bytes} bytes")
        return images

    @staticmethod
    def _tensors(served: Served, tensor: pb.TensorProto, name: str) -> np.ndarray:
        if tensor.dtype != pb.DT_FLOAT:
            raise ProtocolError(400, f"input {name!r} must be DT_FLOAT, not {_dtype_name(tensor.dtype)}")
        shape = _shape(tensor)
        if not shape:
            raise ProtocolError(400, f"input {name!r} has no shape: send [N, H, W, 3]")
        check_count(shape[0], f"input {name!r}")  # before anything is converted
        values = np.frombuffer(tensor.tensor_content, "<f4") if tensor.tensor_content else \
            np.asarray(tensor.float_val, dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise ProtocolError(400, f"input {name!r}: {values.size} values do not fill the shape {shape}")
        return served.tensors(values.reshape(shape), f"input {name!r}")

    async def classify(self, request: pb.ClassificationRequest, context: Any) -> pb.ClassificationResponse:
        """tf.Example inputs, each with an "image" bytes feature (or one in the list's context) → the top-k
        classes and scores of each."""
        signature = request.model_spec.signature_name or CLASSIFY_SIGNATURE
        if signature not in (CLASSIFY_SIGNATURE, PREDICT_SIGNATURE):
            raise ProtocolError(400, f"signature {signature!r} not found; Classify serves {CLASSIFY_SIGNATURE!r}")
        spec, served = await self._spec(request.model_spec, signature)
        images = self._examples(served, request.input)
        probabilities, model = await served.class_probabilities(images, "the request's")
        k = model.top_k
        result = pb.ClassificationResult()
        for row in probabilities:
            result.classifications.add(classes=[pb.Class(label=label, score=score)
                                                for label, score in top_k(row, model.labels, k)])
        return pb.ClassificationResponse(model_spec=spec, result=result)

    @staticmethod
    def _examples(served: Served, given: pb.Input) -> list[bytes]:
        kind = given.WhichOneof("kind")
        if kind is None:
            raise ProtocolError(400, 'send input.example_list: tf.Example protos, each with an "image" bytes feature')
        examples = getattr(given, kind).examples
        context = given.example_list_with_context.context.features.feature if kind == "example_list_with_context" \
            else {}
        check_count(len(examples), "the examples")
        images = []
        for number, example in enumerate(examples):
            feature = example.features.feature.get(IMAGE_INPUT) or context.get(IMAGE_INPUT)
            values = list(feature.bytes_list.value) if feature is not None else []
            if len(values) != 1:
                raise ProtocolError(400, f'example {number}: expected one encoded image in the "{IMAGE_INPUT}" '
                                         "feature's bytes_list")
            if len(values[0]) > served.limits.max_bytes:
                raise ProtocolError(413, f"example {number}: the image is larger than the limit of "
                                         f"{served.limits.max_bytes} bytes")
            images.append(values[0])
        return images

    async def get_model_metadata(self, request: pb.GetModelMetadataRequest,
                                 context: Any) -> pb.GetModelMetadataResponse:
        """The signature_def metadata, as TF Serving gives it: a SignatureDefMap packed in an Any."""
        if list(request.metadata_field) != ["signature_def"]:
            raise ProtocolError(400, 'metadata_field must be ["signature_def"], the one metadata this server has')
        spec, served = await self._spec(request.model_spec, "")
        # The REST metadata's signatures are the JSON form of these same messages.
        defs = json_format.ParseDict({"signature_def": signatures(served)}, pb.SignatureDefMap())
        packed = any_pb2.Any(type_url=SIGNATURE_DEF_MAP_URL, value=defs.SerializeToString())
        return pb.GetModelMetadataResponse(model_spec=spec, metadata={"signature_def": packed})

    async def get_model_status(self, request: pb.GetModelStatusRequest, context: Any) -> pb.GetModelStatusResponse:
        """The version that serves: AVAILABLE once the warm-up has gone through, LOADING until then."""
        _, served = await self._spec(request.model_spec, "", load=False)
        state = pb.ModelVersionStatus.AVAILABLE if served.health.ready else pb.ModelVersionStatus.LOADING
        return pb.GetModelStatusResponse(model_version_status=[pb.ModelVersionStatus(
            version=int(served.version), state=state, status=pb.StatusProto(error_code=pb.StatusProto.OK))])

    async def handle_reload_config_request(self, request: pb.ReloadConfigRequest,
                                           context: Any) -> pb.ReloadConfigResponse:
        """The model list replaced, as TF Serving's ModelService does: an admin action. A relative base_path is
        taken from the server's working folder."""
        try:
            confs = await asyncio.to_thread(models_of, request.config, Path.cwd(), "HandleReloadConfigRequest")
        except ConfError as exc:
            raise ProtocolError(400, str(exc)) from None
        await admin_action(self.models, context, self.models.reconfigure, confs)
        return pb.ReloadConfigResponse(status=pb.StatusProto(error_code=pb.StatusProto.OK))


def _shape(tensor: pb.TensorProto) -> list[int]:
    return [int(dim.size) for dim in tensor.tensor_shape.dim]


def _dtype_name(dtype: int) -> str:
    try:
        return pb.DataType.Name(dtype)
    except ValueError:
        return f"data type {dtype}"


def handlers(models: Catalog) -> list[grpc.GenericRpcHandler]:
    service = TFServing(models)
    return [method_table(PREDICTION_SERVICE, {
        "Predict": (service.predict, pb.PredictRequest, pb.PredictResponse),
        "Classify": (service.classify, pb.ClassificationRequest, pb.ClassificationResponse),
        "GetModelMetadata": (service.get_model_metadata, pb.GetModelMetadataRequest, pb.GetModelMetadataResponse),
    }), method_table(MODEL_SERVICE, {
        "GetModelStatus": (service.get_model_status, pb.GetModelStatusRequest, pb.GetModelStatusResponse),
        "HandleReloadConfigRequest": (service.handle_reload_config_request, pb.ReloadConfigRequest,
                                      pb.ReloadConfigResponse)})]
