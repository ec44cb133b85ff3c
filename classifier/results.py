"""Results as plain data: numpy scalars and arrays in what a model returns become Python numbers and lists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Classified:
    """One photo, classified: its top-k [label, probability] pairs, most probable first, and, from a model
    calibrated for "none of these" (conf's none_of_these), whether it is of none of the model's classes (None:
    the model cannot tell)."""

    labels: list[list]
    none_of_these: bool | None = None

    def as_json(self) -> dict:
        """The answer /service and execute_with_verdicts() give: {"labels": pairs, "none_of_these": verdict}."""
        return {"labels": self.labels, "none_of_these": self.none_of_these}


def plain(value: Any) -> Any:
    """value with every numpy scalar (np.float32, np.int64, …) and array turned into Python numbers and lists,
    inside lists, tuples and dicts at any depth; anything else is returned as it is."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    return value
