"""Engines: what runs a model's batches (TensorFlow, LiteRT, OpenVINO), and the choice of the fastest that agrees.

Every engine module has the same face: NAME, PRECISIONS, version(), a cached file made from the model, and
load(file, precision) → a callable, float32 [N, H, W, 3] → raw outputs [N, classes]. TensorFlow is the reference:
an engine serves only if it agrees with it on the check images (fp32: within TOLERANCE in probability; bf16 and
int8: the same top-1 for MIN_TOP1_AGREEMENT of them). What was chosen is recorded beside the model, so the next
start serves it without importing TensorFlow (Recorded).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..formats import Runtime
from ..images import InputConvention
from ..quiet import native_stderr_filtered
from . import cache, litert, openvino

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |Δprobability| against TensorFlow for an fp32 engine to serve
MIN_TOP1_AGREEMENT = 0.97  # share of the check images on which bf16 or int8 must give fp32's top-1
ENGINES = {litert.NAME: litert, openvino.NAME: openvino}
# TensorFlow serves instead of a converted engine only if this much faster: it costs ~900 MB more memory and
# seconds more at every start.
TENSORFLOW_MARGIN = 1.1


@dataclasses.dataclass
class Candidate:
    name: str  # "litert fp32", "openvino bf16", …
    engine: str
    precision: str
    predict: Callable[[np.ndarray], np.ndarray]
    file: Path | None = None
    images_per_s: float = 0.0
    max_dp: float = 0.0
    top1_agreement: float = 1.0


def accelerate(runtime: Runtime, check: np.ndarray, check_name: str = "", choice: str = "auto",
               precision: str = "fp32", calibration: np.ndarray | None = None, key: str | None = None) -> Runtime:
    """The model run by the fastest engine allowed by choice and precision that agrees with TensorFlow (runtime)
    on `check`; runtime itself if none does. The decision is recorded under check_name (what the check fed).
    key: the model's cache.model_key, if the caller has it already (hashing the files is not free)."""
    key = key or cache.model_key(runtime.path)
    reference = runtime.probabilities(runtime.predict(check))
    names = list(ENGINES) if choice == "auto" else [choice]
    fp32 = [c for c in (_checked(runtime, key, name, "fp32", check, reference) for name in names) if c]
    reduced = None
    if precision != "fp32":
        reduced = _checked(runtime, key, openvino.NAME, precision, check, reference, calibration)
    # The candidates are timed side by side on the same batch, each logged; TensorFlow's figure too.
    tensorflow = Candidate("tensorflow fp32", "tensorflow", "fp32", runtime.predict)
    candidates = [*fp32, *([reduced] if reduced else []), tensorflow]
    for candidate in candidates:
        candidate.images_per_s = _images_per_second(candidate.predict, check[:8])
        log.info("%s: %s %.0f images/s (batch of %d), max |Δp| against TensorFlow %.1e, top-1 agreement %.0f%%",
                 runtime.path.name, candidate.name, candidate.images_per_s, len(check[:8]), candidate.max_dp,
                 100 * candidate.top1_agreement)
    best = reduced or max(fp32, key=lambda c: c.images_per_s, default=None)
    if best is None or (choice == "auto" and not reduced
                        and tensorflow.images_per_s > TENSORFLOW_MARGIN * best.images_per_s):
        best = tensorflow
    log.info("%s: serving with %s", runtime.path, best.name)
    _record(runtime, key, check_name, choice, precision, best, candidates)
    if best is tensorflow:
        return runtime
    return dataclasses.replace(runtime, predict=best.predict, engine=best.engine)


