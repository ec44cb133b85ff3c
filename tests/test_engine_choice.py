"""The engine choice (issue 29): timed as serving runs it, kept simple unless another is clearly faster, made
again on another CPU, and LiteRT's full-integer model as an int8 candidate."""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

import classifier
from classifier.engines import cache, timing
from conftest import COLOURS, ROOT, encode, solid, write_colour_graph, write_conf


class Contended:
    """A fake engine whose speed depends on what runs beside it: `alone` s per image when nothing else runs,
    `shared` s per image while the decoding (busy) ran in the last 20 ms."""

    def __init__(self, alone: float, shared: float, beside: "Decoding"):
        self.alone, self.shared, self.beside = alone, shared, beside

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        busy = time.monotonic() - self.beside.last < 0.02
        time.sleep(len(batch) * (self.shared if busy else self.alone))
        return np.zeros((len(batch), 3), np.float32)


class Decoding:
    def __init__(self):
        self.last = -1.0

    def __call__(self) -> None:
        self.last = time.monotonic()
        time.sleep(0.001)


def test_the_chooser_picks_the_engine_that_is_faster_under_load():
    beside = Decoding()
    # "fast alone": 1 ms an image, but 4 ms beside the decoders; "steady": 2 ms an image either way.
    engines = {"fast-alone fp32": Contended(0.001, 0.004, beside), "steady fp32": Contended(0.002, 0.002, beside)}
    batch = np.zeros((8, 2, 2, 3), np.float32)
    alone = timing.side_by_side(engines, batch, busy=None, rounds=3, seconds=0.1)
    assert alone["fast-alone fp32"] > 1.5 * alone["steady fp32"]  # a micro-benchmark would choose it…
    serving = timing.side_by_side(engines, batch, busy=beside, rounds=3, seconds=0.1)
    chosen, reason = timing.choose(serving, list(engines))
    assert chosen == "steady fp32", serving  # …serving does not
    assert "steady fp32" in reason and "10% faster" in reason


@pytest.mark.parametrize("rates, chosen", [
    ({"litert fp32": 100, "openvino fp32": 108, "tensorflow fp32": 90}, "litert fp32"),  # within the margin
    ({"litert fp32": 100, "openvino fp32": 115, "tensorflow fp32": 90}, "openvino fp32"),
    ({"litert fp32": 100, "openvino fp32": 115, "tensorflow fp32": 125}, "openvino fp32"),  # TensorFlow: +9 %
    ({"litert fp32": 100, "openvino fp32": 105, "tensorflow fp32": 130}, "tensorflow fp32")])
def test_the_margin_keeps_the_simpler_engine(rates, chosen):
    assert timing.choose(rates, list(rates))[0] == chosen


def record_of(folder) -> tuple[dict, str]:
    path = folder / "model" / "frozen_inference_graph.pb"
    key = cache.model_key(path)
    return cache.read_record(path, key), key


