"""Existing clients against a real server: tritonclient (KServe v2 REST) and TF Serving REST requests."""
from __future__ import annotations

import base64
import gzip
import json
import shutil

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import COLOURS, encode, solid, write_colour_graph, write_conf
from in_process import InProcessServer

MODEL = "checkpoint_dir"  # the default model's name: its folder's


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)


def bytes_input(bodies: list[bytes], binary: bool) -> triton.InferInput:
    """Encoded images as tritonclient sends them: raw in binary mode; base64 text in JSON (which has no bytes)."""
    tensor = triton.InferInput("image", [len(bodies)], "BYTES")
    tensor.set_data_from_numpy(np.array(bodies if binary else [base64.b64encode(b) for b in bodies], dtype=object),
                               binary_data=binary)
    return tensor


def pixels(body: bytes, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """The tensor the model's own preprocess makes: float32 [H, W, 3] RGB in [0, 1]."""
    from classifier import images

    return images.to_tensor(images.decode(body), size)


def test_v2_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("image", "BYTES", (-1,)), ("pixels", "FP32", (-1, 224, 224, 3))}
    assert ("probabilities", "FP32", (-1, 1000)) in {(o["name"], o["datatype"], tuple(o["shape"]))
                                                     for o in metadata["outputs"]}
    assert not client.is_model_ready("another_model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_images_as_service_does(client, photo_bytes, expected, binary):
    names = sorted(photo_bytes)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
               triton.InferRequestedOutput("labels", binary_data=binary)]
    result = client.infer(MODEL, [bytes_input([photo_bytes[n] for n in names], binary)], outputs=outputs,
                          request_id="batch-1")
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities.shape == (len(names), 1000) and labels.shape == (len(names), 5)
    assert result.get_response()["id"] == "batch-1"
    for row, top, name in zip(probabilities, labels, names):
        top = [label.decode() if isinstance(label, bytes) else label for label in top]
        assert top == [label for label, _ in expected[name]], name
        assert row.max() == pytest.approx(expected[name][0][1], abs=1e-5)
        assert row.sum() == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_a_ready_tensor(client, photo_bytes, expected, binary):
    names = ["cat.jpeg", "coffee.jpeg", "rocket.jpg"]
    tensor = triton.InferInput("pixels", [3, 224, 224, 3], "FP32")
    tensor.set_data_from_numpy(np.stack([pixels(photo_bytes[n]) for n in names]), binary_data=binary)
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    probabilities = client.infer(MODEL, [tensor]).as_numpy("probabilities")
    for row, name in zip(probabilities, names):  # the server's own preprocess, done here: the same answer
        assert row.max() == pytest.approx(expected[name][0][1], abs=1e-4), name


def test_v2_classification_extension_and_gzip(client, photo_bytes, expected):
    output = triton.InferRequestedOutput("probabilities", binary_data=False, class_count=3)
    result = client.infer(MODEL, [bytes_input([photo_bytes["cat.jpeg"]], True)], outputs=[output],
                          request_compression_algorithm="gzip")
    [[first, second, third]] = result.as_numpy("probabilities")
    value, index, label = first.split(":", 2)
    assert label == expected["cat.jpeg"][0][0] and float(value) == pytest.approx(expected["cat.jpeg"][0][1], abs=1e-5)
    assert int(index) in range(1000) and second.split(":", 2)[2] == expected["cat.jpeg"][1][0]


def assert_refused(call, status: str, words: str) -> None:
    with pytest.raises(InferenceServerException) as refused:
        call()
    assert refused.value.status() == status and words in refused.value.message(), refused.value.message()


