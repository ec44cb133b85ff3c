"""Models as other tools export them, built here from the shipped default graph: SavedModels that decode the image
themselves (a string input, TF Serving's {"b64": …} form), and ONNX files in PyTorch's layout and normalisation.
Each puts a cat first for the cat photo, and each test also shows the model fed the wrong way answering otherwise."""
from __future__ import annotations

import base64
import json
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import classifier
from classifier import images
from conftest import CAT_LABELS, PHOTOS, ROOT, encode, write_conf
from in_process import InProcessServer

tf = pytest.importorskip("tensorflow")
CAT = (PHOTOS / "cat.jpeg").read_bytes()
ROCKET = (PHOTOS / "rocket.jpg").read_bytes()


def default_graph(images_in_0_1):
    """The default model's probabilities for images in [0, 1] [N, 224, 224, 3] (its frozen graph, imported)."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((ROOT / "checkpoint_dir" / "frozen_inference_graph.pb").read_bytes())
    [out] = tf.compat.v1.import_graph_def(graph_def, input_map={"Placeholder:0": images_in_0_1},
                                          return_elements=["final_result:0"], name="base")
    return out


def with_default_labels(folder: Path) -> Path:
    shutil.copy(ROOT / "checkpoint_dir" / "label_map.txt", folder / "label_map.txt")
    return folder


def encoded_saved_model(folder: Path, scalar: bool = False) -> Path:
    """The default model as an export that decodes its input itself: serving_default(image_bytes: string [None],
    or one string) → probabilities, through tf.io.decode_image and a resize to 224×224 inside."""
    def decoded(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32) / 255.0, [224, 224])

    def probabilities(encoded):
        return default_graph(tf.map_fn(decoded, encoded, fn_output_signature=tf.float32))

    graph = tf.compat.v1.wrap_function(probabilities, [tf.TensorSpec([None], tf.string)])
    module = tf.Module()
    module.graph = graph  # tracked: its variables (none; a frozen graph) and its function are saved
    spec = tf.TensorSpec([] if scalar else [None], tf.string, name="image_bytes")
    module.serve = tf.function(lambda image_bytes: {"probabilities": graph(image_bytes[None] if scalar else
                                                                           image_bytes)}, input_signature=[spec])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return with_default_labels(folder)


def sideways(photo: bytes) -> bytes:
    """The photo stored turned a quarter, with the EXIF orientation that shows it upright (as phones write them)."""
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6  # "rotate 90° clockwise to display"
    return encode(Image.open(io.BytesIO(photo)).convert("RGB").transpose(Image.Transpose.ROTATE_90), "JPEG",
                  quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """A conf.json serving the string-input SavedModel, with the engine choice left to auto."""
    folder = tmp_path_factory.mktemp("encoded")
    encoded_saved_model(folder / "model")
    return write_conf(folder, size=224)


@pytest.mark.parametrize("scalar", [False, True], ids=["batch of strings", "one string"])
def test_a_saved_model_that_decodes_images_itself_gets_their_bytes(tmp_path, caplog, scalar):
    """Before, a string input was refused at load ("takes string input")."""
    encoded_saved_model(tmp_path / "model", scalar=scalar)
    with caplog.at_level("INFO"):
        model = classifier.load(write_conf(tmp_path, size=224))
    assert model.runtime.format == "SavedModel" and model.runtime.engine == "TensorFlow"
    assert "input encoded image (decoded by the model)" in model.describe()
    assert "decodes the images itself: TensorFlow serves it" in caplog.text
    assert model.runtime.fixed_batch == (1 if scalar else None)

    assert model.preprocess(CAT).item() == CAT  # a plain JPEG goes to the model as it was sent
    damaged = CAT[:len(CAT) // 2]
    cat, broken, rocket, turned = model.execute([CAT, damaged, ROCKET, sideways(ROCKET)], 4)
    assert cat[0][0] in CAT_LABELS
    assert "truncated or damaged" in broken["error"]  # refused here: in the batch, it would have failed all four
    # The phone photo is sent upright (decoded here and sent as PNG), as every other model sees it; its bytes as
    # they are, which the model's own decoder does not turn, give another answer.
    assert turned[0][0] == rocket[0][0]
    as_stored = model.forward(np.array([sideways(ROCKET)], dtype=object))[0]
    assert model.labels[int(as_stored.argmax())] != rocket[0][0]


def test_an_encoded_image_model_served(encoded):
    """The page, its Batch tab, /service, /explain and TF Serving's b64 form serve it; tensor inputs are refused, as
    the model takes none."""
    from gradio_client import Client, handle_file

    running = InProcessServer("--conf", str(encoded))
    try:
        assert "input encoded image (decoded by the model)" in classifier.describe(running.model)
        service = requests.post(f"{running.url}/service", data=CAT, timeout=60).json()
        assert service[0][0] in CAT_LABELS
        client = Client(running.url, verbose=False)
        page = client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
        assert page["label"] == service[0][0]
        gallery, _ = client.predict([handle_file(str(PHOTOS / "cat.jpeg"))], "least confident first",
                                    api_name="/classify_batch")
        assert gallery[0]["caption"].startswith(f"cat.jpeg: {service[0][0]}"), gallery  # the Batch tab
        explained = requests.post(f"{running.url}/explain", data=CAT, timeout=120).json()
        assert explained["label"] == service[0][0] and np.asarray(explained["grid"]).shape == (6, 6)
        assert np.ptp(explained["grid"]) > 0.1  # hiding parts of the photo changed the model's answer
        url = f"{running.url}/v1/models/model"
        b64 = {"instances": [{"b64": base64.b64encode(CAT).decode()}]}
        [row] = requests.post(f"{url}:predict", json=b64, timeout=60).json()["predictions"]
        assert max(row) == pytest.approx(service[0][1], abs=1e-5)
        pixels = {"instances": [np.zeros((2, 2, 3)).tolist()]}
        refused = requests.post(f"{url}:predict", json=pixels, timeout=60)
        assert refused.status_code == 400 and "encoded images only" in refused.json()["error"], refused.text
    finally:
        running.stop()


# PyTorch's per-channel ImageNet normalisation, on [0, 1] pixels, and in conf.json's 0–255 units.
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
IMAGENET = {"input_mean": [123.675, 116.28, 103.53], "input_std": [58.395, 57.12, 57.375]}


def onnx_model(folder: Path, nchw: bool) -> Path:
    """The default model converted to ONNX by tf2onnx. NHWC: as it is, input [N, 224, 224, 3] in [0, 1],
    probabilities out. NCHW: as torch.onnx.export leaves a torchvision model, input [1, 3, 224, 224] (the batch
    fixed at 1, its default) normalised per channel, logits out."""
    tf2onnx = pytest.importorskip("tf2onnx")

    def scores(pixel_values):
        if nchw:
            pixel_values = tf.transpose(pixel_values, [0, 2, 3, 1]) * STD + MEAN
        probabilities = default_graph(pixel_values)
        return tf.identity(tf.math.log(probabilities + 1e-12) if nchw else probabilities, name="scores")

    spec = tf.TensorSpec([1, 3, 224, 224] if nchw else [None, 224, 224, 3], tf.float32, name="pixel_values")
    graph = tf.compat.v1.wrap_function(scores, [spec]).graph.as_graph_def()
    model, _ = tf2onnx.convert.from_graph_def(graph, input_names=["pixel_values:0"], output_names=["scores:0"],
                                              opset=17)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return with_default_labels(folder)


@pytest.fixture(scope="module")
def onnx_folders(tmp_path_factory) -> dict[str, Path]:
    """Both layouts, made once: their engine choices are recorded beside them, as a user's would be."""
    folder = tmp_path_factory.mktemp("onnx")
    return {layout: onnx_model(folder / layout / "model", layout == "NCHW") for layout in ("NHWC", "NCHW")}


