"""A loaded model as one callable: a batch in its input convention → one probability row per image, whatever
its format (formats.py loads it) and whatever engine runs it (engines/ may replace its call)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .images import InputConvention
from .quiet import import_tensorflow


@dataclass
class Runtime:
    """A loaded model: call it with a batch in its input convention to get one probability row per image."""

    format: str
    path: Path
    function: Any  # a TensorFlow ConcreteFunction, [N, H, W, 3] → [N, classes]; None for a .tflite or .onnx
    input_size: tuple[int, int] | None  # (width, height) when the model fixes it, else None
    keep: Any = None  # what the function needs alive: a SavedModel's variables, a Keras model
    num_classes: int = 0
    applies_softmax: bool = False  # True when the model outputs logits and softmax is applied here
    engine: str = "TensorFlow"  # what runs it: TensorFlow, or the engine engines.accelerate chose
    predict: Callable[[np.ndarray], np.ndarray] = None  # the raw model call; the TF function unless replaced
    convention: InputConvention | None = None  # what the model itself says of its input, if anything
    convention_source: str = ""  # where that came from, for the start-up log
    input_dtype: str = "float32"  # the model's input type: an integer one (uint8, int32) takes raw pixels
    labels: list[str] | None = None  # labels the model file carries (a .tflite's packed labels file)
    fixed_batch: int | None = None  # 1 when the model's input fixes its batch at one image (many exports do)
    reference: str = "tensorflow"  # the engine that runs it as loaded, which any other must agree with
    nchw: bool = False  # its input is [N, 3, H, W] (PyTorch's layout): predict takes NHWC batches all the same
    extra_columns: int = 0  # outputs after the num_classes probabilities: a calibrated model's "none of these"

    def __post_init__(self) -> None:
        if self.predict is None:
            constant = import_tensorflow().constant  # here, once: a call may run inside quiet's stderr filter
            self.predict = lambda batch: self.function(constant(batch)).numpy()
        self.predict = self.fitted(self.predict)

    def fitted(self, predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """predict (this model's, or an engine's made from it) as the model can run it: one image at a time when
        its batch is fixed at 1, since a batch-1 export may reshape to [1, …] inside, and fail on more."""
        if self.fixed_batch != 1 or isinstance(predict, OneAtATime):
            return predict
        return OneAtATime(predict)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.probabilities(self.predict(batch))

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """The model's raw outputs as probabilities (softmax if it gives logits), any extra columns after them."""
        if self.applies_softmax:
            logits, extra = out[:, :self.num_classes], out[:, self.num_classes:]
            out = np.exp(logits - logits.max(axis=1, keepdims=True))
            out = np.concatenate([out / out.sum(axis=1, keepdims=True), extra], axis=1)
        return out


class OneAtATime:
    """A model call that runs each image of a batch alone and stacks the outputs (the batcher still batches: one
    call of this, one decode pool, one answer each); the engine's attributes (its name, threads) show through."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        self.predict = predict

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.predict(batch[i:i + 1])) for i in range(len(batch))])

    def __getattr__(self, name: str) -> Any:
        if name == "predict":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.predict, name)
