"""The LiteRT engine: agreement with TensorFlow, the conversion cache and its invalidation, the fallback."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import classifier
from classifier import litert
from conftest import COLOURS, PHOTOS, ROOT, encode, solid, write_colour_graph, write_conf


def tensorflow_twin(tmp_path, model_dir=ROOT / "checkpoint_dir", size=224):
    """A conf for the same model with runtime "tensorflow"."""
    return write_conf(tmp_path, model_dir=str(model_dir), size=size, runtime="tensorflow")


def test_default_model_runs_on_litert_and_agrees_with_tensorflow(default_model, tmp_path):
    assert default_model.runtime.engine.startswith("LiteRT XNNPACK")
    reference = classifier.load(tensorflow_twin(tmp_path))
    assert reference.runtime.engine == "TensorFlow"
    batch = np.stack([default_model.preprocess(p) for p in sorted(PHOTOS.glob("*.*g"))])
    assert np.abs(default_model.forward(batch) - reference.forward(batch)).max() <= litert.TOLERANCE
    assert len(batch) == 7


def test_converted_model_is_cached_beside_the_model(tmp_path, monkeypatch):
    write_colour_graph(tmp_path / "model")
    first = classifier.load(write_conf(tmp_path))
    assert first.runtime.engine.startswith("LiteRT")
    cached = list((tmp_path / "model" / ".litert").glob("*.tflite"))
    assert len(cached) == 1

    monkeypatch.setattr(litert, "convert", lambda runtime: pytest.fail("converted again"))
    second = classifier.load(write_conf(tmp_path))
    assert second.runtime.engine.startswith("LiteRT")
    assert [r[0][0] for r in second.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


def test_a_changed_model_is_converted_again(tmp_path):
    write_colour_graph(tmp_path / "model")
    classifier.load(write_conf(tmp_path))
    write_colour_graph(tmp_path / "model", output_name="probabilities")  # another graph, same folder
    model = classifier.load(write_conf(tmp_path))
    assert len(list((tmp_path / "model" / ".litert").glob("*.tflite"))) == 2
    assert model.runtime.engine.startswith("LiteRT")


def test_falls_back_to_tensorflow_when_conversion_fails(tmp_path, monkeypatch, caplog):
    write_colour_graph(tmp_path / "model")

    def broken(runtime):
        raise RuntimeError("this op is not supported")

    monkeypatch.setattr(litert, "convert", broken)
    with caplog.at_level(logging.WARNING):
        model = classifier.load(write_conf(tmp_path))
    assert model.runtime.engine == "TensorFlow"
    assert "LiteRT conversion failed (RuntimeError: this op is not supported); serving with TensorFlow" in caplog.text
    assert model.execute([encode(solid("blue"))], 1)[0][0][0] == "blue"


def test_falls_back_to_tensorflow_when_results_disagree(tmp_path, monkeypatch, caplog):
    write_colour_graph(tmp_path / "model")
    monkeypatch.setattr(litert, "TOLERANCE", -1.0)  # no result can be that close
    with caplog.at_level(logging.WARNING):
        model = classifier.load(write_conf(tmp_path))
    assert model.runtime.engine == "TensorFlow" and "LiteRT disagrees with TensorFlow" in caplog.text


def test_conf_can_turn_litert_off(tmp_path):
    write_colour_graph(tmp_path / "model")
    model = classifier.load(write_conf(tmp_path, runtime="tensorflow"))
    assert model.runtime.engine == "TensorFlow" and not (tmp_path / "model" / ".litert").exists()
    conf = json.loads((tmp_path / "conf.json").read_text())
    conf["http_server"]["tensorflow"]["runtime"] = "gpu"
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    with pytest.raises(classifier.ConfError, match="runtime must be"):
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

    started = run_python("import json, sys; sys.argv = ['app.py']; import app; "
                         "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules, "
                         "'model': app.classifier.describe(app.model), "
                         "'answer': app.model.execute(['tests/photos/cat.jpeg'], 1)[0][0][0]}))")
    assert started == {"tf": False, "keras": False, "answer": default_model.execute([PHOTOS / "cat.jpeg"])[0][0][0],
                       "model": default_model.describe()}

    conf = json.loads((ROOT / "conf.json").read_text())
    conf["http_server"]["tensorflow"].update(model_dir=str(tmp_path / "model"), input_std=200)
    shutil.copytree(ROOT / "checkpoint_dir", tmp_path / "model")  # its .litert/ cache and record come along
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    load = (f"import json, sys, classifier; m = classifier.load({str(tmp_path / 'conf.json')!r}); "
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'engine': m.runtime.engine}))")
    first, second = run_python(load), run_python(load)
    assert first["tf"] is True and first["engine"].startswith("LiteRT")  # another convention: checked with TF
    assert second["tf"] is False and second["engine"] == first["engine"]  # and recorded