def top1(model, photos: list[bytes]) -> list[str]:
    return [result[0][0] for result in model.execute(photos, len(photos))]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_an_onnx_model_is_served_in_its_layout_checked_against_onnx_runtime(onnx_folders, layout, caplog):
    model_dir = onnx_folders[layout]
    convention = IMAGENET if layout == "NCHW" else {}
    conf = write_conf(model_dir.parent, runtime="auto", **convention)  # width 8: the model's 224 wins, as it fixes it
    with caplog.at_level("INFO"):
        model = classifier.load(conf)
    assert model.runtime.format == f"ONNX {layout}" and model.input_size == (224, 224)
    assert model.runtime.fixed_batch == (1 if layout == "NCHW" else None)
    assert ("outputs logits" in caplog.text) == (layout == "NCHW")
    # The choice: OpenVINO, read from the .onnx, agreeing with ONNX Runtime, or ONNX Runtime itself; recorded.
    record = json.loads(next((model_dir / ".litert").glob("*.json")).read_text())
    [decision] = record["decisions"].values()
    assert set(decision["candidates"]) == {"openvino fp32", "onnxruntime fp32"}, decision
    assert decision["candidates"]["openvino fp32"]["max_dp"] < 1e-4 and record["reference"] == "onnxruntime"
    again = classifier.load(conf)
    if decision["engine"] == "openvino":  # served from the record, ONNX Runtime not even loaded
        assert again.runtime.engine == model.runtime.engine
    else:  # the reference chosen (it was faster here): timed again at each start, as TensorFlow is
        assert again.runtime.engine.startswith(("OpenVINO", "ONNX Runtime"))

    reference = classifier.load(write_conf(model_dir.parent, runtime="onnxruntime", **convention))
    assert reference.runtime.engine.startswith("ONNX Runtime")
    cat, rocket = top1(reference, [CAT, ROCKET])
    assert cat in CAT_LABELS and rocket == "drilling platform"
    assert top1(model, [CAT, ROCKET]) == [cat, rocket] and top1(again, [CAT, ROCKET, CAT]) == [cat, rocket, cat]

    # Fed the wrong way, the model answers otherwise: PyTorch's normalisation left out, or given to a [0, 1] model.
    wrong = {} if layout == "NCHW" else IMAGENET
    assert top1(classifier.load(write_conf(model_dir.parent, runtime="onnxruntime", **wrong)), [ROCKET]) != [rocket]


