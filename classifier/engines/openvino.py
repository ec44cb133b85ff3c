"""The OpenVINO engine: the model's .tflite read by OpenVINO, compiled for this CPU in fp32, bf16 or int8."""
from __future__ import annotations

import hashlib
import logging
import queue
import tempfile
from pathlib import Path

import numpy as np

from . import cache
from .litert import threads
from .settings import settings

log = logging.getLogger(__name__)

NAME = "openvino"
PRECISIONS = ("fp32", "bf16", "int8")
CALIBRATION_SIZE = 300  # NNCF's own default subset size


def version() -> str:
    return cache.package_version("openvino")


def runs_natively(precision: str) -> bool:
    """Whether this CPU computes in that precision itself (bf16: AVX512-BF16 or AMX); else it is only emulated,
    slower than fp32."""
    if precision == "fp32":
        return True
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return precision.upper() in capabilities


def ir_file(source: Path, model_path: Path, key: str, precision: str, calibration: np.ndarray | None = None,
            nchw: bool = False) -> Path:
    """The model as OpenVINO's IR (.xml + .bin), read from its .tflite file (OpenVINO's TFLite front end reads
    every format we convert, and needs no TensorFlow) or its .onnx file; an NCHW model's input made NHWC in the
    graph, as the service's batches come. int8: quantized by NNCF on the calibration images; the file name holds
    their hash. bf16 shares the fp32 file: it is a compile-time setting."""
    suffix = ""
    if precision == "int8":
        suffix = "-int8-" + hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:12]
    name = f"{key}.openvino-{version()}{suffix}.xml"
    found = cache.find(model_path, name)
    if found and found.with_suffix(".bin").is_file():
        return found
    import openvino as ov

    model = ov.convert_model(str(source))
    if nchw:  # a transpose folded into the first layer: cheaper than one in numpy per batch
        steps = ov.preprocess.PrePostProcessor(model)
        steps.input().tensor().set_layout(ov.Layout("NHWC"))
        steps.input().model().set_layout(ov.Layout("NCHW"))
        model = steps.build()
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset(list(calibration[:, None])), subset_size=len(calibration))
    with tempfile.TemporaryDirectory() as folder:
        ov.save_model(model, Path(folder) / "model.xml", compress_to_fp16=False)  # exact weights; fp16 is lossy
        # The weights first: an .xml in the cache always has its .bin.
        cache.store(model_path, Path(name).with_suffix(".bin").name, (Path(folder) / "model.bin").read_bytes())
        return cache.store(model_path, name, (Path(folder) / "model.xml").read_bytes())


def load(xml: Path, precision: str = "fp32") -> "OpenVINOPredictor":
    return OpenVINOPredictor(xml, precision, threads())


class OpenVINOPredictor:
    """One compiled model for the latency hint (each call's batch spread over every core), with two infer requests
    so that two callers (the batcher and the explainer) never wait for one another's Python side."""

    def __init__(self, xml: Path, precision: str, n_threads: int):
        import openvino as ov

        self.path, self.precision = Path(xml), precision
        core = ov.Core()
        # Read into memory: the cache files may be replaced while we serve.
        model = core.read_model(Path(xml).read_bytes(), ov.Tensor(np.frombuffer(
            Path(xml).with_suffix(".bin").read_bytes(), np.uint8)))
        hint = "bf16" if precision == "bf16" else "f32"  # int8 layers run in int8 whatever this says
        self._compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": n_threads, "INFERENCE_PRECISION_HINT": hint, **settings(NAME)})
        self._input_dtype = self._compiled.input(0).get_element_type().to_dtype()  # the model's (uint8 …)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(2):
            self._requests.put(self._compiled.create_infer_request())
        self.threads = n_threads
        self.engine = f"OpenVINO {version()} CPU {precision}, {n_threads} threads"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            return request.infer({0: np.ascontiguousarray(batch, self._input_dtype)})[0].copy()
        finally:
            self._requests.put(request)
