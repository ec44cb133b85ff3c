"""The engines (LiteRT, OpenVINO): agreement with TensorFlow, the choice, the cache and its invalidation, the
fallbacks, and the reduced-precision guard."""
from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import classifier
from classifier import engines
from classifier.engines import litert, openvino, timing
from conftest import COLOURS, PHOTOS, ROOT, encode, solid, write_colour_graph, write_conf


def tensorflow_twin(folder, model_dir=ROOT / "checkpoint_dir", size=224):
    """A conf for the same model with runtime "tensorflow"."""
    folder.mkdir(exist_ok=True)
    return write_conf(folder, model_dir=str(model_dir), size=size, runtime="tensorflow")


def check_batch(model):
    return np.stack([model.preprocess(p) for p in sorted(PHOTOS.glob("*.*g"))])


@pytest.mark.parametrize("runtime", ["litert", "openvino"])
def test_each_engine_gives_tensorflows_answers(runtime, tmp_path, default_model):
    """Each fp32 engine, named in conf, serves the default model within TOLERANCE of TensorFlow on the 7 test
    photos (not the check photos it was admitted on). The copy keeps the default model's converted files, checked
    when they were made (converting them is test_auto_serves_…'s subject)."""
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "model")
    model = classifier.load(write_conf(tmp_path, model_dir=str(tmp_path / "model"), size=224, runtime=runtime))
    assert model.runtime.engine.startswith({"litert": "LiteRT XNNPACK", "openvino": "OpenVINO"}[runtime])
    reference = classifier.load(tensorflow_twin(tmp_path / "twin"))
    assert reference.runtime.engine == "TensorFlow"
    batch = check_batch(model)
    assert len(batch) == 7
    assert np.abs(model.forward(batch) - reference.forward(batch)).max() <= engines.TOLERANCE


def test_auto_serves_the_engine_that_serves_fastest_and_logs_each_figure(tmp_path, caplog):
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "model", ignore=shutil.ignore_patterns(".litert"))
    with caplog.at_level(logging.INFO, logger="classifier.engines"):
        model = classifier.load(write_conf(tmp_path, model_dir=str(tmp_path / "model"), size=224))
    figures = {name: float(rate) for name, rate in re.findall(r"(\w+ fp32) (\d+) images/s", caplog.text)}
    assert set(figures) == {"litert fp32", "openvino fp32", "tensorflow fp32"}
    served = re.search(r"serving with (\w+ fp32)", caplog.text).group(1)
    assert model.runtime.engine.lower().startswith(served.split()[0])
    # The simplest engine, unless another was clearly faster as serving runs it (engines.timing.choose).
    assert served == timing.choose(figures, ["litert fp32", "openvino fp32", "tensorflow fp32"])[0]


