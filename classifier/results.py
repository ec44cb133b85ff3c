"""Results as plain data: numpy scalars and arrays in what a model returns become Python numbers and lists."""
from __future__ import annotations

from typing import Any

import numpy as np


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