def test_an_onnx_model_served_through_every_door(onnx_folders, tmp_path):
    """NCHW, its batch fixed at 1, in TF Serving's version folders: /service, the page, its Batch tab, /explain,
    KServe v2's tensor input (NHWC, as the model's preprocess makes it) and a reload to a new version."""
    import csv

    from gradio_client import Client, handle_file

    def version(number: int, cat_label: str) -> None:
        folder = tmp_path / "versions" / str(number)
        folder.mkdir(parents=True)
        (folder / "model.onnx").symlink_to(onnx_folders["NCHW"] / "model.onnx")
        names = (onnx_folders["NCHW"] / "label_map.txt").read_text().replace("Egyptian cat\n", f"{cat_label}\n")
        (folder / "label_map.txt").write_text(names)

    version(1, "Egyptian cat")
    conf = write_conf(tmp_path, model_dir="versions", size=224, **IMAGENET)
    running = InProcessServer("--conf", str(conf), "--open-admin")
    try:
        described = classifier.describe(running.model)
        assert "ONNX NCHW · 1000 labels · 224×224 input (x − [123.7, 116.3, 103.5])" in described
        service = requests.post(f"{running.url}/service", files=[("a", CAT), ("b", ROCKET)], timeout=60).json()
        assert service[0][0][0] in CAT_LABELS and service[1][0][0] == "drilling platform", service
        client = Client(running.url, verbose=False)
        page = client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
        assert page["label"] == service[0][0][0]
        _, table = client.predict([handle_file(str(PHOTOS / n)) for n in ("cat.jpeg", "rocket.jpg")],
                                  "least confident first", api_name="/classify_batch")
        with open(table, newline="", encoding="utf-8") as f:
            assert [row["label_1"] for row in csv.DictReader(f)] == [service[0][0][0], service[1][0][0]]
        explained = requests.post(f"{running.url}/explain", data=CAT, timeout=120).json()
        assert explained["label"] == service[0][0][0] and np.ptp(explained["grid"]) > 0.1
        pixels = images.to_tensor(images.decode(CAT), (224, 224), images.InputConvention(
            mean=tuple(IMAGENET["input_mean"]), std=tuple(IMAGENET["input_std"])))
        body = {"inputs": [{"name": "pixels", "shape": [1, 224, 224, 3], "datatype": "FP32",
                            "data": pixels.ravel().tolist()}]}
        answer = requests.post(f"{running.url}/v2/models/versions/infer", json=body, timeout=60).json()
        assert max(answer["outputs"][0]["data"]) == pytest.approx(service[0][0][1], abs=1e-4), answer

        version(2, "cat, version 2")  # the same model, one label renamed: the answer shows which one serves
        reloaded = requests.post(f"{running.url}/admin/reload", timeout=120).json()
        assert reloaded["version"] == 2 and "ONNX NCHW" in reloaded["model"], reloaded
        assert requests.post(f"{running.url}/service", data=CAT, timeout=60).json()[0][0] == "cat, version 2"
    finally:
        running.stop()
