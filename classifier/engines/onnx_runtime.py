"""ONNX Runtime: an .onnx file run as it is, the reference the other engines are checked against for ONNX models."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import cache
from .litert import threads

NAME = "onnxruntime"
# ONNX's element types, as ONNX Runtime names them, and the numpy types the image tensors are made in.
DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}


def version() -> str:
    return cache.package_version("onnxruntime")


def session(path: Path) -> Any:
    """The model's session on every core (its run() may be called from several threads at once), read into
    memory, as the other engines read theirs: the file may be replaced while it serves."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads()
    options.log_severity_level = 3  # errors only: its warnings name graph optimisations, nothing a user acts on
    return onnxruntime.InferenceSession(Path(path).read_bytes(), options, providers=["CPUExecutionProvider"])


class ONNXRuntimePredictor:
    """A session's model taking the service's NHWC batches whatever its layout: an NCHW model (PyTorch's) gets
    them transposed."""

    def __init__(self, session: Any, input_name: str, output_name: str, nchw: bool):
        self.session, self.output, self.nchw = session, output_name, nchw
        self.input = next(i for i in session.get_inputs() if i.name == input_name)
        self.input_dtype = DTYPES.get(self.input.type, self.input.type)
        self.threads = session.get_session_options().intra_op_num_threads
        self.engine = f"ONNX Runtime {version()} CPU, {self.threads} threads"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.nchw:
            batch = batch.transpose(0, 3, 1, 2)
        return self.session.run([self.output], {self.input.name: np.ascontiguousarray(batch, self.input_dtype)})[0]
