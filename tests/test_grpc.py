"""The gRPC port against real clients: tritonclient.grpc (KServe v2), TF Serving's own stubs, grpc.health.v1."""
from __future__ import annotations

import base64
import queue
import re
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import AUTH, CAT_LABELS, ROOT

MODEL = "checkpoint_dir"
LIMIT = 20 * 1024 * 1024  # the default model's image limit (conf's limits: images.Limits.max_bytes)


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.grpc_target)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


def image_input(bodies: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(bodies)], "BYTES")
    tensor.set_data_from_numpy(np.array(bodies, dtype=object))
    return tensor


def top_label(target: str, body: bytes, headers: dict | None = None) -> str:
    """The first label tritonclient.grpc gets for one encoded image (also the Docker test's gRPC check)."""
    result = triton.InferenceServerClient(target).infer(MODEL, [image_input([body])], headers=headers,
                                                        outputs=[triton.InferRequestedOutput("labels")])
    return result.as_numpy("labels")[0][0].decode()


def grpc_error(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call(*args, **kwargs)
    return raised.value


def streamed(client: triton.InferenceServerClient, bodies: list[bytes]) -> list[tuple]:
    """Each encoded image sent on one ModelStreamInfer stream: (result, error) for each, in the order sent."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for number, body in enumerate(bodies):
            client.async_stream_infer(MODEL, [image_input([body])], request_id=str(number),
                                      outputs=[triton.InferRequestedOutput("labels")])
        return [answers.get(timeout=60) for _ in bodies]
    finally:
        client.stop_stream()


def size_refusals(client: triton.InferenceServerClient) -> tuple[InferenceServerException, ...]:
    """The errors for an image past its limit, and for a message past the server's (the HTTP routes' body limit,
    64 MiB), which grpcio refuses before it is parsed."""
    return (grpc_error(client.infer, MODEL, [image_input([b"\xff\xd8" + bytes(LIMIT)])]),
            grpc_error(client.infer, MODEL, [image_input([bytes(LIMIT)] * 4)]))


def test_kserve_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1") and not client.is_model_ready("another_model")
    assert not client.is_model_ready(MODEL, "2")
    assert {"binary_tensor_data", "classification"} <= set(client.get_server_metadata(as_json=True)["extensions"])
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("image", "BYTES", ("-1",)), ("pixels", "FP32", ("-1", "224", "224", "3"))}
    assert ("probabilities", "FP32", ("-1", "1000")) in {(o["name"], o["datatype"], tuple(o["shape"]))
                                                         for o in metadata["outputs"]}
    assert grpc_error(client.get_model_metadata, "another_model").status() == "StatusCode.NOT_FOUND"


def test_kserve_infers_images_as_service_does(server, client, photo_bytes, expected):
    names = sorted(photo_bytes)
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("labels")]
    result = client.infer(MODEL, [image_input([photo_bytes[n] for n in names])], outputs=outputs,
                          request_id="batch-1")
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities.shape == (len(names), 1000) and labels.shape == (len(names), 5)
    assert result.get_response().id == "batch-1"
    for row, top, name in zip(probabilities, labels, names):
        assert [label.decode() for label in top] == [label for label, _ in expected[name]], name
        assert row.max() == pytest.approx(expected[name][0][1], abs=1e-5)
    # Triton's classification extension; and the images sent in bytes_contents rather than raw_input_contents.
    classified = client.infer(MODEL, [image_input([photo_bytes["cat.jpeg"]])],
                              outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    score, index, label = classified.as_numpy("probabilities")[0][0].decode().split(":", 2)
    assert label == expected["cat.jpeg"][0][0] and float(score) == pytest.approx(expected["cat.jpeg"][0][1], abs=1e-5)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        photo_bytes["rocket.jpg"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert answer.outputs[0].name == "probabilities" and list(answer.outputs[0].shape) == [1, 1000]
    row = np.frombuffer(answer.raw_output_contents[0], "<f4")
    assert row.max() == pytest.approx(expected["rocket.jpg"][0][1], abs=1e-5)


def test_kserve_infers_a_ready_tensor(client, photo_bytes, expected):
    from test_protocols import pixels

    names = ["cat.jpeg", "rocket.jpg"]
    tensor = triton.InferInput("pixels", [2, 224, 224, 3], "FP32")
    tensor.set_data_from_numpy(np.stack([pixels(photo_bytes[n]) for n in names]))
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("labels")])
    assert [row[0].decode() for row in result.as_numpy("labels")] == [expected[n][0][0] for n in names]


def test_kserve_stream_answers_each_request_and_its_errors(client, photo_bytes, expected):
    got = streamed(client, [photo_bytes["cat.jpeg"], b"not an image", photo_bytes["coffee.jpeg"]])
    assert got[0][1] is None and got[0][0].as_numpy("labels")[0][0].decode() == expected["cat.jpeg"][0][0]
    assert got[1][0] is None and "INVALID_ARGUMENT" in str(got[1][1]) and "not a recognised image" in str(got[1][1])
    assert got[2][1] is None and got[2][0].as_numpy("labels")[0][0].decode() == expected["coffee.jpeg"][0][0]


def test_kserve_errors_have_their_codes_and_our_messages(client, photo_bytes):
    bad = grpc_error(client.infer, MODEL, [image_input([b"not an image"])])
    assert bad.status() == "StatusCode.INVALID_ARGUMENT" and "not a recognised image" in bad.message()
    large, huge = size_refusals(client)
    assert large.status() == "StatusCode.RESOURCE_EXHAUSTED" and f"limit of {LIMIT} bytes" in large.message()
    assert huge.status() == "StatusCode.RESOURCE_EXHAUSTED", huge
    assert grpc_error(client.infer, "another_model", [image_input([b"x"])]).status() == "StatusCode.NOT_FOUND"
    many = grpc_error(client.infer, MODEL, [image_input([photo_bytes["cat.jpeg"]] * 33)])
    assert many.status() == "StatusCode.INVALID_ARGUMENT" and "at most 32" in many.message()
    wrong = triton.InferInput("image", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros([1], np.float32))
    assert "must have datatype BYTES" in grpc_error(client.infer, MODEL, [wrong]).message()


def queue_depth_and_ok_images(server) -> tuple[float, float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    depth = float(re.search(r'^classifier_queue_depth\{model="[^"]+"\} (\S+)', text, re.M)[1])
    ok = float(re.search(r'^classifier_images_total\{model="[^"]+",outcome="ok"\} (\S+)', text, re.M)[1])
    return depth, ok


def test_a_call_past_its_deadline_is_cancelled_and_its_images_are_not_run(server, client, photo_bytes):
    _, ok_before = queue_depth_and_ok_images(server)
    late = grpc_error(client.infer, MODEL, [image_input([photo_bytes["cat.jpeg"]] * 32)], client_timeout=0.05)
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED"
    deadline = time.monotonic() + 30
    while (state := queue_depth_and_ok_images(server))[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state[0] == 0, "the cancelled call's images are still queued"
    assert state[1] - ok_before < 32, "every image of the cancelled call was still classified"
    assert top_label(server.grpc_target, photo_bytes["cat.jpeg"]) in CAT_LABELS  # and the server goes on
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(r'classifier_grpc_requests_total\{code="CANCELLED",method="inference.GRPCInferenceService/'
                     r'ModelInfer"\} [1-9]', text)


def tf_serving():
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

    return (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
            prediction_service_pb2_grpc)


def test_tf_serving_stubs_predict_classify_and_describe(channel, photo_bytes, expected):
    import tensorflow as tf

    classification, get_metadata, get_status, model_service, predict, prediction_service = tf_serving()
    stub = prediction_service.PredictionServiceStub(channel)
    names = sorted(photo_bytes)
    request = predict.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([photo_bytes[n] for n in names]))
    answer = stub.Predict(request, timeout=60)
    probabilities = tf.make_ndarray(answer.outputs["probabilities"])
    assert probabilities.shape == (len(names), 1000)
    assert answer.model_spec.name == MODEL and answer.model_spec.version.value == 1
    assert answer.model_spec.signature_name == "serving_default"
    for row, name in zip(probabilities, names):
        assert row.max() == pytest.approx(expected[name][0][1], abs=1e-5), name

    from test_protocols import pixels

    tensor_request = predict.PredictRequest()
    tensor_request.model_spec.name = MODEL
    tensor_request.model_spec.version.value = 1
    tensor_request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels(photo_bytes["cat.jpeg"])[None]))
    row = tf.make_ndarray(stub.Predict(tensor_request, timeout=60).outputs["probabilities"])[0]
    assert row.max() == pytest.approx(expected["cat.jpeg"][0][1], abs=1e-4)

    examples = classification.ClassificationRequest()
    examples.model_spec.name = MODEL
    for name in names:
        examples.input.example_list.examples.add().features.feature["image"].bytes_list.value.append(
            photo_bytes[name])
    result = stub.Classify(examples, timeout=60).result
    for classes, name in zip(result.classifications, names):
        assert [(c.label, pytest.approx(c.score, abs=1e-5)) for c in classes.classes] == \
            [tuple(pair) for pair in expected[name]], name

    asked = get_metadata.GetModelMetadataRequest(metadata_field=["signature_def"])
    asked.model_spec.name = MODEL
    signatures = get_metadata.SignatureDefMap()
    assert stub.GetModelMetadata(asked, timeout=10).metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "classification"}
    image = signatures.signature_def["serving_default"].inputs["image"]
    assert image.dtype == tf.string.as_datatype_enum and [d.size for d in image.tensor_shape.dim] == [-1]

    status = get_status.GetModelStatusRequest()
    status.model_spec.name = MODEL
    [version] = model_service.ModelServiceStub(channel).GetModelStatus(status, timeout=10).model_version_status
    assert version.version == 1 and version.state == get_status.ModelVersionStatus.AVAILABLE

    with pytest.raises(grpc.RpcError) as raised:
        request.model_spec.version.value = 7
        stub.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "version 7" in raised.value.details()
    wrong = predict.PredictRequest()
    wrong.model_spec.name = MODEL
    wrong.inputs["image"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(wrong, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "DT_STRING" in raised.value.details()


def test_health_answers_for_the_server_and_each_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "inference.GRPCInferenceService", "tensorflow.serving.PredictionService"]:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as raised:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_auth_is_asked_of_every_call_but_the_probes(guarded, photo_bytes):
    running, _ = guarded(AUTH)
    client = triton.InferenceServerClient(running.grpc_target)
    assert client.is_server_live() and client.is_server_ready()  # probes, as /v2/health/* are
    with grpc.insecure_channel(running.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    refused = grpc_error(client.infer, MODEL, [image_input([photo_bytes["cat.jpeg"]])])
    assert refused.status() == "StatusCode.UNAUTHENTICATED"
    wrong = {"authorization": "Basic " + base64.b64encode(b"someone:else").decode()}
    assert grpc_error(client.get_model_metadata, MODEL, headers=wrong).status() == "StatusCode.UNAUTHENTICATED"
    login = {"authorization": "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()}
    assert top_label(running.grpc_target, photo_bytes["cat.jpeg"], login) in CAT_LABELS
    for headers, refused in ((None, True), (login, False)):  # a stream too, refused or answered
        answers: queue.Queue = queue.Queue()
        stream = triton.InferenceServerClient(running.grpc_target)
        stream.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        try:
            stream.async_stream_infer(MODEL, [image_input([photo_bytes["cat.jpeg"]])])
            result, error = answers.get(timeout=60)
        except InferenceServerException as exc:  # the refusal arrived before the request was queued
            result, error = None, exc
        finally:
            stream.stop_stream()
        assert (error is not None and result is None) if refused else (error is None and result is not None)


def test_a_taken_grpc_port_stops_start_up_with_a_clear_message(server):
    started = time.monotonic()
    run = subprocess.run([sys.executable, "app.py", "--port", "0", "--grpc-port", str(server.grpc_port)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"the gRPC port {server.grpc_port} is in use" in run.stderr and "--grpc-port 0" in run.stderr
    print(f"\nrefused in {time.monotonic() - started:.1f} s")


def same_wire_form(ours, theirs, path: str = "") -> list[str]:
    """Where our message (a descriptor) differs from the real one on the wire: a field of ours that theirs lacks,
    or numbers or types otherwise (theirs may have more: a client's extra fields are skipped as unknown)."""
    differences = []
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        where = f"{path}{ours.name}.{field.name}"
        if other is None or (other.number, other.type, other.is_repeated) != \
                (field.number, field.type, field.is_repeated):
            differences.append(where)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name != "google.protobuf.Any":
            differences += same_wire_form(field.message_type, other.message_type, where + ">")
        elif field.type == FieldDescriptor.TYPE_ENUM:
            theirs_values = {v.name: v.number for v in other.enum_type.values}
            differences += [f"{where}={v.name}" for v in field.enum_type.values
                            if theirs_values.get(v.name) != v.number]
    return differences


def test_our_messages_are_wire_compatible_with_the_clients_own():
    from classifier.serving.protos import open_inference_pb2 as kserve
    from classifier.serving.protos import tf_serving_pb2 as ours

    classification, get_metadata, get_status, _, predict, _ = tf_serving()
    theirs = {name: service_pb2 for name in ("ModelInferRequest", "ModelInferResponse", "ModelStreamInferResponse",
                                             "ModelMetadataRequest", "ModelMetadataResponse", "ModelReadyRequest",
                                             "ServerMetadataResponse", "ServerReadyResponse", "ServerLiveResponse")}
    differences = [d for name, module in theirs.items()
                   for d in same_wire_form(getattr(kserve, name).DESCRIPTOR, getattr(module, name).DESCRIPTOR)]
    for module, names in [(predict, ["PredictRequest", "PredictResponse"]),
                          (classification, ["ClassificationRequest", "ClassificationResponse"]),
                          (get_metadata, ["GetModelMetadataRequest", "GetModelMetadataResponse", "SignatureDefMap"]),
                          (get_status, ["GetModelStatusRequest", "GetModelStatusResponse"])]:
        differences += [d for name in names
                        for d in same_wire_form(getattr(ours, name).DESCRIPTOR, getattr(module, name).DESCRIPTOR)]
    assert differences == []


def test_readmes_grpc_example_runs_as_written(server, capsys):
    """README's Python block for gRPC, pointed at this server's port: both clients print the cat's class (285)."""
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tritonclient.grpc" in b]
    exec(compile(block.replace("localhost:8500", server.grpc_target).replace('"examples/', f'"{ROOT}/examples/'),
                 "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["285", "285"]
