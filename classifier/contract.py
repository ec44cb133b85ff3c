"""What serving needs of a model, typed (ServableModel), and the one adapter for a UAI class with only execute().

A RetrainedClassificationModel is a ServableModel as it is. A user's UAI-style class (its own execute(), maybe
none of the three steps) is wrapped once, by `servable()`, in UaiClass: serving then reads every fact from the
model it serves, never probing it with getattr at each use.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .images import Limits

DEFAULT_TOP_K = 5
STEPS = ("preprocess", "forward", "postprocess")


@runtime_checkable
class ServableModel(Protocol):
    """The model a server serves: its facts, and either the three steps (gives_probabilities) or execute()."""

    conf: dict
    labels: Sequence[str]
    top_k: int
    limits: Limits
    version: int | None  # the version folder serving (None: a model folder without versions)
    model_dir: str | None
    gives_probabilities: bool  # preprocess → forward → postprocess; else execute() alone
    none_of_these_above: float | None  # the calibrated "none of these" threshold (None: no verdict)

    def preprocess(self, item: Any) -> np.ndarray: ...

    def forward(self, batch: np.ndarray) -> np.ndarray: ...

    def postprocess(self, row: np.ndarray) -> list: ...

    def execute(self, data: Sequence[Any], batch_size: int) -> list: ...

    def describe(self) -> str: ...


class UaiClass:
    """A user's UAI-style class as a ServableModel, wrapped once: its facts read once (its own where it has
    them, the defaults otherwise); execute() passed through, and the three steps too where it has them (a class
    with only execute() gives its own results, not probabilities)."""

    none_of_these_above = None

    def __init__(self, model: Any):
        self.wrapped = model
        self.conf = getattr(model, "conf", None) or {}
        self.labels = list(getattr(model, "labels", []))
        self.top_k = getattr(model, "top_k", DEFAULT_TOP_K)
        self.limits = getattr(model, "limits", None) or Limits()
        self.version = getattr(model, "version", None)
        self.model_dir = getattr(model, "model_dir", None)
        self.gives_probabilities = all(callable(getattr(model, step, None)) for step in STEPS)

    def execute(self, data: Sequence[Any], batch_size: int) -> list:
        return self.wrapped.execute(data, batch_size)

    def describe(self) -> str:
        describe = getattr(self.wrapped, "describe", None)
        return describe() if callable(describe) else type(self.wrapped).__name__

    def preprocess(self, item: Any) -> np.ndarray:
        return self._step("preprocess")(item)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self._step("forward")(batch)

    def postprocess(self, row: np.ndarray) -> list:
        return self._step("postprocess")(row)

    def __getattr__(self, name: str) -> Any:  # the class's own other attributes (input_size, convention, …)
        return getattr(self.wrapped, name)

    def _step(self, name: str) -> Any:
        if not self.gives_probabilities:
            raise TypeError(f"{type(self.wrapped).__name__} has only execute(), not {name}()")
        return getattr(self.wrapped, name)


def servable(model: Any) -> ServableModel:
    """The model as it is, if it is a ServableModel (a RetrainedClassificationModel is); else wrapped once."""
    return model if isinstance(model, (ServableModel, UaiClass)) else UaiClass(model)
