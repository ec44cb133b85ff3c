"""Serve retrained image classifiers: load(conf_path) builds the model class that conf.json names."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from . import quiet  # noqa: F401  (first: TensorFlow's log level must be set before anything imports it)
from . import bundled, uai_modules
from .conf import (ArchJsonConfLoader, Conf, ConfError, JsonConfLoader, RetrainJsonConfLoader, TFJsonConfLoader,
                   read_conf)
from .images import ImageError, Limits
from .labels import LabelsError
from .main_file import import_main_file

# Imported on first use: they load TensorFlow, which only loading a model needs (`import classifier` stays light,
# and `python -m classifier --verbose` can still choose TensorFlow's log level before it loads).
_LAZY = {"ModelError": "formats", "AiUcloudModel": "model", "TFAiUcloudModel": "model",
         "RetrainedClassificationModel": "model"}

__all__ = ["load", "describe", "AiUcloudModel", "TFAiUcloudModel", "RetrainedClassificationModel",
           "ArchJsonConfLoader", "JsonConfLoader",
           "TFJsonConfLoader", "RetrainJsonConfLoader", "Conf", "read_conf", "ConfError", "ModelError",
           "LabelsError", "ImageError", "Limits"]

# The embedded model's conf.json, used when the current folder has none (e.g. `python -m classifier` elsewhere).
DEFAULT_CONF = bundled.DEFAULT_CONF


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(conf_path: str | os.PathLike = "conf.json") -> Any:
    """Reads conf.json, imports its main_file, and returns main_class(conf): a loaded, ready model."""
    conf = read_conf(conf_path)
    exec_conf = JsonConfLoader(conf)
    module = _import_main_file(exec_conf.get_main_file(), conf.path)
    model_class = getattr(module, exec_conf.get_main_class(), None)
    if not isinstance(model_class, type):
        raise ConfError(f"{conf.path}: key http_server.exec.main_class: module {module.__name__} has no "
                        f"class {exec_conf.get_main_class()!r}")
    return model_class(conf)


def describe(model: Any) -> str:
    """One line naming a loaded model, for logs and pages; a user's UAI-style class without describe() gets its
    class name."""
    return model.describe() if hasattr(model, "describe") else type(model).__name__


def _import_main_file(name: str, conf_path: Path) -> ModuleType:
    """main_file is a module in the conf's own folder (main_file.py there, whose sibling modules it may import
    by their plain names, as under UAI) or an installed, importable module. UAI's `uai.*` modules resolve to
    this project's classes unless uai-sdk is installed.

    Nothing else is searched: a conf cannot pull code from an arbitrary path, so whoever can write the conf's
    folder or the Python environment decides what runs, as in UAI.
    """
    uai_modules.provide()
    module = import_main_file(name, conf_path.parent)
    if module is not None:
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name and not name.startswith(f"{exc.name}."):
            raise  # the module exists but one of its own imports is missing: show that, not a conf error
        raise ConfError(f"{conf_path}: key http_server.exec.main_file: no module {name!r} "
                        f"(looked in {conf_path.parent} and for an installed module)") from None
