"""The UAI model lifecycle (AiUcloudModel → TFAiUcloudModel) and RetrainedClassificationModel, which serves one."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from . import engines, formats, images, labels, quiet
from .conf import ArchJsonConfLoader, RetrainJsonConfLoader, TFJsonConfLoader
from .runtime import Runtime

log = logging.getLogger(__name__)
TEACHABLE_MACHINE = images.InputConvention(mean=127.5, std=127.5, resize="center_crop")  # its own snippet's

# Photos shipped with the project: an engine must agree with TensorFlow on them (and views of them) to serve.
CHECK_PHOTOS = Path(__file__).resolve().parent.parent / "examples"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def example_photos() -> list[Path]:
    """The photos shipped in examples/: the page's examples, the warm-up photo, the engines' check images."""
    return sorted(p for p in CHECK_PHOTOS.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
# The runtimes that run a model as it was loaded, unconverted: its own framework's.
REFERENCES = ("tensorflow", "onnxruntime")
# Set to 1 (python -m classifier --retime does): time the engines again on this machine, whatever was recorded.
RETIME_VARIABLE = "CLASSIFIER_RETIME"


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
        self._tensor_names = (loader.input_tensor, loader.output_tensor)
        self._labels_file = loader.labels_file
        self._engine = loader.runtime
        self._precision = loader.precision
        self._calibration_photos = loader.calibration_photos
        self.none_of_these_above = loader.none_of_these
        given = {"mean": loader.input_mean, "std": loader.input_std, "resize": loader.resize}
        self._convention_in_conf = {key: value for key, value in given.items() if value is not None}

    def load_model(self) -> Runtime:
        self.model_path, self.version = formats.latest_version(Path(self.model_dir))
        recorded = self._recorded()
        self.runtime = recorded.runtime if recorded else self._load_with_tensorflow()
        self._size_labels_and_convention()
        served = None  # the runtime with the engine the record chose, if it serves
        if recorded:
            # Converted and checked before: served without TensorFlow, unless never checked for this conf's
            # convention, engine choice and precision, or the engine's version changed.
            # The check images (41 decoded views) are made only if the engines must be timed again here.
            served = recorded.serve(self._check_name(), self._engine, self._precision, self._check_batch,
                                    self._decoding(), retime=os.environ.get(RETIME_VARIABLE) == "1")
            self.runtime = served or self._load_with_tensorflow()
            self._size_labels_and_convention()
        # Loaded by its reference (TensorFlow, ONNX Runtime) and another engine allowed: converted, checked, timed.
        # Not a .tflite (LiteRT already), nor what the record served.
        convertible = not served and self._engine not in REFERENCES and self.runtime.format != formats.TFLITE
        if convertible and self.convention.dtype == images.ENCODED_INPUT:
            # Neither LiteRT nor OpenVINO runs a graph's image decoding (DecodeImage, DecodeJpeg …).
            log.info("%s decodes the images itself: TensorFlow serves it (the other engines cannot run the "
                     "decoding in its graph)", self.model_path)
        elif convertible:
            calibration, held_out = self._calibration()
            self.runtime = engines.accelerate(self.runtime, np.concatenate([self._check_batch(), held_out]),
                                              self._check_name(), self._engine, self._precision, calibration,
                                              self._model_key, self._decoding())
        if self._engine in REFERENCES and self._engine != self.runtime.reference:
            raise formats.ModelError(f"{self.model_path} is run by {self.runtime.reference}, not {self._engine}: set "
                                     f"the conf's runtime to {self.runtime.reference!r} or 'auto'")
        if self.runtime.extra_columns != int(self.none_of_these_above is not None):
            raise formats.ModelError(f"{self.model_path}: its converted files were recorded for a conf with"
                                     f"{'out' if self.runtime.extra_columns else ''} none_of_these; convert it again "
                                     f"for this one (python -m classifier --retime --conf …)")
        if len(self.labels) != self.runtime.num_classes:
            raise labels.LabelsError(f"{self.labels_path} has {len(self.labels)} labels but the model in "
                                     f"{self.model_path} outputs {self.runtime.num_classes} classes")
        return self.runtime

    def _load_with_tensorflow(self) -> Runtime:
        try:
            return formats.load(self.model_path, self.input_size, *self._tensor_names,
                                extra_columns=int(self.none_of_these_above is not None))
        except quiet.TensorFlowMissing:
            raise formats.ModelError(
                f"{self.model_path} has not been converted for this conf's engine, and TensorFlow, which converts "
                "it, is not installed here (a serving-only install: requirements-serve.txt, or the Docker image). "
                "Convert it once where TensorFlow is: `python -m classifier --convert --conf <its conf.json>` "
                "(in Docker: the image's `full` target, the model's folder mounted writable; docs/deploy.md), "
                "or serve a .tflite file, which needs no conversion") from None

    def _recorded(self) -> engines.Recorded | None:
        """The model as its engines' cache records it, to be served with no TensorFlow (engines.Recorded)."""
        self._model_key = None  # the hash of the model's files, made once here and reused by accelerate
        if self._engine in REFERENCES:
            return None
        _, path = formats.detect(self.model_path)
        if path.suffix == ".tflite":
            return None
        self._model_key = engines.cache.model_key(path, self._tensor_names)
        return engines.recorded(path, self._model_key)

    def _check_name(self) -> str:
        """What an agreement check depends on besides the model's files: the inputs it fed, the tensors it used."""
        return f"{self.convention!r} {self._tensor_names!r}"

    def _size_labels_and_convention(self) -> None:
        """After loading: the input size the model fixes (it wins over conf's), the labels, the input convention."""
        if self.runtime.input_size and self.runtime.input_size != self.input_size:
            log.warning("%s takes %d×%d images, conf.json says %d×%d (input_width × input_height): the model's "
                        "size is used", self.runtime.path, *self.runtime.input_size, *self.input_size)
            self.input_width, self.input_height = self.runtime.input_size
        self.labels, self.labels_path, numbered = self._read_labels()
        self.convention = self._input_convention(numbered)

    def _read_labels(self) -> tuple[list[str], Path, bool]:
        """The labels: conf's labels_file, else a labels file beside the model (a version folder's own, else
        model_dir's), else those packed in the model file. And whether they are Teachable Machine's numbered lines."""
        # One folder when unversioned; a model_dir that is one file has its labels beside it.
        folders = list(dict.fromkeys(p.parent if p.is_file() else p for p in (self.model_path, Path(self.model_dir))))
        for number, folder in enumerate(folders):
            try:
                path = labels.find_labels_file(folder, self._labels_file)
                break
            except labels.LabelsError:
                if number < len(folders) - 1:
                    continue
                if self.runtime.labels and not self._labels_file:
                    return self.runtime.labels, self.runtime.path, False
                raise
        names, numbered = labels.read_labels_file(path)
        return names, path, numbered

    def _input_convention(self, teachable_machine: bool) -> images.InputConvention:
        """conf.json's input_mean, input_std and resize; for what it does not set, the model's own word (its
        layers, its input type, Teachable Machine's export), else the defaults ([0, 1], the whole photo)."""
        own, source = self.runtime.convention, self.runtime.convention_source
        if own is None and teachable_machine:
            own, source = TEACHABLE_MACHINE, "a Teachable Machine export (its labels.txt numbers its lines)"
        convention = dataclasses.replace(own or images.InputConvention(), **self._convention_in_conf,
                                         dtype=self.runtime.input_dtype)
        if own is not None:
            overridden = f"; conf.json sets {', '.join(self._convention_in_conf)}" if self._convention_in_conf else ""
            log.info("%s: %s, as %s%s", self.runtime.path.name, convention.describe(), source, overridden)
        return convention

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.input_width, self.input_height)

    def describe(self) -> str:
        """One line for logs and the UI: format, number of labels, input size, engine (and version)."""
        version = f"version {self.version} · " if self.version is not None else ""
        return (f"{version}{self.runtime.format} · {len(self.labels)} labels · "
                f"{self.input_width}×{self.input_height} {self.convention.describe()} · {self.runtime.engine}")

    def _check_batch(self) -> np.ndarray:
        """The project's example photos, each whole, mirrored and cropped, and one random image, as the model sees
        them: 41 images, so that a reduced precision may miss fp32's top-1 on one (97.5 %) but not on two."""
        photos = example_photos()
        noise = Image.fromarray(np.random.default_rng(0).integers(
            0, 256, (self.input_height, self.input_width, 3), dtype=np.uint8))
        # Decoded here, outside the conf's limits (a conf may allow less than these photos weigh); then the
        # model's own preprocess, so the check sees what serving will.
        views = [view for photo in photos for view in images.views(images.decode(photo))]
        return np.stack([self.preprocess(view) for view in views + [noise]])

    def _decoding(self) -> Callable[[], None]:
        """One unit of what serving's decoders do beside the model, for timing the engines as they serve: an
        example photo decoded and preprocessed, the next one each call."""
        photos = [p.read_bytes() for p in example_photos()]
        turns = itertools.count()
        return lambda: self.preprocess(photos[next(turns) % len(photos)])

    def _calibration(self) -> tuple[np.ndarray | None, np.ndarray]:
        """int8's calibration images, and the photos held out of them for the check: conf's calibration_photos
        (retraining names its training photos there), every other one calibrating and the rest checked, so that
        the guard also sees the model's own kind of photo, unseen by the calibration. Without calibration_photos
        (or for fp32 and bf16): (None, no images), and the check images calibrate."""
        none = np.zeros((0, self.input_height, self.input_width, 3), self.convention.dtype)  # the inputs' own dtype
        if self._precision != "int8" or not self._calibration_photos:
            return None, none
        folder = Path(self._calibration_photos)
        photos = sorted(Path(top) / name for top, _, names in os.walk(folder, followlinks=True)  # class folders
                        for name in names if Path(name).suffix.lower() in PHOTO_SUFFIXES)  # may be symlinks
        if len(photos) < 2:
            raise formats.ModelError(f"calibration_photos {folder} holds fewer than two .jpg, .jpeg or .png photos")
        # At most CALIBRATION_SIZE of each half, spread evenly over the sorted paths: every class has its share.
        chosen = np.unique(np.linspace(0, len(photos) - 1, 2 * engines.openvino.CALIBRATION_SIZE).astype(int))
        tensors = np.stack([self.preprocess(images.decode(photos[index])) for index in chosen])
        return tensors[0::2], tensors[1::2]

    # The three steps.
    def preprocess(self, item: Any) -> np.ndarray:
        """Any accepted input → [H, W, 3] in the model's input convention (default: float32 in [0, 1]). Raises
        images.ImageError with a clear message. A model that decodes images itself gets the bytes, checked."""
        if self.convention.dtype == images.ENCODED_INPUT:
            return images.to_encoded(item, self.limits, self.input_size)
        return images.to_tensor(images.decode(item, self.limits, self.input_size), self.input_size, self.convention)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] (as preprocess makes them) → one row per image, in one model call: the probabilities of
        the classes, then, for a model calibrated for "none of these" (conf's none_of_these), its score."""
        return self.runtime(batch)

    def probabilities(self, row: np.ndarray) -> np.ndarray:
        """A row of forward's → the class probabilities alone."""
        return row[:len(self.labels)]

    def none_of_these(self, row: np.ndarray) -> bool | None:
        """A row of forward's → whether the photo is of none of the classes; None if the model cannot tell."""
        return None if self.none_of_these_above is None else bool(row[-1] > self.none_of_these_above)

    def postprocess(self, row: np.ndarray, top_k: int | None = None) -> list[list]:
        """A row of forward's → the top-k [label, probability] pairs, most probable first."""
        return labels.top_k(self.probabilities(row), self.labels, top_k or self.top_k)

    def execute(self, data: Sequence[Any], batch_size: int | None = None) -> list:
        """UAI's entry point: one result per item, in order.

        Items may be bytes, file-like objects, paths, PIL images, numpy arrays or objects with `.body`.
        A result is a list of top-k [label, probability] pairs, or {"error": message} for an item that is not a
        usable image (the others are still classified). batch_size is the most images sent to the model in one
        call: UAI passes len(data), so the whole request batch runs at once; longer data runs in chunks.
        """
        return [row if isinstance(row, dict) else self.postprocess(row) for row in self._rows(data, batch_size)]

    def execute_with_verdicts(self, data: Sequence[Any], batch_size: int | None = None) -> list:
        """As execute(), each result {"labels": its pairs, "none_of_these": the verdict} (None when the model is
        not calibrated for it), or {"error": message}."""
        return [row if isinstance(row, dict) else {"labels": self.postprocess(row), "none_of_these":
                                                   self.none_of_these(row)} for row in self._rows(data, batch_size)]

    def _rows(self, data: Sequence[Any], batch_size: int | None) -> list:
        """forward's row for each item, in order, batch_size at a time; {"error": message} for a bad image."""
        rows: list[Any] = [None] * len(data)
        good: list[tuple[int, np.ndarray]] = []
        for index, item in enumerate(data):
            try:
                good.append((index, self.preprocess(item)))
            except images.ImageError as exc:
                rows[index] = {"error": str(exc)}
        chunk = max(1, batch_size or len(good) or 1)
        for start in range(0, len(good), chunk):
            part = good[start:start + chunk]
            for (index, _), row in zip(part, self.forward(np.stack([tensor for _, tensor in part]))):
                rows[index] = row
        return rows