def test_a_decision_made_on_another_cpu_is_timed_again_without_tensorflow(tmp_path, caplog):
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="auto")
    classifier.load(conf)  # converted, checked, timed and recorded with TensorFlow
    record, key = record_of(tmp_path)
    [decision] = record["decisions"].values()
    assert decision["cpu"] == timing.cpu() and "a simpler engine is kept" in decision["reason"]
    assert set(decision["candidates"]) == {"litert fp32", "openvino fp32", "tensorflow fp32"}
    decision["cpu"] = {"model": "Some Other CPU", "flags": ["avx2", "fma"], "cores": 64}  # a Docker image moved
    cache.write_record(tmp_path / "model" / "frozen_inference_graph.pb", key, record)

    # In a fresh process, so that it can be seen that TensorFlow is never imported.
    code = (f"import sys, logging, classifier; logging.basicConfig(level=logging.INFO); "
            f"m = classifier.load({str(conf)!r}); "
            f"print('TF', 'tensorflow' in sys.modules); print('ENGINE', m.runtime.engine)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TF False" in run.stdout and "timing the engines again" in run.stderr
    assert "recorded on Some Other CPU (64 cores, avx2 fma)" in run.stderr
    again, _ = record_of(tmp_path)
    [decision] = again["decisions"].values()
    assert decision["cpu"] == timing.cpu()  # the record now belongs to this machine
    assert set(decision["candidates"]) <= {"litert fp32", "openvino fp32"}  # the converted ones, checked again

    # Trusted as it is on the machine that made it: no timing at the next start.
    with caplog.at_level(logging.INFO, logger="classifier.engines"):
        model = classifier.load(conf)
    assert "timing the engines again" not in caplog.text
    assert [r[0][0] for r in model.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


WITHOUT_TENSORFLOW = "import sys; sys.modules['tensorflow'] = None; "  # as a serving-only install has it


def test_a_serving_only_install_times_the_others_when_tensorflow_was_chosen(tmp_path):
    """The Docker runtime image has no TensorFlow: a record that chose it (TensorFlow was fastest where the model
    was converted) is timed again among the converted engines, without TensorFlow."""
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="auto")
    classifier.load(conf)
    record, key = record_of(tmp_path)
    [decision] = record["decisions"].values()
    decision.update(engine="tensorflow", precision="fp32", file=None)
    cache.write_record(tmp_path / "model" / "frozen_inference_graph.pb", key, record)
    code = (WITHOUT_TENSORFLOW + f"import logging, classifier; logging.basicConfig(level=logging.INFO); "
            f"m = classifier.load({str(conf)!r}); print('ENGINE', m.runtime.engine); "
            f"print('TOP', m.execute([{str(ROOT / 'examples' / 'cat.jpeg')!r}], 1)[0][0][0])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TensorFlow was chosen, and is not installed here" in run.stderr
    assert "ENGINE LiteRT" in run.stdout or "ENGINE OpenVINO" in run.stdout


def test_a_serving_only_install_says_how_to_convert_a_model_it_cannot(tmp_path):
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="auto")
    run = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW + "import runpy; sys.argv = ['classifier', "
                          f"'--conf', {str(conf)!r}, {str(ROOT / 'examples' / 'cat.jpeg')!r}]; "
                          "runpy.run_module('classifier', run_name='__main__')"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "has not been converted" in run.stderr and "python -m classifier --convert" in run.stderr
    convert = subprocess.run([sys.executable, "-m", "classifier", "--convert", "--conf", str(conf)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert convert.returncode == 0 and "serving with" in convert.stdout, convert.stderr[-2000:]
    served = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW + "import classifier; "
                             f"print(classifier.load({str(conf)!r}).runtime.engine)"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert served.returncode == 0 and ("LiteRT" in served.stdout or "OpenVINO" in served.stdout), served.stderr


def test_retime_times_again_on_demand(tmp_path):
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="auto")
    classifier.load(conf)
    run = subprocess.run([sys.executable, "-m", "classifier", "--retime", "--conf", str(conf)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "timing the engines again" in run.stderr and ": asked to" in run.stderr
    assert "serving with" in run.stdout


def test_litert_int8_is_a_candidate_for_int8(tmp_path, caplog):
    write_colour_graph(tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="classifier.engines"):
        model = classifier.load(write_conf(tmp_path, runtime="litert", precision="int8"))
    assert "litert int8" in caplog.text
    int8 = list((tmp_path / "model" / ".litert").glob("*-int8-*.tflite"))
    assert len(int8) == 1
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(int8[0]))
    kinds = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    assert np.int8 in kinds and interpreter.get_input_details()[0]["dtype"] == np.float32  # float in, int8 inside
    if "serving with litert int8" in caplog.text:
        assert model.runtime.engine.startswith("LiteRT")
    else:
        assert "litert int8 refused" in caplog.text  # the guard said no, and fp32 serves
    assert [r[0][0] for r in model.execute([encode(solid(c)) for c in COLOURS], 3)] == COLOURS


def test_converting_for_an_install_without_tensorflow_chooses_among_the_converted_engines(tmp_path, monkeypatch):
    """Issue 38 item 12: the Docker image's build timed TensorFlow fastest on a busy machine and recorded it, which
    its runtime stage does not have; `--convert --converted-only` leaves TensorFlow out of the choice."""
    from classifier.__main__ import main
    from classifier.engines import CONVERTED_ONLY_VARIABLE

    monkeypatch.setenv(CONVERTED_ONLY_VARIABLE, "0")  # main() sets it; put back as it was after the test
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, runtime="auto")
    assert main(["--convert", "--converted-only", "--conf", str(conf)]) == 0
    record, _ = record_of(tmp_path)
    [decision] = record["decisions"].values()
    assert set(decision["candidates"]) == {"litert fp32", "openvino fp32"}
    assert decision["engine"] in ("litert", "openvino")