def test_v2_errors_in_the_protocols_format(client, server, photo_bytes):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    assert_refused(lambda: client.infer(MODEL, [bytes_input([b"not a photo"], True)]), "400", "image 0")
    assert_refused(lambda: client.infer(MODEL, [bytes_input([photo_bytes["cat.jpeg"], svg], False)]), "415",
                   "image 1")
    assert_refused(lambda: client.infer("flowers", [bytes_input([photo_bytes["cat.jpeg"]], True)]), "404",
                   "unknown model 'flowers'")
    assert_refused(lambda: client.infer(MODEL, [bytes_input([photo_bytes["cat.jpeg"]], True)], model_version="7"),
                   "404", "version 7")
    wrong_shape = triton.InferInput("pixels", [1, 32, 32, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.float32))
    assert_refused(lambda: client.infer(MODEL, [wrong_shape]), "400", "[N, 224, 224, 3]")
    assert_refused(lambda: client.infer(MODEL, [bytes_input([photo_bytes["cat.jpeg"]] * 33, True)]), "400",
                   "at most 32")
    unknown = triton.InferRequestedOutput("logits")
    assert_refused(lambda: client.infer(MODEL, [bytes_input([photo_bytes["cat.jpeg"]], True)], outputs=[unknown]),
                   "400", "unknown output 'logits'")
    too_big = np.array([b"\xff" * (20 * 1024 * 1024 + 1)], dtype=object)
    big_input = triton.InferInput("image", [1], "BYTES")
    big_input.set_data_from_numpy(too_big)
    assert_refused(lambda: client.infer(MODEL, [big_input]), "413", "larger than the limit")
    # What tritonclient never sends, but a hand-written client might: each refused in the protocol's JSON.
    infer = f"{server.url}/v2/models/{MODEL}/infer"
    for body, headers, status, words in [
            (b"{not json", {}, 400, "not valid JSON"),
            (json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}), {},
             400, "not valid base64"),
            (json.dumps({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}), {},
             400, "holds 2 images"),
            (json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "INT8", "data": [1]}]}), {},
             400, "datatype BYTES"),
            (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, 400, "Inference-Header-Content-Length"),
            (gzip.compress(b"x" * (70 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413, "decompressed")]:
        answer = requests.post(infer, data=body, headers=headers, timeout=60)
        assert answer.status_code == status and words in answer.json()["error"], answer.text


def test_tf_serving_status_and_metadata(server):
    status = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    metadata = requests.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    predict = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert predict["inputs"]["image"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in predict["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "1000"]
    assert requests.get(f"{server.url}/v1/models/{MODEL}/versions/2", timeout=10).status_code == 404


def test_tf_serving_predict_and_classify_as_service_does(server, photo_bytes, expected):
    names = sorted(photo_bytes)
    b64 = [{"b64": base64.b64encode(photo_bytes[n]).decode()} for n in names]
    url = f"{server.url}/v1/models/{MODEL}"
    rows = requests.post(f"{url}:predict", json={"instances": b64}, timeout=120).json()["predictions"]
    columns = requests.post(f"{url}/versions/1:predict", json={"inputs": {"image": b64}}, timeout=120).json()
    named_rows = requests.post(f"{url}:predict", json={"instances": [{"image": b} for b in b64]}, timeout=120).json()
    classified = requests.post(f"{url}:classify", json={"examples": [{"image": b} for b in b64]}, timeout=120).json()
    for number, name in enumerate(names):
        top = int(np.argmax(rows[number]))
        assert rows[number][top] == pytest.approx(expected[name][0][1], abs=1e-5), name
        assert columns["outputs"][number] == rows[number] == named_rows["predictions"][number]
        assert [label for label, _ in classified["results"][number]] == [label for label, _ in expected[name]]
    # Float tensors, in both formats.
    tensors = [pixels(photo_bytes[n]).tolist() for n in ("cat.jpeg", "coffee.jpeg")]
    as_rows = requests.post(f"{url}:predict", json={"instances": tensors}, timeout=120).json()["predictions"]
    as_columns = requests.post(f"{url}:predict", json={"inputs": {"pixels": tensors}}, timeout=120).json()["outputs"]
    for row, column, name in zip(as_rows, as_columns, ("cat.jpeg", "coffee.jpeg")):
        assert max(row) == pytest.approx(expected[name][0][1], abs=1e-4) and column == pytest.approx(row, abs=1e-6)


def test_tf_serving_errors(server, photo_bytes):
    url = f"{server.url}/v1/models/{MODEL}"
    b64 = {"b64": base64.b64encode(photo_bytes["cat.jpeg"]).decode()}
    svg = {"b64": base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>').decode()}
    for path, body, status, words in [
            (":predict", {"instances": [b64], "inputs": [b64]}, 400, "not both"),
            (":predict", {"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
            (":predict", {"instances": [b64, [[[0.0, 0.0, 0.0]]]]}, 400, "every instance"),
            (":predict", {"instances": [[[[0.0, 0.0, 0.0]]]]}, 400, "[N, 224, 224, 3]"),
            (":predict", {"instances": [b64], "signature_name": "other"}, 400, "signature 'other'"),
            (":predict", {"instances": [svg]}, 415, "SVG"),
            (":classify", {"examples": [{"photo": b64}]}, 400, "example 0"),
            (":regress", {"examples": []}, 404, "no such method"),
            ("/versions/3:predict", {"instances": [b64]}, 404, "version 3"),
            ("x:predict", {"instances": [b64]}, 404, "unknown model")]:
        answer = requests.post(url + path, json=body, timeout=60)
        assert answer.status_code == status and words in answer.json()["error"], (path, answer.text)
    assert requests.post(f"{url}:predict", data=b"{oops", timeout=10).status_code == 400
    too_big = requests.post(f"{url}:predict", data=b"x" * (64 * 1024 * 1024 + 1), timeout=60)
    assert too_big.status_code == 413


def test_protocols_are_counted_by_prefix(server, client):
    client.is_server_ready()
    assert requests.get(f"{server.url}/v1/models/checkpoint_dir", timeout=10).status_code == 200
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text  # this process's: its own calls, made above
    # Labelled by the route's prefix, and by the model it names (/v2/health/ready names none).
    assert 'classifier_requests_total{endpoint="/v2",model="",status="200"}' in metrics
    assert 'classifier_requests_total{endpoint="/v1",model="checkpoint_dir",status="200"}' in metrics


def test_name_versions_auth_and_reload(tmp_path):
    """conf's model_name, the version folder that serves, --auth, and a new version swapped in by reload."""
    for version in (1, 2):
        write_colour_graph(tmp_path / "colours" / str(version))
    conf = write_conf(tmp_path, model_dir="colours")
    data = json.loads(conf.read_text())
    data["http_server"]["model_name"] = "paint"
    conf.write_text(json.dumps(data))
    running = InProcessServer("--conf", str(conf), "--auth", "ann:s3cret")
    try:
        def login() -> dict:  # a new dict each call: tritonclient adds its own headers to the one it is given
            return {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}

        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        assert client.is_server_ready()  # probes need no login
        assert_refused(lambda: client.get_model_metadata("paint"), "401", "authentication required")
        assert client.get_model_metadata("paint", headers=login())["versions"] == ["2"]
        assert client.is_model_ready("paint", "2", headers=login()) and not client.is_model_ready("paint", "1",
                                                                                                headers=login())
        tensor = triton.InferInput("pixels", [3, 8, 8, 3], "FP32")
        tensor.set_data_from_numpy(np.stack([np.asarray(solid(c, (8, 8)), np.float32) / 255 for c in COLOURS]))
        labels = client.infer("paint", [tensor], outputs=[triton.InferRequestedOutput("labels")], headers=login(),
                              model_version="2").as_numpy("labels")
        assert [row[0].decode() for row in labels] == COLOURS
        red = {"b64": base64.b64encode(encode(solid("red"))).decode()}
        assert requests.post(f"{running.url}/v1/models/paint:classify", json={"examples": [{"image": red}]},
                             timeout=30).status_code == 401
        answer = requests.post(f"{running.url}/v1/models/paint/versions/2:classify",
                               json={"examples": [{"image": red}]}, headers=login(), timeout=30).json()
        assert answer["results"][0][0][0] == "red"

        shutil.copytree(tmp_path / "colours" / "2", tmp_path / "colours" / "3")
        assert requests.post(f"{running.url}/admin/reload", headers=login(), timeout=120).status_code == 200
        status = requests.get(f"{running.url}/v1/models/paint", headers=login(), timeout=10).json()
        assert status["model_version_status"][0]["version"] == "3"
        assert client.get_model_metadata("paint", headers=login())["versions"] == ["3"]
    finally:
        running.stop()


def test_model_name_in_conf(tmp_path):
    from classifier import ConfError, JsonConfLoader

    exec_ = {"main_class": "RetrainedClassificationModel", "main_file": "retrain_inference"}
    conf = {"http_server": {"exec": exec_, "tensorflow": {"model_dir": "./my flowers/"}}}
    assert JsonConfLoader(conf).get_model_name() == "my-flowers"
    conf["http_server"]["model_name"] = "flowers-v2.1"
    assert JsonConfLoader(conf).get_model_name() == "flowers-v2.1"
    for bad in ("a/b", "../x", "", "name with spaces"):
        conf["http_server"]["model_name"] = bad
        with pytest.raises(ConfError, match="model_name"):
            JsonConfLoader(conf)


def test_a_uai_class_says_it_has_no_probabilities(tmp_path, photo_bytes):
    """A UAI-style class (execute() only) is listed, and a request for probabilities gets a clear 400."""
    (tmp_path / "labels_only.py").write_text(
        "from classifier import TFAiUcloudModel\n"
        "class LabelsOnly(TFAiUcloudModel):\n"
        "    def load_model(self):\n        return None\n"
        "    def execute(self, data, batch_size):\n        return [['thing', 1.0] for _ in data]\n")
    (tmp_path / "model").mkdir()
    conf = write_conf(tmp_path, main_file="labels_only", main_class="LabelsOnly")
    running = InProcessServer("--conf", str(conf))
    try:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        metadata = client.get_model_metadata("model")
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert_refused(lambda: client.infer("model", [bytes_input([photo_bytes["cat.jpeg"]], True)]), "400",
                       "has only execute()")
    finally:
        running.stop()
