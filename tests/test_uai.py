"""UAI inference code, written in UAI's own idiom, runs here with TensorFlow's import as its only edit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import classifier
from classifier.serving.service import json_response
from conftest import CAT_LABELS, PHOTOS, ROOT
from in_process import InProcessServer
from test_app import curl
from test_operations import metric

# A conf loader in its own module, as UCloud's examples have them (retrain_conf.py): it overrides _load(), calls
# super and reads self.server_conf, turning "224" into a number the way UAI code does.
UAI_CONF_LOADER = '''
from uai.arch_conf.tf_conf import TFJsonConfLoader


class ClassifierJsonConfLoader(TFJsonConfLoader):
    def __init__(self, conf):
        super(ClassifierJsonConfLoader, self).__init__(conf)

    def _load(self):
        super(ClassifierJsonConfLoader, self)._load()
        self.input_width = eval(self.server_conf['tensorflow']['input_width'])
        self.input_height = eval(self.server_conf['tensorflow']['input_height'])

    def get_input_width(self):
        return self.input_width

    def get_input_height(self):
        return self.input_height
'''

# The model module: uai.* imports unchanged; the only edit is TensorFlow's import.
UAI_MODEL = '''
import os

import tensorflow.compat.v1 as tf  # was: import tensorflow as tf
from uai.arch.tf_model import TFAiUcloudModel
from classifier_conf import ClassifierJsonConfLoader


class ClassificationModel(TFAiUcloudModel):
    def __init__(self, conf):
        super(ClassificationModel, self).__init__(conf)

    def _parse_conf(self, conf):
        loader = ClassifierJsonConfLoader(conf)
        self.model_dir = loader.get_model_dir()
        self.input_width = loader.get_input_width()
        self.input_height = loader.get_input_height()

    def load_model(self):
        graph = tf.Graph()
        graph_def = tf.GraphDef()
        with tf.gfile.FastGFile(os.path.join(self.model_dir, "frozen_inference_graph.pb"), "rb") as f:
            graph_def.ParseFromString(f.read())
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        self._input = graph.get_operation_by_name("Placeholder").outputs[0]
        self._output = graph.get_operation_by_name("final_result").outputs[0]
        self._sess = tf.Session(graph=graph)

        reader = tf.Graph()  # a second small graph: bytes -> decoded, resized, scaled image
        with reader.as_default():
            self._data = tf.placeholder(tf.string)
            image = tf.cast(tf.image.decode_image(self._data, channels=3), tf.float32)
            image.set_shape([None, None, 3])
            resized = tf.image.resize_bilinear(tf.expand_dims(image, 0), [self.input_height, self.input_width])
            self._normalized = tf.divide(resized, [255.0])
        self._reader = tf.Session(graph=reader)

        with tf.gfile.FastGFile(os.path.join(self.model_dir, "label_map.txt"), "r") as f:
            self._label_map = dict(enumerate(line.rstrip("\\n") for line in f.readlines()))

    def execute(self, data, batch_size):
        res = []
        for i in range(batch_size):
            image = self._reader.run(self._normalized, {self._data: data[i].body})
            predictions, = self._sess.run(self._output, {self._input: image})
            top = predictions.argsort()[::-1][:5]
            res.append([[self._label_map[t], predictions[t]] for t in top])  # numpy floats, as UAI code returns
        return res
'''


def uai_code_folder(folder: Path, **batching) -> Path:
    """A UAI code folder: the two modules, checkpoint_dir/ beside them, and a UAI-format conf."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classifier_conf.py").write_text(UAI_CONF_LOADER)
    (folder / "classification_inference.py").write_text(UAI_MODEL)
    (folder / "checkpoint_dir").mkdir()
    for name in ("frozen_inference_graph.pb", "label_map.txt"):
        (folder / "checkpoint_dir" / name).symlink_to(ROOT / "checkpoint_dir" / name)
    conf = {"http_server": {"exec": {"main_class": "ClassificationModel", "main_file": "classification_inference"},
                            "tensorflow": {"model_dir": "./checkpoint_dir", "input_width": "224",
                                           "input_height": "224"}}}
    if batching:
        conf["http_server"]["batching"] = batching
    (folder / "classification.conf").write_text(json.dumps(conf, indent=4))
    return folder / "classification.conf"


