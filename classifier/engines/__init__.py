"""Engines: what runs a model's batches (TensorFlow, ONNX Runtime, LiteRT, OpenVINO), and the choice among those
that agree.

Every engine module has the same face: NAME, PRECISIONS, version(), a cached file made from the model, and
load(file, precision) → a callable, float32 [N, H, W, 3] → raw outputs [N, classes]. The model's own framework is
the reference (TensorFlow; ONNX Runtime for an .onnx file): an engine serves only if it agrees with it on the check
images (fp32: within TOLERANCE in probability; bf16 and int8: the same top-1 for MIN_TOP1_AGREEMENT of them);
timing.py chooses among them as serving runs them. What was chosen is recorded beside the model, with the CPU, so
the next start serves it without importing the reference (Recorded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime import Runtime
from ..images import InputConvention
from ..quiet import native_stderr_filtered
from . import cache, litert, onnx_runtime, openvino, timing

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |Δprobability| against TensorFlow for an fp32 engine to serve
MIN_TOP1_AGREEMENT = 0.97  # share of the check images on which bf16 or int8 must give fp32's top-1
# Simplest first: the chooser keeps the first that agrees unless a later one is clearly faster (timing.MARGIN);
# TensorFlow comes last (it costs ~900 MB more memory and seconds more at every start).
ENGINES = {litert.NAME: litert, openvino.NAME: openvino}
# What each reference's models convert to: LiteRT's converter is TensorFlow's; OpenVINO reads .tflite and .onnx.
CONVERTS_TO = {"tensorflow": (litert.NAME, openvino.NAME), onnx_runtime.NAME: (openvino.NAME,)}
REFERENCE_PACKAGES = {"tensorflow": ("tensorflow-cpu", "tensorflow"), onnx_runtime.NAME: ("onnxruntime",)}
REFERENCE_NAMES = {"tensorflow": "TensorFlow", onnx_runtime.NAME: "ONNX Runtime"}  # for log lines


@dataclasses.dataclass
class Candidate:
    name: str  # "litert fp32", "openvino bf16", …
    engine: str  # the module's NAME, or "tensorflow"
    precision: str
    predict: Callable[[np.ndarray], np.ndarray]
    file: Path | None = None
    images_per_s: float = 0.0
    max_dp: float = 0.0
    top1_agreement: float = 1.0


def accelerate(runtime: Runtime, check: np.ndarray, check_name: str = "", choice: str = "auto",
               precision: str = "fp32", calibration: np.ndarray | None = None, key: str | None = None,
               busy: Callable[[], None] | None = None) -> Runtime:
    """The model run by the engine allowed by choice and precision that agrees with TensorFlow (runtime) on
    `check` and serves fastest on this machine (timing.py: batches as the batcher makes them, `busy` running
    beside them, the simplest engine kept unless another is clearly faster); runtime itself if none agrees. The
    decision is recorded under check_name (what the check fed) with this CPU's description.
    key: the model's cache.model_key, if the caller has it already (hashing the files is not free)."""
    key = key or cache.model_key(runtime.path)
    reference = runtime.probabilities(runtime.predict(check))
    names = [name for name in (ENGINES if choice == "auto" else [choice]) if name in CONVERTS_TO[runtime.reference]]
    if choice != "auto" and not names:
        log.warning("%s: %s cannot run this model; %s serves it", runtime.path, choice,
                    REFERENCE_NAMES[runtime.reference])
    fp32 = [c for c in (_checked(runtime, key, name, "fp32", check, reference) for name in names) if c]
    reduced = []
    if precision != "fp32":
        reduced = [c for c in (_checked(runtime, key, name, precision, check, reference, calibration)
                               for name in names if precision in ENGINES[name].PRECISIONS) if c]
    as_loaded = Candidate(f"{runtime.reference} fp32", runtime.reference, "fp32", runtime.predict)
    # The precision asked for, if it passed its guard; else fp32, where the reference may win if auto may choose it
    # (not when converting for an install without it: the Docker image's runtime stage has no TensorFlow).
    reference_may_serve = choice == "auto" and os.environ.get(CONVERTED_ONLY_VARIABLE) != "1"
    contenders = reduced or [*fp32, *([as_loaded] if reference_may_serve or not fp32 else [])]
    best, reason = _timed(runtime, contenders, check, busy)
    _record(runtime, key, check_name, choice, precision, best, contenders, reason)
    _store_reference(runtime.path, key, check_name, reference)
    if best is as_loaded:
        return runtime
    return dataclasses.replace(runtime, predict=best.predict, engine=best.predict.engine)