def _checked(runtime: Runtime, key: str, name: str, precision: str, check: np.ndarray, reference: np.ndarray,
             calibration: np.ndarray | None = None) -> Candidate | None:
    """The engine built, loaded and compared with TensorFlow; None (with a log line) if it fails or disagrees."""
    module = ENGINES[name]
    label = f"{name} {precision}"
    try:
        if precision != "fp32" and not openvino.runs_natively(precision):
            log.warning("%s: %s refused: this CPU has no native %s; serving fp32", runtime.path, label, precision)
            return None
        file = _build(runtime, key, name, precision, check if calibration is None else calibration)
        predict = module.load(file, precision)
        with native_stderr_filtered():  # LiteRT's interpreters announce XNNPACK when first run
            probabilities = runtime.probabilities(predict(check))
    except Exception as exc:  # a model an engine cannot convert or run is served by another
        log.warning("%s: %s conversion failed (%s: %s)", runtime.path, label, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None
    candidate = Candidate(label, predict.engine, precision, predict, file,
                          max_dp=float(np.abs(probabilities - reference).max()),
                          top1_agreement=float((probabilities.argmax(1) == reference.argmax(1)).mean()))
    if precision == "fp32" and candidate.max_dp > TOLERANCE:
        log.warning("%s: %s disagrees with TensorFlow (max |Δp| %.1e > %.0e); not served", runtime.path, label,
                    candidate.max_dp, TOLERANCE)
        return None
    if precision != "fp32" and candidate.top1_agreement < MIN_TOP1_AGREEMENT:
        log.warning("%s: %s refused: the same top-1 as fp32 on %.0f%% of %d check images (at least %.0f%% needed); "
                    "serving fp32", runtime.path, label, 100 * candidate.top1_agreement, len(check),
                    100 * MIN_TOP1_AGREEMENT)
        return None
    return candidate


def _build(runtime: Runtime, key: str, name: str, precision: str, calibration: np.ndarray) -> Path:
    tflite = litert.tflite_file(runtime, key)  # every engine starts from it: OpenVINO reads .tflite files
    if name == litert.NAME:
        return tflite
    return openvino.ir_file(tflite, runtime.path, key, precision, calibration)


def _images_per_second(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float = 0.4) -> float:
    predict(batch)  # warm-up: the first call allocates
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(batch)
        count += len(batch)
    return count / (time.perf_counter() - started)


def _decision(check_name: str, choice: str, precision: str) -> str:
    return f"{choice} {precision} {check_name}"


def _record(runtime: Runtime, key: str, check_name: str, choice: str, precision: str, best: Candidate,
            candidates: list[Candidate]) -> None:
    """What serving from the converted files needs to know of the model, and the decision, in the cache."""
    record = cache.read_record(runtime.path, key)
    record.update(format=runtime.format, num_classes=runtime.num_classes, applies_softmax=runtime.applies_softmax,
                  input_size=list(runtime.input_size) if runtime.input_size else None,
                  convention=dataclasses.asdict(runtime.convention) if runtime.convention else None,
                  convention_source=runtime.convention_source)
    engine = best.name.split()[0]
    record.setdefault("decisions", {})[_decision(check_name, choice, precision)] = {
        "engine": engine, "precision": best.precision, "file": best.file.name if best.file else None,
        "version": ENGINES[engine].version() if engine in ENGINES else cache.tensorflow_version(),
        "candidates": {c.name: {"images_per_s": round(c.images_per_s, 1), "max_dp": c.max_dp,
                                "top1_agreement": c.top1_agreement} for c in candidates}}
    cache.write_record(runtime.path, key, record)


@dataclasses.dataclass
class Recorded:
    """A model known from the cache's record alone, with no TensorFlow: its facts now, its engine on serve()."""

    runtime: Runtime  # format, classes, input size and convention; no predict until serve()
    record: dict

    def serve(self, check_name: str, choice: str, precision: str) -> Runtime | None:
        """The runtime with the engine recorded for this check, choice and precision, if its files are cached and
        its engine's version is the one installed; else None (TensorFlow is needed to convert or check)."""
        decision = self.record.get("decisions", {}).get(_decision(check_name, choice, precision))
        module = ENGINES.get(decision["engine"]) if decision else None
        file = cache.find(self.runtime.path, decision["file"]) if module and decision["file"] else None
        if file is None or decision["version"] != module.version():
            return None
        predict = module.load(file, decision["precision"])
        log.info("%s: serving with %s, without TensorFlow (as recorded when it was converted and checked: %s)",
                 self.runtime.path, predict.engine, ", ".join(
                     f"{name} {figures['images_per_s']:.0f} images/s" for name, figures in
                     decision["candidates"].items()))
        return dataclasses.replace(self.runtime, predict=predict, engine=predict.engine)


def recorded(path: Path, key: str | None = None) -> Recorded | None:
    """The model at path (a model file, or a SavedModel's folder) as its cache's record knows it, or None.
    key: its cache.model_key, if the caller has it already."""
    record = cache.read_record(path, key or cache.model_key(path))
    if not record.get("decisions"):
        return None
    convention = record["convention"]

    def unloaded(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("Recorded.serve() gives the runtime its engine")

    return Recorded(Runtime(format=record["format"], path=path, function=None,
                            input_size=tuple(record["input_size"]) if record["input_size"] else None,
                            num_classes=record["num_classes"], applies_softmax=record["applies_softmax"],
                            engine="not loaded", predict=unloaded,
                            convention=InputConvention(**convention) if convention else None,
                            convention_source=record["convention_source"]), record)
