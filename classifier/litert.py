"""The fast engine: a loaded TensorFlow model converted to LiteRT with XNNPACK, cached on disk, checked against TF."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from .formats import Runtime
from .images import InputConvention
from .quiet import import_tensorflow, native_stderr_filtered

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |Δprobability| against TensorFlow for the LiteRT model to be used
CACHE_FOLDER = ".litert"
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "classifier" / "litert"


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def accelerate(runtime: Runtime, check: np.ndarray, check_name: str = "") -> Runtime:
    """The same model run by LiteRT, if it converts and agrees with TensorFlow on `check`; else `runtime`. An
    agreement is recorded beside the converted model under check_name (the input convention the check used), so
    that the next start serves it without TensorFlow (from_record)."""
    try:
        model_path = converted(runtime)
        lite = LiteRTPredictor(model_path, threads())
        with native_stderr_filtered():  # LiteRT's first interpreter announces XNNPACK
            delta = float(np.abs(lite(check) - runtime.predict(check)).max())
    except Exception as exc:  # a model LiteRT cannot convert or run is served by TensorFlow, as before
        log.warning("%s: LiteRT conversion failed (%s: %s); serving with TensorFlow", runtime.path,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return runtime
    if delta > TOLERANCE:
        log.warning("%s: LiteRT disagrees with TensorFlow (max |Δp| %.1e > %.0e); serving with TensorFlow",
                    runtime.path, delta, TOLERANCE)
        return runtime
    engine = f"LiteRT XNNPACK, {lite.threads} threads"
    log.info("%s: serving with %s (max |Δp| against TensorFlow %.1e on %d images)", runtime.path, engine, delta,
             len(check))
    _record(model_path, runtime, check_name, delta)
    return dataclasses.replace(runtime, predict=lite, engine=engine)


def from_record(path: Path) -> tuple[Runtime, dict[str, float]] | None:
    """The model at path (a model file, or a SavedModel's folder) run by its converted LiteRT file, with no
    TensorFlow at all, and the agreements with TensorFlow recorded for it (by check name): if the file is cached
    for the model's current files and the TensorFlow installed. Else None."""
    key = model_key(path)
    for folder in _cache_folders(path):
        flat, record = folder / f"{key}.tflite", folder / f"{key}.json"
        try:
            known = json.loads(record.read_text(encoding="utf-8")) if flat.is_file() else None
        except (OSError, ValueError):
            known = None
        if not known or not known.get("checks"):
            continue
        lite = LiteRTPredictor(flat, threads())
        convention = known["convention"]
        return Runtime(format=known["format"], path=path, function=None,
                       input_size=tuple(known["input_size"]) if known["input_size"] else None,
                       num_classes=known["num_classes"], applies_softmax=known["applies_softmax"],
                       engine=f"LiteRT XNNPACK, {lite.threads} threads", predict=lite,
                       convention=InputConvention(**convention) if convention else None,
                       convention_source=known["convention_source"]), known["checks"]
    return None


def _record(model_path: Path, runtime: Runtime, check_name: str, delta: float) -> None:
    """What serving from the converted file needs to know of the model, and its checks, beside the file."""
    record = model_path.with_suffix(".json")
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known.update(format=runtime.format, num_classes=runtime.num_classes, applies_softmax=runtime.applies_softmax,
                 input_size=list(runtime.input_size) if runtime.input_size else None,
                 convention=dataclasses.asdict(runtime.convention) if runtime.convention else None,
                 convention_source=runtime.convention_source)
    known.setdefault("checks", {})[check_name] = delta
    try:
        _write_atomically(record, json.dumps(known, indent=1).encode())
    except OSError as exc:
        log.info("cannot record the LiteRT check in %s (%s)", record.parent, exc)


def converted(runtime: Runtime) -> Path:
    """The .tflite file for this model: from the cache when the model's files are unchanged, else converted."""
    key = model_key(runtime.path)
    for folder in _cache_folders(runtime.path):
        cached = folder / f"{key}.tflite"
        if cached.is_file():
            return cached
    flat = convert(runtime)
    for folder in _cache_folders(runtime.path):  # beside the model, else (read-only) the user's cache
        try:
            _write_atomically(folder / f"{key}.tflite", flat)
            return folder / f"{key}.tflite"
        except OSError as exc:
            log.info("cannot cache the LiteRT model in %s (%s)", folder, exc)
    raise OSError("no writable folder for the LiteRT model")


def _cache_folders(model_path: Path) -> tuple[Path, Path]:
    model_dir = model_path if model_path.is_dir() else model_path.parent
    return model_dir / CACHE_FOLDER, USER_CACHE


def _write_atomically(path: Path, content: bytes) -> None:
    """Never a half-written cache entry: a temporary file in the same folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tensorflow_version() -> str:
    """The installed TensorFlow's version, from its package metadata (importing TensorFlow costs ~1 GB)."""
    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def model_key(model_path: Path) -> str:
    """A hash of the model's files (and the TF version that converts them): a changed model is reconverted."""
    digest = hashlib.sha256(f"{tensorflow_version()}|".encode())
    files = [model_path] if model_path.is_file() else sorted(
        p for p in model_path.rglob("*") if p.is_file() and CACHE_FOLDER not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(model_path) if model_path.is_dir() else path.name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def convert(runtime: Runtime) -> bytes:
    # The converter wants the object that owns the function's variables; a frozen graph has none.
    tf = import_tensorflow()
    trackable = runtime.keep if isinstance(runtime.keep, tf.Module) else tf.Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([runtime.function], trackable)
    return converter.convert()


class LiteRTPredictor:
    """Runs a .tflite model in the layout that was fastest on the 2-core CI machine kind when compared.

    A lone image runs on one interpreter that uses every core (lowest latency). A batch is spread image by image
    over one single-threaded interpreter per core, in parallel: in that comparison (EfficientNet-Lite0) 197
    img/s, where one interpreter with 2 threads peaked at 170 (batch 4) and fell at larger batches.
    """

    def __init__(self, model_path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        # Held in memory, not mapped from the file: the cache file may be deleted or rewritten while we serve.
        content = Path(model_path).read_bytes()
        self._make = lambda n_threads: Interpreter(model_content=content, num_threads=n_threads)
        self.threads = threads
        with native_stderr_filtered():  # the first interpreter announces XNNPACK when its tensors are allocated
            probe = self._make(1)
            probe.allocate_tensors()
        given, wanted = probe.get_input_details()[0], probe.get_output_details()[0]
        self.input_shape, self.input_dtype = tuple(given["shape"]), given["dtype"]
        # A quantized model's int8 input is a float scaled: q = x / scale + zero_point. uint8 inputs take the
        # pixels as they are (the image convention gives them); a quantized output is turned back into floats.
        self._input_scale = given["quantization"] if self.input_dtype == np.int8 else None
        self._output_scale = wanted["quantization"] if wanted["dtype"] in (np.int8, np.uint8) else None
        self._solo: dict[tuple, object] = {}  # by input shape
        self._solo_lock = threading.Lock()  # an interpreter is not thread-safe
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="litert")
        self._local = threading.local()  # each pool thread's own single-threaded interpreters

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._as_input(batch)
        if len(batch) == 1 or self.threads == 1:
            with self._solo_lock:
                out = np.concatenate([self._prepared(self._solo, self.threads, image[None])(image[None])
                                      for image in batch])
        else:
            out = np.concatenate(list(self._pool.map(self._run_alone, batch)))
        if self._output_scale is not None:
            scale, zero_point = self._output_scale
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    def _as_input(self, batch: np.ndarray) -> np.ndarray:
        if self._input_scale is not None:
            scale, zero_point = self._input_scale
            batch = np.clip(np.round(np.asarray(batch, np.float32) / scale + zero_point), -128, 127)
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def _run_alone(self, image: np.ndarray) -> np.ndarray:
        if not hasattr(self._local, "interpreters"):
            self._local.interpreters = {}
        return self._prepared(self._local.interpreters, 1, image[None])(image[None])

    def _prepared(self, cache: dict, n_threads: int, batch: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """An interpreter sized for batch's shape, as a function; made once per shape and kept in cache."""
        run = cache.get(batch.shape)
        if run is None:
            interpreter = self._make(n_threads)
            input_index = interpreter.get_input_details()[0]["index"]
            output_index = interpreter.get_output_details()[0]["index"]  # looked up once, not per call
            interpreter.resize_tensor_input(input_index, batch.shape)
            interpreter.allocate_tensors()

            def run(images: np.ndarray) -> np.ndarray:
                interpreter.set_tensor(input_index, images)
                interpreter.invoke()
                return interpreter.get_tensor(output_index).copy()  # the buffer is reused by the next call

            cache[batch.shape] = run
        return run
