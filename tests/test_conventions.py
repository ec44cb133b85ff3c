"""Models fed the way they were trained: input_mean/input_std/resize, the model's own word, .tflite and Keras 2
.h5 files, Teachable Machine's labels. Each model is built here with a known right answer, and each test also
shows the wrong convention giving another answer (so it can fail)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import classifier
from conftest import CAT_LABELS, COLOURS, PHOTOS, ROOT, encode, solid, write_conf
from in_process import InProcessServer

tf = pytest.importorskip("tensorflow")
CAT = (PHOTOS / "cat.jpeg").read_bytes()


def top(model, body: bytes) -> str:
    return model.execute([body], 1)[0][0][0]


def default_graph_def():
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((ROOT / "checkpoint_dir" / "frozen_inference_graph.pb").read_bytes())
    return graph_def


def wrapped_default(transform, dtype=tf.float32):
    """The default model behind `transform`: a graph whose input is what `transform` turns into [0, 1]."""
    graph_def = default_graph_def()

    def build(images):
        scaled = transform(tf.cast(images, tf.float32))
        [out] = tf.compat.v1.import_graph_def(graph_def, input_map={"Placeholder:0": scaled},
                                              return_elements=["final_result:0"], name="base")
        return tf.identity(out, name="final_result")

    return tf.compat.v1.wrap_function(build, [tf.TensorSpec([None, 224, 224, 3], dtype, name="Placeholder")])


def default_model_folder(folder: Path, transform) -> Path:
    """A frozen graph of the default model that expects another input range, with the default labels."""
    folder.mkdir(parents=True)
    function = wrapped_default(transform)
    (folder / "frozen_inference_graph.pb").write_bytes(function.graph.as_graph_def().SerializeToString())
    (folder / "label_map.txt").write_bytes((ROOT / "checkpoint_dir" / "label_map.txt").read_bytes())
    return folder


def conf_for(folder: Path, **keys) -> Path:
    return write_conf(folder.parent, model_dir=folder.name, size=224, runtime="tensorflow", **keys)


@pytest.mark.parametrize("name, transform, keys, describe, photo", [
    ("0-255", lambda x: x / 255.0, {"input_mean": 0, "input_std": 1}, "input [0, 255]", "cat.jpeg"),
    # EfficientNet still sees the cat in a photo washed out to [0.5, 1]; the rocket it does not.
    ("-1-1", lambda x: (x + 1.0) / 2.0, {"input_mean": 127.5, "input_std": 127.5}, "input [-1, 1]", "rocket.jpg"),
    # PyTorch's per-channel ImageNet normalisation (torchvision, timm), in conf's 0–255 units.
    ("imagenet", lambda x: x * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406],
     {"input_mean": [123.675, 116.28, 103.53], "input_std": [58.395, 57.12, 57.375]}, "input (x − [123.7, 116.3, 103.5])",
     "rocket.jpg")])
def test_input_mean_and_std(tmp_path, default_model, name, transform, keys, describe, photo):
    body = (PHOTOS / photo).read_bytes()
    expected = top(default_model, body)  # the wrapped model, fed right, is the default model
    folder = default_model_folder(tmp_path / "model", transform)
    right = classifier.load(conf_for(folder, **keys))
    assert top(right, body) == expected and describe in right.describe()
    wrong = classifier.load(conf_for(folder))  # the default, [0, 1]
    assert top(wrong, body) != expected


def test_a_uint8_tflite_gets_raw_pixels_and_its_packed_labels(tmp_path):
    """A .tflite with uint8 input (as quantized exports take) and its labels packed inside, as TFLite metadata
    writers pack them (tflite-support, the metadata writer, pins protobuf < 4 and cannot install beside
    TensorFlow 2.21; the packing is a zip appended to the model, which is what its writer does)."""
    function = wrapped_default(lambda x: x / 255.0, tf.uint8)
    flat = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module()).convert()
    folder = tmp_path / "model"
    folder.mkdir()
    with open(folder / "classifier.tflite", "wb") as f:
        f.write(flat)
    with zipfile.ZipFile(folder / "classifier.tflite", "a") as packed:
        packed.writestr("labels.txt", (ROOT / "checkpoint_dir" / "label_map.txt").read_text())
    model = classifier.load(write_conf(tmp_path, size=224))
    assert model.runtime.format == "TFLite" and "input uint8 0–255" in model.describe()
    assert model.preprocess(CAT).dtype == np.uint8 and top(model, CAT) in CAT_LABELS
    scaled_twice = (model.preprocess(CAT) / 255).astype(np.uint8)  # what [0, 1] floats would have become
    assert model.labels[int(np.argmax(model.forward(scaled_twice[None])[0]))] not in CAT_LABELS


def test_centre_crop(tmp_path):
    """Coffee, the cat, coffee, side by side: only the centre crop sees the cat alone."""
    coffee = Image.open(PHOTOS / "coffee.jpeg").convert("RGB").resize((224, 224))
    wide = Image.new("RGB", (672, 224))
    for left, part in ((0, coffee), (224, Image.open(PHOTOS / "cat.jpeg").convert("RGB").resize((224, 224))),
                       (448, coffee)):
        wide.paste(part, (left, 0))
    body = encode(wide, "JPEG", quality=95)
    cropped = classifier.load(conf_for_default(tmp_path / "a", resize="center_crop"))
    assert top(cropped, body) in CAT_LABELS and "centre crop" in cropped.describe()
    assert top(classifier.load(conf_for_default(tmp_path / "b")), body) not in CAT_LABELS


def conf_for_default(folder: Path, **keys) -> Path:
    folder.mkdir(parents=True)
    return write_conf(folder, model_dir=str(ROOT / "checkpoint_dir"), size=224, **keys)


def brightness_model(first_layer=None):
    """A tiny Keras model: "dark" or "bright" from the mean pixel against the middle of [0, 1]."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = first_layer(inputs) if first_layer is not None else inputs
    mean = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[-20, 20]] * 3),
                                bias_initializer=keras.initializers.Constant([30, -30]))(mean)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_a_keras_model_that_rescales_its_input_gets_0_255(tmp_path, caplog):
    import keras

    folder = tmp_path / "model"
    folder.mkdir()
    brightness_model(keras.layers.Rescaling(1 / 255)).save(folder / "model.keras")
    (folder / "labels.txt").write_text("dark\nbright\n")
    light_grey = encode(Image.new("RGB", (8, 8), (200, 200, 200)))
    with caplog.at_level("INFO"):
        model = classifier.load(write_conf(tmp_path))
    assert "its Rescaling layer takes pixels 0–255" in caplog.text and "input [0, 255]" in model.describe()
    assert top(model, light_grey) == "bright"
    overridden = classifier.load(write_conf(tmp_path, input_std=255))  # conf's word wins: here, wrongly
    assert "input [0, 1]" in overridden.describe() and top(overridden, light_grey) == "dark"


