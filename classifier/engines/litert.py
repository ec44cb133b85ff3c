"""The LiteRT engine: a TensorFlow model converted to a .tflite file, run by LiteRT's XNNPACK interpreters."""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..os_threads import name_this_thread
from ..runtime import Runtime
from ..quiet import import_tensorflow, native_stderr_filtered
from . import cache
from .settings import settings

NAME = "litert"
PRECISIONS = ("fp32", "int8")  # int8: full-integer kernels (XNNPACK's), float input and output


def version() -> str:
    return cache.package_version("ai-edge-litert")


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tflite_file(runtime: Runtime, key: str) -> Path:
    """The .tflite file for this model: from the cache when the model's files are unchanged, else converted by
    TensorFlow (any LiteRT version reads it)."""
    return cache.find(runtime.path, f"{key}.tflite") or cache.store(runtime.path, f"{key}.tflite", convert(runtime))


def int8_file(runtime: Runtime, key: str, calibration: np.ndarray) -> Path:
    """The model quantized to full integer by TensorFlow's converter, calibrated on `calibration` (its hash is in
    the file name), with float input and output so that it takes the same tensors as the fp32 model."""
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:12]
    name = f"{key}-int8-{digest}.tflite"
    return cache.find(runtime.path, name) or cache.store(runtime.path, name, convert(runtime, calibration))


def convert(runtime: Runtime, calibration: np.ndarray | None = None) -> bytes:
    """The .tflite model: fp32, or with calibration full-integer int8 (weights and activations)."""
    # The converter wants the object that owns the function's variables; a frozen graph has none.
    tf = import_tensorflow()
    trackable = runtime.keep if isinstance(runtime.keep, tf.Module) else tf.Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([runtime.function], trackable)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def load(tflite: Path, precision: str = "fp32") -> "LiteRTPredictor":
    return LiteRTPredictor(tflite, threads(), settings(NAME)["layout"], precision)


class LiteRTPredictor:
    """Runs a .tflite model in the layout that was fastest on the 2-core CI machine kind when compared.

    Each image runs alone on a lane, an interpreter taken by one image at a time. "per-core" (the default): a lone
    image runs on a lane whose interpreter uses every core (lowest latency), a batch image by image over one
    single-threaded lane per core, in parallel: in the comparison that chose it (EfficientNet-Lite0), 197 img/s
    where one interpreter with 2 threads peaked at 170 (batch 4). "lean": the lone image's lane is also one of
    the batch's, so a model holds one interpreter fewer, each a packed copy of the weights (~26 MB for
    EfficientNet-Lite0): for servers of many models, at some cost under load (docs/performance.md). "shared":
    the whole batch on one interpreter of `threads` threads. With one core, the lone lane is the batch's too.
    """

    def __init__(self, model_path: Path, threads: int, layout: str = "per-core", precision: str = "fp32"):
        from ai_edge_litert.interpreter import Interpreter

        # Held in memory, not mapped from the file: the cache file may be deleted or rewritten while we serve.
        self.path = Path(model_path)
        content = self.path.read_bytes()
        self._make = lambda n_threads: Interpreter(model_content=content, num_threads=n_threads)
        self.threads, self.per_core = threads, layout in ("per-core", "lean")
        # The precision is named as OpenVINO's engine names it: logs, /readyz and the Train tab's report read it.
        self.engine = (f"LiteRT XNNPACK {precision}, {threads} threads"
                       + {"per-core": "", "lean": " (lean)"}.get(layout, " (one interpreter)"))
        with native_stderr_filtered():  # the first interpreter announces XNNPACK when its tensors are allocated
            probe = self._make(threads)
            probe.allocate_tensors()
        given, wanted = probe.get_input_details()[0], probe.get_output_details()[0]
        self.input_shape, self.input_dtype = tuple(int(n) for n in given["shape"]), given["dtype"]
        # A quantized model's int8 input is a float scaled: q = x / scale + zero_point. uint8 inputs take the
        # pixels as they are (the image convention gives them); a quantized output is turned back into floats.
        self._input_scale = given["quantization"] if self.input_dtype == np.int8 else None
        self._output_scale = wanted["quantization"] if wanted["dtype"] in (np.int8, np.uint8) else None
        self._one = (1, *self.input_shape[1:])
        # The probe, with every core, runs a lone image (at one image's shape: made anew if the model's is another).
        first = runner(probe) if self.input_shape == self._one else self._sized(threads, self._one)
        self._whole = {self._one: first}  # "shared": an interpreter by batch shape
        self._whole_lock = threading.Lock()  # an interpreter is not thread-safe
        # The lanes, by preference: the lone image's, and the batch's single-threaded ones (made when a batch first
        # needs them), in one queue in "lean" or on one core.
        self._lone: queue.PriorityQueue = queue.PriorityQueue()
        self._lone.put((0, first))
        lean = layout == "lean" or threads == 1
        self._batch = self._lone if lean else queue.PriorityQueue()
        singles = (threads - 1 if lean else threads) if self.per_core else 0  # beside the lone image's lane
        for order in range(1, singles + 1):
            self._batch.put((order, None))
        self._pool = (ThreadPoolExecutor(threads, thread_name_prefix="litert", initializer=name_this_thread)
                      if self.per_core else None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._as_input(batch)
        if not self.per_core:
            with self._whole_lock:
                run = self._whole.get(batch.shape)
                if run is None:
                    run = self._whole[batch.shape] = self._sized(self.threads, batch.shape)
                out = run(batch)
        elif len(batch) == 1:
            out = self._on_a_lane(self._lone, batch)
        else:
            out = np.concatenate(list(self._pool.map(lambda image: self._on_a_lane(self._batch, image[None]), batch)))
        if self._output_scale is not None:
            scale, zero_point = self._output_scale
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    def _as_input(self, batch: np.ndarray) -> np.ndarray:
        if self._input_scale is not None:
            scale, zero_point = self._input_scale
            batch = np.clip(np.round(np.asarray(batch, np.float32) / scale + zero_point), -128, 127)
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def _on_a_lane(self, lanes: queue.PriorityQueue, image: np.ndarray) -> np.ndarray:
        """One image on the first free lane of these (the one of every core first, when it is among them)."""
        order, run = lanes.get()
        try:
            if run is None:
                run = self._sized(1, self._one)
            return run(image)
        finally:
            lanes.put((order, run))

    def _sized(self, n_threads: int, shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
        """A new interpreter allocated for inputs of this shape, as a function."""
        interpreter = self._make(n_threads)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], shape)
        interpreter.allocate_tensors()
        return runner(interpreter)


def runner(interpreter: Any) -> Callable[[np.ndarray], np.ndarray]:
    """An allocated interpreter as a function of its input (which must have the shape it was allocated for)."""
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]  # looked up once, not per call

    def run(images: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(input_index, images)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()  # the buffer is reused by the next call
    return run
