"""conf.json: the UAI-format configuration, read by loader classes named and built as in UAI Inference."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engines import CONVERTS_TO, ENGINES
from .images import ALLOWED_FORMATS, RESIZES, Limits

# auto: the fastest that agrees (classifier.engines); tensorflow and onnxruntime: the model's own, unconverted.
RUNTIMES = ("auto", "tensorflow", "onnxruntime", "litert", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")  # bf16: OpenVINO; int8: OpenVINO or LiteRT; guarded by a top-1 check


def runtimes_for(precision: str) -> tuple[str, ...]:
    """The conf's runtime values that can serve a precision: auto, each engine whose module lists it (its
    PRECISIONS, the one table), and for fp32 the references, which run models as they were loaded."""
    references = tuple(CONVERTS_TO) if precision == "fp32" else ()
    return ("auto", *(name for name, module in ENGINES.items() if precision in module.PRECISIONS), *references)

_MISSING = object()
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)  # a plain dotted module name
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)  # one URL path segment: /v2/models/{name}


@dataclass(frozen=True)
class BatchingConf:
    """conf.json's http_server.batching section."""

    max_batch_size: int = 16  # images in one model call
    max_batch_wait_ms: float = 5.0  # how long a batch may wait for requests that are still being decoded
    max_queue: int = 256  # requests admitted at once (decoding or waiting); past it: Overloaded → 503


class ConfError(ValueError):
    """A conf file that is missing, unreadable, or lacks a key; the message names the key and the file."""


class Conf(dict):
    """The parsed conf.json, a plain dict as UAI passes it, that also remembers the file it came from."""

    def __init__(self, data: dict, path: str | os.PathLike | None = None):
        super().__init__(data)
        self.path = Path(path).resolve() if path else None