def keras2_h5(path: Path) -> None:
    """A Keras 2 .h5 as Teachable Machine writes it: a DepthwiseConv2D whose config carries "groups", which
    Keras 3 refuses; inside, a colour classifier: the mean of each channel, ×20, is that colour's logit."""
    import h5py
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(1, depthwise_initializer="ones", use_bias=False)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Constant(
        np.eye(3) * 20), bias_initializer="zeros")(x)
    keras.Model(inputs, outputs).save(path)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"]["groups"] = 1
        h5.attrs["model_config"] = json.dumps(config)


def test_a_teachable_machine_keras2_h5_with_its_labels_txt(tmp_path, caplog):
    import keras

    folder = tmp_path / "model"
    folder.mkdir()
    keras2_h5(folder / "keras_model.h5")
    with pytest.raises(Exception, match="groups"):  # what Keras 3 alone does with such a file
        keras.saving.load_model(folder / "keras_model.h5", compile=False)
    (folder / "labels.txt").write_text("0 red\n1 green\n2 blue\n")
    with caplog.at_level("INFO"):
        model = classifier.load(write_conf(tmp_path))
    assert model.labels == COLOURS and model.runtime.format == "Keras .h5"
    assert "Teachable Machine export" in caplog.text and "input [-1, 1], centre crop" in model.describe()
    assert [top(model, encode(solid(colour))) for colour in COLOURS] == COLOURS


def test_an_int8_tflite_with_a_labels_file(tmp_path):
    """A fully int8-quantized .tflite (int8 input and output, post-training calibration) and a labels file."""
    from conftest import colour_logits

    function = tf.function(lambda images: tf.nn.softmax(colour_logits(images))).get_concrete_function(
        tf.TensorSpec([1, 8, 8, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.random((1, 8, 8, 3), dtype=np.float32)] for _ in range(50))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(converter.convert())
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    model = classifier.load(write_conf(tmp_path))
    assert [top(model, encode(solid(colour))) for colour in COLOURS] == COLOURS
    probabilities = model.forward(model.preprocess(encode(solid("red")))[None])[0]
    assert probabilities.dtype == np.float32 and probabilities.sum() == pytest.approx(1, abs=0.05)


def test_conf_keys_are_checked(tmp_path):
    for keys, words in [({"resize": "stretch"}, "resize must be one of"), ({"input_std": 0}, "positive number"),
                        ({"input_mean": "x"}, "input_mean must be a number"),
                        ({"input_mean": [1, 2]}, "a list of 3 .R, G, B., not a list of 2"),
                        ({"input_std": [58, 0, 57]}, "must hold positive numbers, not 0")]:
        with pytest.raises(classifier.ConfError, match=words):
            classifier.load(write_conf(tmp_path, **keys))


def test_served_with_its_convention(tmp_path):
    """Through /service: the [-1, 1] model with its conf answers "cat", and the page names its convention."""
    folder = default_model_folder(tmp_path / "model", lambda x: (x + 1.0) / 2.0)
    running = InProcessServer("--conf", str(conf_for(folder, input_mean=127.5, input_std=127.5)))
    try:
        answer = requests.post(f"{running.url}/service", data=CAT, timeout=60).json()
        assert answer[0][0] in CAT_LABELS
        assert "224×224 input [-1, 1]" in classifier.describe(running.model)
    finally:
        running.stop()


def uint8_colour_model(folder: Path, kind: str) -> Path:
    """The colour model behind a uint8 input [None, 8, 8, 3], as TF Serving exports take images: a SavedModel's
    serving_default, or a frozen graph's Placeholder."""
    from conftest import colour_logits

    folder.mkdir(parents=True)
    (folder / "label_map.txt").write_text("\n".join(COLOURS) + "\n")

    def scores(images):
        return tf.nn.softmax(colour_logits(tf.cast(images, tf.float32) / 255.0), name="final_result")

    return exported(folder, kind, scores, tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="Placeholder"))