def test_converted_model_is_cached_beside_the_model(tmp_path, monkeypatch):
    write_colour_graph(tmp_path / "model")
    first = classifier.load(write_conf(tmp_path, runtime="litert"))
    assert first.runtime.engine.startswith("LiteRT")
    cached = list((tmp_path / "model" / ".litert").glob("*.tflite"))
    assert len(cached) == 1

    monkeypatch.setattr(litert, "convert", lambda runtime: pytest.fail("converted again"))
    second = classifier.load(write_conf(tmp_path, runtime="litert"))
    assert second.runtime.engine.startswith("LiteRT")
    assert [r[0][0] for r in second.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


def test_a_changed_model_is_converted_again(tmp_path):
    write_colour_graph(tmp_path / "model")
    classifier.load(write_conf(tmp_path, runtime="litert"))
    write_colour_graph(tmp_path / "model", output_name="probabilities")  # another graph, same folder
    model = classifier.load(write_conf(tmp_path, runtime="litert"))
    assert len(list((tmp_path / "model" / ".litert").glob("*.tflite"))) == 2
    assert model.runtime.engine.startswith("LiteRT")


def test_falls_back_to_tensorflow_when_conversion_fails(tmp_path, monkeypatch, caplog):
    write_colour_graph(tmp_path / "model")

    def broken(runtime):
        raise RuntimeError("this op is not supported")

    monkeypatch.setattr(litert, "convert", broken)
    with caplog.at_level(logging.WARNING):
        model = classifier.load(write_conf(tmp_path, runtime="auto"))
    assert model.runtime.engine == "TensorFlow"
    # Every engine starts from the .tflite file: both fail, and TensorFlow serves.
    assert "litert fp32 conversion failed (RuntimeError: this op is not supported)" in caplog.text
    assert "openvino fp32 conversion failed (RuntimeError: this op is not supported)" in caplog.text
    assert model.execute([encode(solid("blue"))], 1)[0][0][0] == "blue"


def test_falls_back_to_tensorflow_when_results_disagree(tmp_path, monkeypatch, caplog):
    write_colour_graph(tmp_path / "model")
    monkeypatch.setattr(engines, "TOLERANCE", -1.0)  # no result can be that close
    with caplog.at_level(logging.WARNING):
        model = classifier.load(write_conf(tmp_path, runtime="auto"))
    assert model.runtime.engine == "TensorFlow"
    assert "litert fp32 disagrees with TensorFlow" in caplog.text and "openvino fp32 disagrees" in caplog.text


def test_conf_can_turn_litert_off(tmp_path):
    write_colour_graph(tmp_path / "model")
    model = classifier.load(write_conf(tmp_path, runtime="tensorflow"))
    assert model.runtime.engine == "TensorFlow" and not (tmp_path / "model" / ".litert").exists()
    conf = json.loads((tmp_path / "conf.json").read_text())
    conf["http_server"]["tensorflow"]["runtime"] = "gpu"
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    with pytest.raises(classifier.ConfError, match="runtime must be one of"):
        classifier.load(tmp_path / "conf.json")
    conf["http_server"]["tensorflow"].update(runtime="tensorflow", precision="int8")
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    with pytest.raises(classifier.ConfError, match="int8 is served by litert or openvino"):
        classifier.load(tmp_path / "conf.json")


def test_batches_larger_than_a_chunk_are_split(default_model, photo_bytes):
    items = [photo_bytes[n] for n in sorted(photo_bytes)] * 2  # 14 images: chunks of 4, 4, 4, 2
    together = default_model.execute(items, len(items))
    alone = [default_model.execute([item], 1)[0] for item in items]
    for a, b in zip(together, alone):
        assert a[0][0] == b[0][0] and a[0][1] == pytest.approx(b[0][1], abs=1e-5)


def run_python(code: str) -> dict:
    """Runs code in a fresh interpreter at the project's root; returns the JSON it prints last."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_recorded_conversion_serves_without_tensorflow(default_model, tmp_path):
    """Once converted and checked (default_model did it), the server starts with no TensorFlow in the process;
    a convention never checked brings TensorFlow back to check it, once. (Changed model files change the cache
    key: test_a_changed_model_is_converted_again.)"""
    import json
    import shutil

    started = run_python("import json, sys, classifier, app; server = app.build(['--grpc-port', '0']); "
                         "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules, "
                         "'model': classifier.describe(server.model), "
                         "'answer': server.model.execute(['tests/photos/cat.jpeg'], 1)[0][0][0]}))")
    assert started == {"tf": False, "keras": False, "answer": default_model.execute([PHOTOS / "cat.jpeg"])[0][0][0],
                       "model": default_model.describe()}

    conf = json.loads((ROOT / "conf.json").read_text())
    conf["http_server"]["tensorflow"].update(model_dir=str(tmp_path / "model"), input_std=200)
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "model")  # its .litert/ cache and record come along
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    load = (f"import json, sys, classifier; m = classifier.load({str(tmp_path / 'conf.json')!r}); "
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'engine': m.runtime.engine}))")
    first, second = run_python(load), run_python(load)
    assert first["tf"] is True and first["engine"] != "TensorFlow"  # another convention: checked with TF
    assert second["tf"] is False and second["engine"] == first["engine"]  # and recorded


def test_a_new_engine_version_is_converted_and_checked_again(tmp_path, monkeypatch):
    """The record names the engine version that made and checked its file: another version is not trusted."""
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="openvino")
    assert classifier.load(conf).runtime.engine.startswith(f"OpenVINO {openvino.version()}")
    model_file = tmp_path / "model" / "frozen_inference_graph.pb"
    check_name = next(iter(engines.recorded(model_file).record["decisions"])).split(" ", 2)[2]
    assert engines.recorded(model_file).serve(check_name, "openvino", "fp32") is not None
    monkeypatch.setattr(openvino, "version", lambda: "2099.1")
    assert engines.recorded(model_file).serve(check_name, "openvino", "fp32") is None
    model = classifier.load(conf)  # converts for "2099.1" and records it
    assert model.runtime.engine.startswith("OpenVINO 2099.1")
    assert len(list((tmp_path / "model" / ".litert").glob("*.openvino-2099.1.xml"))) == 1
    assert model.execute([encode(solid("green"))], 1)[0][0][0] == "green"


def reduced_twin(tmp_path, precision, **keys):
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "model", ignore=shutil.ignore_patterns(".litert"))
    return write_conf(tmp_path, model_dir=str(tmp_path / "model"), size=224, precision=precision, **keys)


def test_the_precision_guard_refuses_an_int8_model_that_disagrees(tmp_path, caplog):
    """Calibrated on blank images, int8 loses the photos' answers: it is refused, with a log line, and the
    fp32 engine serves."""
    (tmp_path / "blank").mkdir()
    for n, grey in enumerate((0, 128, 255)):
        Image.new("RGB", (224, 224), (grey,) * 3).save(tmp_path / "blank" / f"{n}.png")
    with caplog.at_level(logging.INFO, logger="classifier.engines"):
        model = classifier.load(reduced_twin(tmp_path, "int8", calibration_photos=str(tmp_path / "blank")))
    refused = re.search(r"openvino int8 refused: the same top-1 as fp32 on (\d+)% of \d+ check images", caplog.text)
    assert refused and int(refused.group(1)) < 97, caplog.text[-2000:]
    assert "int8" not in model.runtime.engine and model.runtime.engine != "TensorFlow"
    assert model.execute([PHOTOS / "cat.jpeg"])[0][0][0] == "Egyptian cat"


def test_bf16_serves_where_the_cpu_runs_it_and_keeps_the_answers(tmp_path, caplog, default_model):
    with caplog.at_level(logging.INFO, logger="classifier.engines"):
        model = classifier.load(reduced_twin(tmp_path, "bf16"))
    if not openvino.runs_natively("bf16"):
        assert "openvino bf16 refused: this CPU has no native bf16" in caplog.text
        assert "bf16" not in model.runtime.engine
        return
    assert model.runtime.engine.startswith("OpenVINO") and "bf16" in model.runtime.engine
    photos = sorted(PHOTOS.glob("*.*g"))
    assert [r[0][0] for r in model.execute(photos)] == [r[0][0] for r in default_model.execute(photos)]


def test_each_litert_layout_gives_the_same_answers_and_lean_holds_one_interpreter_fewer(tmp_path):
    import threading

    write_colour_graph(tmp_path / "model")
    classifier.load(write_conf(tmp_path))  # converts it: the .tflite is cached beside the model
    [tflite] = [p for p in (tmp_path / "model").rglob("*.tflite") if "int8" not in p.name]
    rng = np.random.default_rng(0)
    inputs = {"batch": rng.random((5, 8, 8, 3), np.float32), "lone": rng.random((1, 8, 8, 3), np.float32)}
    shared = litert.LiteRTPredictor(tflite, 2, "shared")
    expected = {kind: shared(images) for kind, images in inputs.items()}
    lanes = {}
    for layout in ("per-core", "lean"):
        predictor, answers = litert.LiteRTPredictor(tflite, 2, layout), []
        calls = [threading.Thread(target=lambda kind=kind: answers.append((kind, predictor(inputs[kind]))))
                 for kind in ("batch", "lone") * 4]
        for call in calls:  # lone images and batches at once: each lane takes one image at a time
            call.start()
        for call in calls:
            call.join()
        assert len(answers) == 8
        for kind, answer in answers:
            np.testing.assert_allclose(answer, expected[kind], atol=1e-6)
        held = {id(predictor._lone): predictor._lone, id(predictor._batch): predictor._batch}.values()
        lanes[layout] = sum(len(lanes_of.queue) for lanes_of in held)
    assert lanes == {"per-core": 3, "lean": 2}  # the lone image's, and one a core (in "lean", the lone one too)