def test_uai_code_loads_through_the_core_with_uais_classes_and_hooks(tmp_path):
    conf = uai_code_folder(tmp_path / "code")
    model = classifier.load(conf)
    assert isinstance(model, classifier.TFAiUcloudModel) and model.model_type == "tensorflow"
    assert model.output == {} and model.input_width == 224 and model.model_dir == str(tmp_path / "code" /
                                                                                         "checkpoint_dir")
    requests = [SimpleNamespace(body=(PHOTOS / name).read_bytes()) for name in ("cat.jpeg", "chelsea.png")]
    results = model.execute(requests, 2)
    assert [r[0][0] for r in results] == [results[0][0][0]] * 2 and results[0][0][0] in CAT_LABELS
    assert isinstance(results[0][0][1], np.float32)  # the core hands back what the user's code returned

    from uai.arch_conf.base_conf import ArchJsonConfLoader  # UAI's names resolve to the project's classes

    loader = ArchJsonConfLoader(json.loads(conf.read_text()))
    assert ArchJsonConfLoader is classifier.ArchJsonConfLoader
    assert (loader.main_file, loader.main_class) == ("classification_inference", "ClassificationModel")
    assert loader.server_conf["tensorflow"]["input_width"] == "224" and loader.conf["http_server"] is \
        loader.server_conf


def test_uai_code_served_by_app_py(tmp_path):
    conf = uai_code_folder(tmp_path / "code", max_batch_wait_ms=200)
    running = InProcessServer("--conf", str(conf))
    try:
        status, result, _ = curl("-T", str(PHOTOS / "cat.jpeg"), f"{running.url}/service")
        assert status == 200 and result[0][0] in CAT_LABELS and isinstance(result[0][1], float)

        from gradio_client import Client, handle_file

        page = Client(running.url + "/", verbose=False).predict(handle_file(str(PHOTOS / "cat.jpeg")),
                                                                api_name="/classify")
        assert page["label"] in CAT_LABELS

        answers: list = []
        multipart = ["-F", f"a=@{PHOTOS / 'cat.jpeg'}", "-F", f"b=@{PHOTOS / 'chelsea.png'}", f"{running.url}/service"]
        threads = [threading.Thread(target=lambda: answers.append(curl(*multipart))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [status for status, _, _ in answers] == [200, 200]
        assert all(r[0][0] in CAT_LABELS for _, results, _ in answers for r in results)
        text = subprocess.run(["curl", "-s", f"{running.url}/metrics"], capture_output=True, text=True).stdout
        assert metric(text, "classifier_batch_size_sum") > metric(text, "classifier_batch_size_count")  # batches > 1
    finally:
        running.stop()


def test_the_command_lines_json_holds_plain_numbers(tmp_path):
    conf = uai_code_folder(tmp_path / "code")
    run = subprocess.run([sys.executable, "-m", "classifier", "--json", "--conf", str(conf), str(PHOTOS / "cat.jpeg")],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    [(label, probability), *_] = json.loads(run.stdout)[str(PHOTOS / "cat.jpeg")]
    assert label in CAT_LABELS and isinstance(probability, float)


SIBLING_MAIN = '''
import helper  # a sibling module, by its plain name


class Model:
    def __init__(self, conf):
        self.name = helper.NAME

    def execute(self, data, batch_size):
        import helper as later  # imported again inside execute(), as UAI code does
        return [later.NAME] * batch_size
'''


def test_sibling_modules_are_importable_from_their_folder_only(tmp_path):
    models = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.py").write_text(SIBLING_MAIN)
        (folder / "helper.py").write_text(f"NAME = {name!r}\n")
        (folder / "conf.json").write_text(json.dumps({"http_server": {"exec": {"main_file": "model",
                                                                               "main_class": "Model"}}}))
        models.append(classifier.load(folder / "conf.json"))
    assert [m.name for m in models] == ["first", "second"]
    assert [m.execute([None], 1) for m in models] == [["first"], ["second"]]
    assert "helper" not in sys.modules and "model" not in sys.modules  # nothing leaked into plain names
    with pytest.raises(ModuleNotFoundError):
        __import__("helper")


def test_an_installed_uai_sdk_wins_and_says_so(tmp_path):
    fake = tmp_path / "site" / "uai"
    (fake / "arch").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "arch" / "__init__.py").write_text("")
    (fake / "arch" / "tf_model.py").write_text("class TFAiUcloudModel:\n    REAL_SDK = True\n")
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "model.py").write_text("from uai.arch.tf_model import TFAiUcloudModel\n\n"
                                     "class Model(TFAiUcloudModel):\n    def __init__(self, conf):\n        pass\n")
    (folder / "conf.json").write_text(json.dumps({"http_server": {"exec": {"main_file": "model",
                                                                           "main_class": "Model"}}}))
    script = ("import logging, classifier; logging.basicConfig(level=logging.INFO)\n"
              f"print('REAL' if classifier.load({str(folder / 'conf.json')!r}).REAL_SDK else 'OURS')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])})
    assert run.stdout.strip() == "REAL", run.stderr
    assert "uai.* comes from the installed uai-sdk" in run.stderr


def test_a_result_that_cannot_be_json_is_a_clear_500():
    response = json_response([["cat", object()]])
    assert response.status_code == 500 and "cannot be sent as JSON" in json.loads(response.body)["error"]
    assert json_response([["cat", float("nan")]]).status_code == 500