def exported(folder: Path, kind: str, scores, spec) -> Path:
    """scores(images) saved in folder as kind says: a SavedModel's serving_default, or a frozen graph whose
    Placeholder is spec."""
    if kind == "SavedModel":
        module = tf.Module()
        module.serve = tf.function(lambda images: {"scores": scores(images)}, input_signature=[spec])
        tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    else:
        graph = tf.compat.v1.wrap_function(scores, [spec]).graph.as_graph_def()
        (folder / "frozen_inference_graph.pb").write_bytes(graph.SerializeToString())
    return folder


@pytest.mark.parametrize("kind", ["SavedModel", "frozen graph"])
def test_a_uint8_input_model_gets_raw_pixels_from_every_engine(tmp_path, kind):
    """Before, a uint8 SavedModel failed at load ("Expects arg[0] to be uint8 but float is provided")."""
    uint8_colour_model(tmp_path / "model", kind)
    model = classifier.load(write_conf(tmp_path, runtime="auto"))
    assert model.runtime.format == kind and "input uint8 0–255" in model.describe()
    assert model.preprocess(encode(solid("red"))).dtype == np.uint8
    assert [r[0][0] for r in model.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS
    assert model.runtime.engine.startswith(("LiteRT", "OpenVINO"))  # converted with the uint8 input, and agreeing
    record = json.loads(next((tmp_path / "model" / ".litert").glob("*.json")).read_text())
    [decision] = record["decisions"].values()
    assert {"litert fp32", "openvino fp32"} <= set(decision["candidates"])  # both engines took uint8 and agreed


def batch_one_colour_model(folder: Path, kind: str, batch: int = 1) -> Path:
    """The colour model exported with its batch fixed, as many exports are: its input [batch, 8, 8, 3], and a
    Flatten written as a Reshape to [batch, …] inside, which fails on any other batch."""
    folder.mkdir(parents=True)
    (folder / "label_map.txt").write_text("\n".join(COLOURS) + "\n")

    def scores(images):
        flat = tf.reshape(images, [batch, 8 * 8 * 3])
        return tf.nn.softmax(tf.reduce_mean(tf.reshape(flat, [batch, 64, 3]), axis=1) * 20.0, name="final_result")

    return exported(folder, kind, scores, tf.TensorSpec([batch, 8, 8, 3], tf.float32, name="Placeholder"))


@pytest.mark.parametrize("kind", ["SavedModel", "frozen graph"])
def test_a_model_with_its_batch_fixed_at_one_is_run_image_by_image_by_every_engine(tmp_path, kind):
    """Before, the frozen graph failed to load (TensorFlow's check fed it several images at once)."""
    batch_one_colour_model(tmp_path / "model", kind)
    model = classifier.load(write_conf(tmp_path, runtime="auto"))
    assert model.runtime.fixed_batch == 1
    assert [r[0][0] for r in model.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS  # one batch of 3
    record = json.loads(next((tmp_path / "model" / ".litert").glob("*.json")).read_text())
    [decision] = record["decisions"].values()
    assert {"litert fp32", "openvino fp32"} <= set(decision["candidates"]) and record["fixed_batch"] == 1
    again = classifier.load(write_conf(tmp_path, runtime="auto"))  # from the record, without TensorFlow's runtime
    assert [r[0][0] for r in again.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


def test_a_model_with_its_batch_fixed_at_more_than_one_is_refused_clearly(tmp_path):
    batch_one_colour_model(tmp_path / "model", "frozen graph", batch=4)
    with pytest.raises(classifier.ModelError, match="takes batches of exactly 4 images; export it with a dynamic"):
        classifier.load(write_conf(tmp_path))
