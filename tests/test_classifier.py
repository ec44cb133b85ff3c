"""The classifier package: the default model on real photos, every model format, labels, conf and the UAI contract."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import classifier
from classifier import ConfError, LabelsError, ModelError
from conftest import (CAT_LABELS, COFFEE_LABELS, COLOURS, PHOTOS, ROOT, colour_logits, encode, solid,
                      write_colour_graph, write_conf)


# The default model, on real photos.
@pytest.mark.parametrize("photo, expected", [("chelsea.png", CAT_LABELS), ("cat.jpeg", CAT_LABELS),
                                             ("coffee.png", COFFEE_LABELS)])
def test_default_model_classifies_real_photos(default_model, photo, expected):
    [result] = default_model.execute([(PHOTOS / photo).read_bytes()], 1)
    assert result[0][0] in expected, result
    assert len(result) == 5
    assert all(isinstance(label, str) and type(p) is float for label, p in result)
    assert [p for _, p in result] == sorted((p for _, p in result), reverse=True)


def test_default_model_is_frozen_graph_with_imagenet_labels(default_model):
    assert default_model.runtime.format == "frozen graph"
    assert len(default_model.labels) == 1000 and len(set(default_model.labels)) == 1000
    # The engine is the fastest that agrees with TensorFlow here (tests/test_engines.py).
    assert re.fullmatch(r"frozen graph · 1000 labels · 224×224 input \[0, 1\] · "
                        r"(LiteRT XNNPACK fp32, 2 threads|OpenVINO [\d.]+ CPU fp32, 2 threads|TensorFlow)",
                        default_model.describe())


def test_frozen_graph_read_as_uai_does_matches_execute(default_model, photo_bytes):
    """Plain TF1 API, as UAI code uses it: import the GraphDef, feed Placeholder:0, fetch final_result:0."""
    names = ["chelsea.png", "coffee.jpeg", "motorcycle_left.png"]
    batch = np.stack([default_model.preprocess(photo_bytes[n]) for n in names])
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((ROOT / "checkpoint_dir" / "frozen_inference_graph.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        expected = session.run("final_result:0", {"Placeholder:0": batch})
    results = default_model.execute([photo_bytes[n] for n in names], len(names))
    for row, result in zip(expected, results):
        for label, probability in result:
            assert probability == pytest.approx(row[default_model.labels.index(label)], abs=1e-5)
        assert result[0][0] == default_model.labels[int(row.argmax())]


# execute(): inputs of every kind, real batches, per-item errors.
class Request:
    """What UAI hands execute(): an object whose .body holds the raw bytes."""

    def __init__(self, body: bytes):
        self.body = body


def test_execute_accepts_every_input_kind_and_isolates_bad_items(default_model, photo_bytes):
    cat = photo_bytes["cat.jpeg"]
    items = [cat, io.BytesIO(cat), Request(cat), Image.open(io.BytesIO(cat)), np.asarray(Image.open(io.BytesIO(cat))),
             PHOTOS / "cat.jpeg", b"", b"this is not an image", cat[:len(cat) // 2]]
    results = default_model.execute(items, len(items))
    assert len(results) == len(items)
    top = [r[0][0] for r in results[:6]]
    assert set(top) <= CAT_LABELS and len(set(top)) == 1, top
    for r in results[1:6]:
        assert r[0][1] == pytest.approx(results[0][0][1], abs=1e-5)
    assert results[6] == {"error": "the image is empty (0 bytes)"}
    assert results[7] == {"error": "the data is not a recognised image"}
    assert "truncated or damaged" in results[8]["error"]


def test_execute_runs_real_batches(default_model, photo_bytes, monkeypatch):
    calls = []
    predict = default_model.runtime.predict
    monkeypatch.setattr(default_model.runtime, "predict", lambda batch: calls.append(len(batch)) or predict(batch))
    items = [photo_bytes[n] for n in sorted(photo_bytes)][:5]
    batched = default_model.execute(items, 5)
    assert calls == [5]
    chunked = default_model.execute(items, 2)
    assert calls == [5, 2, 2, 1]
    one_by_one = [default_model.execute([item], 1)[0] for item in items]
    for a, b, c in zip(batched, chunked, one_by_one):
        assert [label for label, _ in a] == [label for label, _ in b] == [label for label, _ in c]
        assert np.allclose([p for _, p in a], [p for _, p in c], atol=1e-5)


# Model formats.
def test_retrain_style_frozen_graph(tmp_path):
    write_colour_graph(tmp_path / "model")
    model = classifier.load(write_conf(tmp_path))
    results = model.execute([encode(solid(c)) for c in COLOURS], 3)
    assert [r[0][0] for r in results] == COLOURS
    assert len(results[0]) == 3  # top_k 5, but only 3 classes


def test_frozen_graph_with_other_names_is_detected(tmp_path):
    write_colour_graph(tmp_path / "model", input_name="images", output_name="probabilities")
    model = classifier.load(write_conf(tmp_path))
    assert model.execute([encode(solid("blue"))], 1)[0][0][0] == "blue"


def test_frozen_graph_ambiguous_input_needs_conf_names(tmp_path):
    write_colour_graph(tmp_path / "model", input_name="images", extra_placeholder=True)
    with pytest.raises(ModelError, match="2 candidate inputs .*input_tensor"):
        classifier.load(write_conf(tmp_path))
    model = classifier.load(write_conf(tmp_path, input_tensor="images:0", output_tensor="final_result"))
    assert model.execute([encode(solid("green"))], 1)[0][0][0] == "green"
    with pytest.raises(ModelError, match="no op named 'nope'"):
        classifier.load(write_conf(tmp_path, input_tensor="nope"))


def test_a_model_that_fixes_its_input_size_wins_over_conf_with_a_warning(tmp_path, caplog):
    write_colour_graph(tmp_path / "model", size=8)
    with caplog.at_level("WARNING"):
        model = classifier.load(write_conf(tmp_path, size=16))
    assert "takes 8×8 images, conf.json says 16×16 (input_width × input_height): the model's size is used" \
        in caplog.text
    assert model.input_size == (8, 8) and model.preprocess(encode(solid("blue", (40, 30)))).shape == (8, 8, 3)
    assert model.execute([encode(solid("blue"))], 1)[0][0][0] == "blue" and "8×8 input" in model.describe()


class ColourModule(tf.Module):
    def __init__(self, logits_only: bool = False):
        super().__init__()
        self.scale = tf.Variable(1.0)
        self.logits_only = logits_only

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="image")])
    def serve(self, image):
        logits = colour_logits(image) * self.scale
        return {"scores": logits if self.logits_only else tf.nn.softmax(logits)}


@pytest.mark.parametrize("logits_only", [False, True])
def test_saved_model(tmp_path, logits_only):
    module = ColourModule(logits_only)
    tf.saved_model.save(module, str(tmp_path / "model"), signatures={"serving_default": module.serve})
    (tmp_path / "model" / "output_labels.txt").write_text("\n".join(COLOURS))
    model = classifier.load(write_conf(tmp_path))
    assert model.runtime.format == "SavedModel" and model.runtime.applies_softmax == logits_only
    results = model.execute([encode(solid(c)) for c in COLOURS], 3)
    assert [r[0][0] for r in results] == COLOURS
    assert sum(p for _, p in results[0]) == pytest.approx(1.0, abs=1e-5)


def test_keras_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.layers[-1].set_weights([np.eye(3, dtype=np.float32) * 20, np.zeros(3, np.float32)])
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / "colours.keras")
    (tmp_path / "model" / "label_map.txt").write_text("\n".join(COLOURS))
    loaded = classifier.load(write_conf(tmp_path))
    assert loaded.runtime.format == "Keras"
    assert [r[0][0] for r in loaded.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


def test_no_model_in_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="no model found .*notes.txt"):
        classifier.load(write_conf(tmp_path))
    (tmp_path / "model" / "frozen_inference_graph.pb").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelError, match="not a TensorFlow GraphDef"):
        classifier.load(write_conf(tmp_path))


# Labels.
@pytest.mark.parametrize("name, text", [
    ("label_map.txt", "red\ngreen\nblue\n"),
    ("output_labels.txt", "red\ngreen\nblue"),
    ("label_map.pbtxt", 'item {\n id: 1\n name: "r"\n display_name: "red"\n}\nitem { id: 3 name: "blue" }\n'
                        "item {\n  name: 'green'\n  id: 2\n}\n"),
    ("label_map.pbtxt", 'item { id: 0 name: "red" } item { id: 1 name: "green" } item { id: 2 name: "blue" }'),
])
def test_label_formats(tmp_path, name, text):
    write_colour_graph(tmp_path / "model")
    (tmp_path / "model" / "label_map.txt").unlink()
    (tmp_path / "model" / name).write_text(text)
    model = classifier.load(write_conf(tmp_path))
    assert model.labels == COLOURS
    assert model.execute([encode(solid("green"))], 1)[0][0][0] == "green"


def test_labels_file_named_in_conf_and_pbtxt_round_trip(tmp_path):
    from classifier.labels import parse_pbtxt, to_pbtxt

    write_colour_graph(tmp_path / "model")
    (tmp_path / "model" / "classes.pbtxt").write_text(to_pbtxt(["rouge", 'vert "clair"', "bleu"]))
    model = classifier.load(write_conf(tmp_path, labels_file="classes.pbtxt"))
    assert model.labels == ["rouge", 'vert "clair"', "bleu"]
    assert parse_pbtxt(to_pbtxt(model.labels)) == model.labels


@pytest.mark.parametrize("text, message", [
    ("red\ngreen\n", "has 2 labels but the model .* outputs 3 classes"),
    ("", "holds no labels"),
])
def test_label_errors(tmp_path, text, message):
    write_colour_graph(tmp_path / "model")
    (tmp_path / "model" / "label_map.txt").write_text(text)
    with pytest.raises(LabelsError, match=message):
        classifier.load(write_conf(tmp_path))


def test_pbtxt_ids_must_be_contiguous(tmp_path):
    from classifier.labels import parse_pbtxt

    with pytest.raises(LabelsError, match="contiguous"):
        parse_pbtxt('item { id: 1 name: "a" } item { id: 3 name: "b" }')
    with pytest.raises(LabelsError, match="twice"):
        parse_pbtxt('item { id: 1 name: "a" } item { id: 1 name: "b" }')


# conf.json.
def test_repo_conf_is_uai_format():
    conf = json.loads((ROOT / "conf.json").read_text())
    assert conf["http_server"]["exec"] == {"main_class": "RetrainedClassificationModel",
                                           "main_file": "retrain_inference"}
    tf_conf = conf["http_server"]["tensorflow"]
    assert (tf_conf["model_dir"], tf_conf["input_width"], tf_conf["input_height"]) == ("./checkpoint_dir", "224", "224")


def test_relative_model_dir_resolves_against_conf_folder(tmp_path, monkeypatch):
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, model_dir="./model")
    monkeypatch.chdir("/")
    model = classifier.load(conf)
    assert model.model_dir == str(tmp_path / "model")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["http_server"].pop("exec"), r"conf\.json: key http_server\.exec is missing"),
    (lambda c: c["http_server"]["exec"].pop("main_file"), r"http_server\.exec\.main_file is missing"),
    (lambda c: c["http_server"]["tensorflow"].pop("model_dir"), r"http_server\.tensorflow\.model_dir is missing"),
    (lambda c: c["http_server"]["tensorflow"].pop("input_width"), r"tensorflow\.input_width is missing"),
    (lambda c: c["http_server"]["tensorflow"].update(input_height="2*112"), r"input_height .*numeric string, not '2\*112'"),
    (lambda c: c["http_server"]["tensorflow"].update(input_height=0), r"input_height .*≥ 1"),
    (lambda c: c["http_server"]["tensorflow"].update(input_width=22.5), r"input_width .*whole number"),
    (lambda c: c["http_server"]["tensorflow"].update(top_k="five"), r"top_k .*numeric string"),
    (lambda c: c["http_server"].update(tensorflow=[]), r"http_server\.tensorflow must be a JSON object"),
    (lambda c: c["http_server"]["exec"].update(main_class="Nope"), r"main_class: .*has no class 'Nope'"),
    (lambda c: c["http_server"]["exec"].update(main_file="no_such_module"), r"main_file: no module 'no_such_module'"),
    (lambda c: c["http_server"].update(limits={"formats": ["EPS"]}), r"http_server\.limits\.formats must be"),
])
def test_conf_errors_name_the_key_and_file(tmp_path, edit, message):
    write_colour_graph(tmp_path / "model")
    path = write_conf(tmp_path)
    conf = json.loads(path.read_text())
    edit(conf)
    path.write_text(json.dumps(conf))
    with pytest.raises(ConfError, match=message):
        classifier.load(path)


def test_conf_file_errors(tmp_path):
    with pytest.raises(ConfError, match="does not exist"):
        classifier.load(tmp_path / "missing.json")
    (tmp_path / "conf.json").write_text("{not json")
    with pytest.raises(ConfError, match="not valid JSON"):
        classifier.load(tmp_path / "conf.json")


def test_numbers_and_numeric_strings_both_accepted(tmp_path):
    write_colour_graph(tmp_path / "model")
    path = write_conf(tmp_path)
    conf = json.loads(path.read_text())
    conf["http_server"]["tensorflow"].update(input_width=8, input_height=" 8 ", top_k="2")
    path.write_text(json.dumps(conf))
    model = classifier.load(path)
    assert (model.input_width, model.input_height, model.top_k) == (8, 8, 2)
    assert len(model.execute([encode(solid("red"))], 1)[0]) == 2


# A user's UAI inference code, ported by changing only its import lines.
UAI_USER_CODE = '''
from io import BytesIO
import os

import numpy as np
from PIL import Image
import tensorflow.compat.v1 as tf                            # was: import tensorflow as tf
from classifier import TFAiUcloudModel, RetrainJsonConfLoader  # was: from uai.arch.tf_model import TFAiUcloudModel
                                                               #     from retrain_conf import RetrainJsonConfLoader


class RetrainedClassificationModel(TFAiUcloudModel):
    def __init__(self, conf):
        super(RetrainedClassificationModel, self).__init__(conf)

    def _parse_conf(self, conf):
        json_conf_loader = RetrainJsonConfLoader(conf)
        self.model_dir = json_conf_loader.get_model_dir()
        self.input_width = json_conf_loader.get_input_width()
        self.input_height = json_conf_loader.get_input_height()

    def load_model(self):
        graph = tf.Graph()
        with graph.as_default():
            graph_def = tf.GraphDef()
            with open(os.path.join(self.model_dir, "frozen_inference_graph.pb"), "rb") as f:
                graph_def.ParseFromString(f.read())
            tf.import_graph_def(graph_def, name="")
        self.output["sess"] = tf.Session(graph=graph)
        with open(os.path.join(self.model_dir, "label_map.txt")) as f:
            self.output["labels"] = [line.strip() for line in f]

    def execute(self, data, batch_size):
        images = []
        for i in range(batch_size):
            image = Image.open(BytesIO(data[i].body)).convert("RGB")
            image = image.resize((self.input_width, self.input_height), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
        probs = self.output["sess"].run("final_result:0", {"Placeholder:0": np.stack(images)})
        ret = []
        for row in probs:
            top = row.argsort()[::-1][:5]
            ret.append([[self.output["labels"][j], float(row[j])] for j in top])
        return ret
'''


def test_uai_user_class_plugs_in_through_conf(tmp_path, default_model, photo_bytes):
    (tmp_path / "my_inference.py").write_text(UAI_USER_CODE)
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "checkpoint_dir",
                    ignore=shutil.ignore_patterns("*.pbtxt", "*.json"))
    conf = write_conf(tmp_path, model_dir="./checkpoint_dir", size=224, main_file="my_inference")
    user_model = classifier.load(conf)
    assert type(user_model).__module__.endswith(".my_inference")  # in its folder's own package
    requests = [Request(photo_bytes["chelsea.png"]), Request(photo_bytes["coffee.png"])]
    theirs = user_model.execute(requests, len(requests))
    ours = default_model.execute(requests, len(requests))
    for a, b in zip(theirs, ours):
        assert [label for label, _ in a] == [label for label, _ in b]
        assert np.allclose([p for _, p in a], [p for _, p in b], atol=1e-5)


# The command line.
def test_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "classifier", str(PHOTOS / "cat.jpeg")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                          "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].endswith("cat.jpeg") and lines[1].split("%", 1)[1].strip() in CAT_LABELS

    run = subprocess.run([sys.executable, "-m", "classifier", "--json", "--top-k", "2", str(PHOTOS / "coffee.png"),
                          str(tmp_path / "missing.jpg")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    out = json.loads(run.stdout)
    assert out[str(PHOTOS / "coffee.png")][0][0] in COFFEE_LABELS and len(out[str(PHOTOS / "coffee.png")]) == 2
    assert "No such file" in out[str(tmp_path / "missing.jpg")]["error"]
