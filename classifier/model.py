"""The UAI model lifecycle (AiUcloudModel → TFAiUcloudModel) and RetrainedClassificationModel, which serves one
(loading it is classifier.loader's)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from . import images, labels
from .conf import ArchJsonConfLoader, RetrainJsonConfLoader, TFJsonConfLoader
from .loader import Wanted, load
from .results import Classified
from .runtime import Runtime

log = logging.getLogger(__name__)


def uai_request(body: bytes) -> SimpleNamespace:
    """What UAI's server gave execute() for each image: an object whose .body holds the request's bytes."""
    return SimpleNamespace(body=body)


class AiUcloudModel:
    """UAI Inference's contract, as UAI defines it: __init__(conf, model_type) keeps both and calls
    _parse_conf(conf) (main_file, main_class); load_model() loads; execute(data, batch_size) serves a batch."""

    def __init__(self, conf: dict | None = None, model_type: str = "tensorflow"):
        self.conf = conf
        self.model_type = model_type
        self._parse_conf(conf)

    def _parse_conf(self, conf: dict) -> None:
        loader = ArchJsonConfLoader(conf)
        self.main_file = loader.get_main_file()
        self.main_class = loader.get_main_class()

    def load_model(self) -> Any:
        raise NotImplementedError

    def execute(self, data: Sequence[Any], batch_size: int) -> list:
        """One result per item of data, in order. UAI passes batch_size = len(data)."""
        raise NotImplementedError


class TFAiUcloudModel(AiUcloudModel):
    """As in UAI: self.output for state shared between load_model and execute, self.model_dir from the conf.

    The hook order is UAI's: AiUcloudModel.__init__ calls _parse_conf(conf), then this __init__ sets
    self.output = {}, calls _parse_conf(conf) again (UAI does: a subclass's override runs twice) and then
    self.model = self.load_model().
    """

    def __init__(self, conf: dict | None = None, model_type: str = "tensorflow"):
        super().__init__(conf, model_type)
        self.output: dict = {}
        self._parse_conf(conf)
        self.model = self.load_model()

    def _parse_conf(self, conf: dict) -> None:
        self.model_dir = TFJsonConfLoader(conf).get_model_dir()


class RetrainedClassificationModel(TFAiUcloudModel):
    """A classifier in retrain.py's convention: image in, top-k [label, probability] pairs out.

    Serving is three replaceable steps, as in Hugging Face pipelines:
    preprocess(item) → tensor, forward(batch of tensors) → probabilities, postprocess(probabilities) → pairs.
    execute() chains them for UAI callers; the HTTP server and the UI call them separately so that decoding
    runs in parallel threads while the model sees whole batches.
    """

    gives_probabilities = True  # a contract.ServableModel with the three steps

    def _parse_conf(self, conf: dict) -> None:
        loader = RetrainJsonConfLoader(conf)
        self.model_dir = loader.get_model_dir()
        self.input_width = loader.get_input_width()
        self.input_height = loader.get_input_height()
        self.top_k = loader.get_top_k()
        self.limits = loader.get_limits()
        self.none_of_these_above = loader.none_of_these
        given = {"mean": loader.input_mean, "std": loader.input_std, "resize": loader.resize}
        self.wanted = Wanted(Path(self.model_dir), self.input_size, (loader.input_tensor, loader.output_tensor),
                             loader.labels_file, loader.runtime, loader.precision, loader.calibration_photos,
                             loader.none_of_these, {key: value for key, value in given.items() if value is not None},
                             self.limits)

    def load_model(self) -> Runtime:
        """The model the conf names, loaded by classifier.loader (version, format, labels, convention, engine)."""
        loaded = load(self.wanted)
        self.runtime, self.model_path, self.version = loaded.runtime, loaded.model_path, loaded.version
        self.labels, self.labels_path, self.convention = loaded.labels, loaded.labels_path, loaded.convention
        self.input_width, self.input_height = loaded.input_size
        return self.runtime

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.input_width, self.input_height)

    def describe(self) -> str:
        """One line for logs and the UI: format, number of labels, input size, engine (and version)."""
        version = f"version {self.version} · " if self.version is not None else ""
        return (f"{version}{self.runtime.format} · {len(self.labels)} labels · "
                f"{self.input_width}×{self.input_height} {self.convention.describe()} · {self.runtime.engine}")

    # The three steps.
    def preprocess(self, item: Any) -> np.ndarray:
        """Any accepted input → [H, W, 3] in the model's input convention (default: float32 in [0, 1]). Raises
        images.ImageError with a clear message. A model that decodes images itself gets the bytes, checked."""
        return images.model_input(item, self.limits, self.input_size, self.convention)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] (as preprocess makes them) → one row per image, in one model call: the probabilities of
        the classes, then, for a model calibrated for "none of these" (conf's none_of_these), its score."""
        return self.runtime(batch)

    def class_probabilities(self, row: np.ndarray) -> np.ndarray:
        """A row of forward's → the class probabilities alone."""
        return row[:len(self.labels)]

    def is_none_of_these(self, row: np.ndarray) -> bool | None:
        """A row of forward's → whether the photo is of none of the classes; None if the model cannot tell."""
        return None if self.none_of_these_above is None else bool(row[-1] > self.none_of_these_above)

    def postprocess(self, row: np.ndarray, top_k: int | None = None) -> list[list]:
        """A row of forward's → the top-k [label, probability] pairs, most probable first."""
        return labels.top_k(self.class_probabilities(row), self.labels, top_k or self.top_k)

    def execute(self, data: Sequence[Any], batch_size: int | None = None) -> list:
        """UAI's entry point: one result per item, in order.

        Items may be bytes, file-like objects, paths, PIL images, numpy arrays or objects with `.body`.
        A result is a list of top-k [label, probability] pairs, or {"error": message} for an item that is not a
        usable image (the others are still classified). batch_size is the most images sent to the model in one
        call: UAI passes len(data), so the whole request batch runs at once; longer data runs in chunks.
        """
        return [{"error": str(result)} if isinstance(result, images.ImageError) else result.labels
                for result in self.classify(data, batch_size)]

    def execute_with_verdicts(self, data: Sequence[Any], batch_size: int | None = None) -> list:
        """As execute(), each result {"labels": its pairs, "none_of_these": the verdict} (None when the model is
        not calibrated for it), or {"error": message}."""
        return [{"error": str(result)} if isinstance(result, images.ImageError) else result.as_json()
                for result in self.classify(data, batch_size)]

    def classify(self, data: Sequence[Any], batch_size: int | None = None) -> list[Classified | images.ImageError]:
        """One Classified per item, in order, batch_size at a time; the ImageError of an item that is not a usable
        image, in its place."""
        return [row if isinstance(row, images.ImageError) else Classified(self.postprocess(row),
                                                                            self.is_none_of_these(row))
                for row in self._rows(data, batch_size)]

    def _rows(self, data: Sequence[Any], batch_size: int | None) -> list[np.ndarray | images.ImageError]:
        """forward's row for each item, in order, batch_size at a time; the ImageError of a bad image."""
        rows: list[Any] = [None] * len(data)
        good: list[tuple[int, np.ndarray]] = []
        for index, item in enumerate(data):
            try:
                good.append((index, self.preprocess(item)))
            except images.ImageError as exc:
                rows[index] = exc
        chunk = max(1, batch_size or len(good) or 1)
        for start in range(0, len(good), chunk):
            part = good[start:start + chunk]
            for (index, _), row in zip(part, self.forward(np.stack([tensor for _, tensor in part]))):
                rows[index] = row
        return rows