# Set (to "1") by `python -m classifier --convert --converted-only`: choose among the converted engines alone.
CONVERTED_ONLY_VARIABLE = "CLASSIFIER_CONVERTED_ONLY"


def _timed(runtime: Runtime, contenders: list[Candidate], check: np.ndarray,
           busy: Callable[[], None] | None) -> tuple[Candidate, str]:
    """The contenders timed side by side as serving runs them, each figure logged; the one chosen, and why."""
    if len(contenders) == 1:  # a runtime named in conf (or the only one that agrees): nothing to choose between
        log.info("%s: serving with %s, the only candidate (not timed)", runtime.path, contenders[0].name)
        return contenders[0], f"{contenders[0].name}: the only candidate"
    with native_stderr_filtered():
        rates = timing.side_by_side({c.name: c.predict for c in contenders}, check, busy)
    for candidate in contenders:
        candidate.images_per_s = rates[candidate.name]
        log.info("%s: %s %.0f images/s serving, max |Δp| against %s %.1e, top-1 agreement %.0f%%",
                 runtime.path.name, candidate.name, candidate.images_per_s, REFERENCE_NAMES[runtime.reference],
                 candidate.max_dp,
                 100 * candidate.top1_agreement)
    chosen, reason = timing.choose(rates, [c.name for c in contenders])
    log.info("%s: serving with %s: %s", runtime.path, chosen, reason)
    return next(c for c in contenders if c.name == chosen), reason


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
        predict = runtime.fitted(module.load(file, precision))
        with native_stderr_filtered():  # LiteRT's interpreters announce XNNPACK when first run
            probabilities = runtime.probabilities(predict(check))
    except Exception as exc:  # a model an engine cannot convert or run is served by another
        log.warning("%s: %s conversion failed (%s: %s)", runtime.path, label, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None
    candidate = Candidate(label, name, precision, predict, file)
    return candidate if _agrees(runtime, candidate, probabilities, reference) else None


def _agrees(runtime: Runtime, candidate: Candidate, probabilities: np.ndarray, reference: np.ndarray) -> bool:
    """Whether the candidate's probabilities on the check images are TensorFlow's (fp32: within TOLERANCE; bf16
    and int8: the same top-1 on MIN_TOP1_AGREEMENT of them); its figures are set, and a refusal logged."""
    label, precision = candidate.name, candidate.precision
    candidate.max_dp = float(np.abs(probabilities - reference).max())
    classes = runtime.num_classes  # a "none of these" column may follow the classes: the fp32 tolerance covers it
    candidate.top1_agreement = float((probabilities[:, :classes].argmax(1) == reference[:, :classes].argmax(1)).mean())
    if precision == "fp32" and candidate.max_dp > TOLERANCE:
        log.warning("%s: %s disagrees with %s (max |Δp| %.1e > %.0e); not served", runtime.path, label,
                    REFERENCE_NAMES[runtime.reference], candidate.max_dp, TOLERANCE)
        return False
    extra = probabilities[:, classes:] > 0.5, reference[:, classes:] > 0.5  # "none of these" at its calibrated 0.5
    if precision != "fp32" and extra[0].size and (extra[0] == extra[1]).all(1).mean() < MIN_TOP1_AGREEMENT:
        log.warning("%s: %s refused: it changes the \"none of these\" verdict on %.0f%% of %d check images; serving "
                    "fp32", runtime.path, label, 100 * (1 - (extra[0] == extra[1]).all(1).mean()), len(reference))
        return False
    if precision != "fp32" and candidate.top1_agreement < MIN_TOP1_AGREEMENT:
        log.warning("%s: %s refused: the same top-1 as fp32 on %.0f%% of %d check images (at least %.0f%% needed); "
                    "serving fp32", runtime.path, label, 100 * candidate.top1_agreement, len(reference),
                    100 * MIN_TOP1_AGREEMENT)
        return False
    return True


def _build(runtime: Runtime, key: str, name: str, precision: str, calibration: np.ndarray) -> Path:
    if runtime.reference == onnx_runtime.NAME:  # OpenVINO reads the .onnx itself
        return openvino.ir_file(runtime.path, runtime.path, key, precision, calibration, runtime.nchw)
    if name == litert.NAME and precision == "int8":
        return litert.int8_file(runtime, key, calibration)
    tflite = litert.tflite_file(runtime, key)  # every engine starts from it: OpenVINO reads .tflite files
    if name == litert.NAME:
        return tflite
    return openvino.ir_file(tflite, runtime.path, key, precision, calibration)


def _decision(check_name: str, choice: str, precision: str) -> str:
    return f"{choice} {precision} {check_name}"


def _record(runtime: Runtime, key: str, check_name: str, choice: str, precision: str, best: Candidate,
            candidates: list[Candidate], reason: str) -> None:
    """What serving from the converted files needs to know of the model, and the decision, in the cache."""
    record = cache.read_record(runtime.path, key)
    record.update(converted_by=f"{runtime.reference} {_version(runtime.reference)}", format=runtime.format,
                  reference=runtime.reference,
                  num_classes=runtime.num_classes, applies_softmax=runtime.applies_softmax,
                  extra_columns=runtime.extra_columns,
                  input_size=list(runtime.input_size) if runtime.input_size else None,
                  convention=dataclasses.asdict(runtime.convention) if runtime.convention else None,
                  convention_source=runtime.convention_source, fixed_batch=runtime.fixed_batch)
    record.setdefault("decisions", {})[_decision(check_name, choice, precision)] = _decided(best, candidates, reason)
    cache.write_record(runtime.path, key, record)


def _decided(best: Candidate, candidates: list[Candidate], reason: str) -> dict:
    """A decision as the record keeps it: the engine chosen, why, on which CPU, and every candidate's figures and
    file, simplest first (so that another CPU can time them again without TensorFlow)."""
    return {"engine": best.engine, "precision": best.precision, "file": best.file.name if best.file else None,
            "version": _version(best.engine), "cpu": timing.cpu(), "reason": reason,
            "candidates": {c.name: {"engine": c.engine, "precision": c.precision,
                                    "file": c.file.name if c.file else None, "version": _version(c.engine),
                                    "images_per_s": round(c.images_per_s, 1), "max_dp": c.max_dp,
                                    "top1_agreement": c.top1_agreement} for c in candidates}}


def _version(engine: str) -> str:
    return ENGINES[engine].version() if engine in ENGINES else cache.package_version(*REFERENCE_PACKAGES[engine])


def _store_reference(path: Path, key: str, check_name: str, reference: np.ndarray) -> None:
    """TensorFlow's probabilities on the check images, kept so that a re-timing elsewhere can check again."""
    buffer = io.BytesIO()
    np.save(buffer, reference.astype(np.float32))
    try:
        cache.store(path, _reference_name(key, check_name), buffer.getvalue())
    except OSError as exc:
        log.info("cannot keep the reference answers of %s (%s)", path, exc)


def _reference_name(key: str, check_name: str) -> str:
    return f"{key}-{hashlib.sha256(check_name.encode()).hexdigest()[:12]}.reference.npy"


@dataclasses.dataclass
class Recorded:
    """A model known from the cache's record alone, with no TensorFlow: its facts now, its engine on serve()."""

    runtime: Runtime  # format, classes, input size and convention; no predict until serve()
    record: dict
    key: str  # the model's cache.model_key: the record's and the converted files' names

    def serve(self, check_name: str, choice: str, precision: str, check: Callable[[], np.ndarray] | None = None,
              busy: Callable[[], None] | None = None, retime: bool = False) -> Runtime | None:
        """The runtime with the engine recorded for this check, choice and precision, if its files are cached and
        its engine's version is the one installed; else None (TensorFlow is needed to convert or check).

        A decision made on another CPU (or none recorded: an older cache), or retime=True, is timed again here
        from the converted files, with no TensorFlow: each candidate is checked again against the reference
        answers kept with the record, timed as accelerate() times them on the images check() makes (only then),
        and the record updated."""
        decision = self.record.get("decisions", {}).get(_decision(check_name, choice, precision))
        # The reference chosen: it serves, if installed; if not (a serving-only install), the others are timed.
        reference_chosen = bool(decision) and decision["engine"] not in ENGINES
        if not decision or (reference_chosen and (check is None or cache.installed(self.runtime.reference))):
            return None
        here = timing.cpu()
        if check is not None and (retime or reference_chosen or decision.get("cpu") != here):  # images made then
            decision = self._retimed(check_name, choice, precision, decision, check(), busy, here, retime)
            if decision is None:
                return None
        module = ENGINES[decision["engine"]]
        file = cache.find(self.runtime.path, decision["file"]) if decision["file"] else None
        if file is None or decision["version"] != module.version():
            return None
        predict = module.load(file, decision["precision"])
        log.info("%s: serving with %s, without %s (%s)", self.runtime.path, predict.engine,
                 REFERENCE_NAMES[self.runtime.reference],
                 decision.get("reason") or ", ".join(f"{name} {figures['images_per_s']:.0f} images/s" for name, figures
                                                     in decision["candidates"].items()))
        return dataclasses.replace(self.runtime, predict=predict, engine=predict.engine)

    def _retimed(self, check_name: str, choice: str, precision: str, decision: dict, check: np.ndarray,
                 busy: Callable[[], None] | None, here: dict, asked: bool) -> dict | None:
        """The decision made again on this machine from the recorded candidates' files; None if they are gone
        (TensorFlow then converts and checks them again)."""
        path = self.runtime.path
        why = _why_again(decision, asked)
        log.info("%s: timing the engines again on %s (%d cores, %s): %s", path, here["model"], here["cores"],
                 " ".join(here["flags"]), why)
        reference_file = cache.find(path, _reference_name(self.key, check_name))
        reference = np.load(reference_file) if reference_file else None
        contenders = []
        for name, figures in decision["candidates"].items():
            module = ENGINES.get(figures.get("engine", name.split()[0]))
            file = cache.find(path, figures["file"]) if module and figures.get("file") else None
            if file is None or figures.get("version") != module.version():
                continue
            candidate = Candidate(name, module.NAME, figures["precision"],
                                  self.runtime.fitted(module.load(file, figures["precision"])), file)
            if reference is not None and len(reference) == len(check):
                with native_stderr_filtered():
                    if not _agrees(self.runtime, candidate, self.runtime.probabilities(candidate.predict(check)),
                                   reference):
                        continue
            contenders.append(candidate)
        if not contenders:
            return None
        best, reason = _timed(self.runtime, contenders, check, busy)
        decided = _decided(best, contenders, reason)
        self.record["decisions"][_decision(check_name, choice, precision)] = decided
        cache.write_record(path, self.key, self.record)
        return decided


def _why_again(decision: dict, asked: bool) -> str:
    """Why a recorded decision is timed again: for the log line."""
    if asked:
        return "asked to"
    if decision["engine"] not in ENGINES:
        return f"{REFERENCE_NAMES.get(decision['engine'], decision['engine'])} was chosen, and is not installed here"
    if not decision.get("cpu"):
        return "recorded before CPUs were recorded"
    cpu = decision["cpu"]
    return f"recorded on {cpu['model']} ({cpu['cores']} cores, {' '.join(cpu['flags'])})"


def recorded(path: Path, key: str | None = None) -> Recorded | None:
    """The model at path (a model file, or a SavedModel's folder) as its cache's record knows it, or None.
    key: its cache.model_key, if the caller has it already."""
    key = key or cache.model_key(path)
    record = cache.read_record(path, key)
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
                            convention_source=record["convention_source"], fixed_batch=record.get("fixed_batch"),
                            reference=record.get("reference", "tensorflow"),
                            extra_columns=record.get("extra_columns", 0)),
                    record, key)