def read_conf(path: str | os.PathLike = "conf.json") -> Conf:
    """Reads conf.json. Relative paths inside it are later resolved against its folder, not the cwd."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfError(f"the conf file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfError(f"the conf file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfError(f"the conf file {path} must hold a JSON object")
    return Conf(data, path)


class ArchJsonConfLoader:
    """UAI's base loader, as UAI defines it: __init__(conf) keeps self.conf and calls self._load(), which sets
    self.server_conf (the http_server section), self.main_file and self.main_class (the class that serves, and
    the module that holds it). Subclasses override _load(), call super()._load() and read self.server_conf.

    Our typed getters (batching, reload, limits…) are built on top; every error names the key and the file.
    """

    def __init__(self, conf: Conf | dict | str | os.PathLike):
        if not isinstance(conf, dict):
            conf = read_conf(conf)
        self.conf = conf
        self.path: Path | None = getattr(conf, "path", None)
        self._load()

    def _load(self) -> None:
        self.server_conf = self._value("http_server")
        if not isinstance(self.server_conf, dict):
            raise self._error(("http_server",), "must be a JSON object")
        self.main_class = self._str("http_server", "exec", "main_class")
        self.main_file = self._str("http_server", "exec", "main_file")
        if not MODULE_NAME.fullmatch(self.main_file):
            # Dots become folders when the module is looked for beside the conf: ".tmp.x.evil" would be /tmp/x.
            raise self._error(("http_server", "exec", "main_file"),
                              f"must be a module name like my_model or package.my_model, not {self.main_file!r}")
        self.model_name = self._model_name()

    def get_batching(self) -> BatchingConf:
        """http_server.batching: how the server groups requests into model calls (README's conf table)."""
        keys = ("http_server", "batching")
        return BatchingConf(
            max_batch_size=self._int(*keys, "max_batch_size", default=BatchingConf.max_batch_size),
            max_batch_wait_ms=self._int(*keys, "max_batch_wait_ms", default=BatchingConf.max_batch_wait_ms,
                                        minimum=0),
            max_queue=self._int(*keys, "max_queue", default=BatchingConf.max_queue))

    def get_reload_poll_seconds(self) -> int:
        """http_server.reload.poll_seconds: how often to look for a new version folder (0: never)."""
        return self._int("http_server", "reload", "poll_seconds", default=0, minimum=0)

    def get_model_name(self) -> str:
        return self.model_name

    def _model_name(self) -> str:
        """http_server.model_name: the name the protocol APIs serve the model under (/v2/models/{name},
        /v1/models/{name}). Default: the model folder's name (http_server.tensorflow.model_dir), else the conf
        file's folder."""
        name = self._str("http_server", "model_name", default=None)
        if name is None:
            model_dir = self._value("http_server", "tensorflow", "model_dir", default=None)
            folder = Path(model_dir) if isinstance(model_dir, str) and model_dir.strip() else None
            if folder is not None and not folder.is_absolute() and self.path:
                folder = self.path.parent / folder
            folder = Path(os.path.normpath(folder)) if folder else (self.path.parent if self.path else None)
            default = re.sub(r"[^A-Za-z0-9_.-]", "-", folder.name).lstrip("-_.") if folder else ""
            return default if MODEL_NAME.fullmatch(default) else "classifier"
        if not MODEL_NAME.fullmatch(name):
            raise self._error(("http_server", "model_name"),
                              f"must be letters, digits, '_', '.' and '-', starting with a letter or digit, "
                              f"not {name!r}")
        return name

    def get_main_class(self) -> str:
        return self.main_class

    def get_main_file(self) -> str:
        return self.main_file

    # Typed access. Every error names the dotted key and the file, e.g. "http_server.tensorflow.input_width".
    def _value(self, *keys: str, default: Any = _MISSING) -> Any:
        node: Any = self.conf
        for depth, key in enumerate(keys):
            if not isinstance(node, dict):
                raise self._error(keys[:depth], "must be a JSON object")
            if key not in node:
                if default is not _MISSING:
                    return default
                raise self._error(keys[:depth + 1], "is missing")
            node = node[key]
        return node

    def _str(self, *keys: str, default: Any = _MISSING) -> Any:
        value = self._value(*keys, default=default)
        if value is not default and (not isinstance(value, str) or not value.strip()):
            raise self._error(keys, f"must be a non-empty string, not {value!r}")
        return value

    def _int(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        """A number or a numeric string ("224" as UAI writes it), parsed with int(), never eval."""
        value = self._value(*keys, default=default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self._error(keys, f"must be an integer or a numeric string, not {value!r}")
        try:
            number = int(value.strip()) if isinstance(value, str) else int(value)
        except ValueError:
            raise self._error(keys, f"must be an integer or a numeric string, not {value!r}") from None
        if number != value and not isinstance(value, str) or number < minimum:
            raise self._error(keys, f"must be a whole number ≥ {minimum}, not {value!r}")
        return number

    def _error(self, keys: tuple[str, ...], problem: str) -> ConfError:
        where = f"{self.path}: " if self.path else "conf: "
        return ConfError(f"{where}key {'.'.join(keys) or '(top level)'} {problem}")


JsonConfLoader = ArchJsonConfLoader  # the name this project used first


class TFJsonConfLoader(ArchJsonConfLoader):
    """UAI's TensorFlow loader: adds self.model_dir (http_server.tensorflow.model_dir) and get_model_dir().

    A relative model_dir is resolved against the conf file's folder: UAI ran from the folder that held both.
    """

    def _load(self) -> None:
        super()._load()
        model_dir = Path(self._str("http_server", "tensorflow", "model_dir"))
        if not model_dir.is_absolute() and self.path:
            model_dir = self.path.parent / model_dir
        self.model_dir = os.path.normpath(model_dir)

    def get_model_dir(self) -> str:
        return self.model_dir


class RetrainJsonConfLoader(TFJsonConfLoader):
    """Adds the input size and the optional keys of a retrain.py classifier (see README's conf table)."""

    def _load(self) -> None:
        super()._load()
        tf_keys = ("http_server", "tensorflow")
        self.input_width = self._int(*tf_keys, "input_width")
        self.input_height = self._int(*tf_keys, "input_height")
        self.top_k = self._int(*tf_keys, "top_k", default=5)
        self.input_tensor = self._str(*tf_keys, "input_tensor", default=None)
        self.output_tensor = self._str(*tf_keys, "output_tensor", default=None)
        self.labels_file = self._str(*tf_keys, "labels_file", default=None)
        # The input convention (README's conf table); None: not set here, the model's own word or the default.
        self.input_mean = self._per_channel(*tf_keys, "input_mean")
        self.input_std = self._per_channel(*tf_keys, "input_std", positive=True)
        self.resize = self._str(*tf_keys, "resize", default=None)
        if self.resize is not None and self.resize not in RESIZES:
            raise self._error(tf_keys + ("resize",), f"must be one of {list(RESIZES)}, not {self.resize!r}")
        self.runtime = self._str(*tf_keys, "runtime", default="auto")
        if self.runtime not in RUNTIMES:
            raise self._error(tf_keys + ("runtime",), f"must be one of {list(RUNTIMES)}, not {self.runtime!r}")
        self.precision = self._str(*tf_keys, "precision", default="fp32")
        if self.precision not in PRECISIONS:
            raise self._error(tf_keys + ("precision",), f"must be one of {list(PRECISIONS)}, not {self.precision!r}")
        engines = runtimes_for(self.precision)
        if self.runtime not in engines:
            raise self._error(tf_keys + ("precision",), f"{self.precision} is served by "
                              f"{' or '.join(e for e in engines if e != 'auto')}: set runtime to "
                              f"{' or '.join(repr(e) for e in engines)}, not {self.runtime!r}")
        self.calibration_photos = self._str(*tf_keys, "calibration_photos", default=None)
        # The model's last output is its "none of these" score (retraining calibrates one, for 0.5): above this, a
        # photo is of none of its classes. None: the model has no such output.
        self.none_of_these = self._number(*tf_keys, "none_of_these", positive=True)
        if self.none_of_these is not None and not self.none_of_these < 1:
            raise self._error(tf_keys + ("none_of_these",), f"must be between 0 and 1, not {self.none_of_these!r}")
        limit_keys = ("http_server", "limits")
        formats = self._value(*limit_keys, "formats", default=list(ALLOWED_FORMATS))
        if not isinstance(formats, list) or not all(f in ALLOWED_FORMATS for f in formats) or not formats:
            raise self._error(limit_keys + ("formats",), f"must be a non-empty list drawn from {list(ALLOWED_FORMATS)}")
        self.limits = Limits(max_bytes=self._int(*limit_keys, "max_bytes", default=Limits.max_bytes),
                             max_pixels=self._int(*limit_keys, "max_pixels", default=Limits.max_pixels),
                             formats=tuple(formats))

    def _number(self, *keys: str, positive: bool = False) -> float | None:
        value = self._value(*keys, default=None)
        if value is None:
            return None
        try:
            return self._checked_number(value, positive)
        except ValueError:
            raise self._error(keys, f"must be a {'positive ' if positive else ''}number, not {value!r}") from None

    @staticmethod
    def _checked_number(value: Any, positive: bool) -> float:
        """A finite number (or a string of one); ValueError otherwise, or if not positive when it must be."""
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (ValueError, TypeError):
            number = float("nan")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or number != number \
                or number in (float("inf"), float("-inf")) or (positive and number <= 0):
            raise ValueError(value)
        return number

    def _per_channel(self, *keys: str, positive: bool = False) -> float | tuple[float, float, float] | None:
        """A number, or a list of three (R, G, B: PyTorch's per-channel normalisation, in 0–255 units)."""
        value = self._value(*keys, default=None)
        if not isinstance(value, list):
            return self._number(*keys, positive=positive)
        if len(value) != 3:
            raise self._error(keys, f"must be a number or a list of 3 (R, G, B), not a list of {len(value)}")
        numbers = []
        for item in value:
            try:
                numbers.append(self._checked_number(item, positive))
            except ValueError:
                raise self._error(keys, f"must hold {'positive ' if positive else ''}numbers, not {item!r}") \
                    from None
        return tuple(numbers)

    def get_input_width(self) -> int:
        return self.input_width

    def get_input_height(self) -> int:
        return self.input_height

    def get_top_k(self) -> int:
        return self.top_k

    def get_limits(self) -> Limits:
        return self.limits
