"""Loading a classifier from what its conf asks for: version folder, format, labels, input convention, engine choice,
conversion and calibration. RetrainedClassificationModel.load_model() calls it, as Hugging Face's pipeline()
loads for its pipelines: the model class keeps UAI's contract and the three serving steps, nothing of loading."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import bundled, engines, formats, images, labels, quiet
from .runtime import Runtime

log = logging.getLogger(__name__)
TEACHABLE_MACHINE = images.InputConvention(mean=127.5, std=127.5, resize="center_crop")  # its own snippet's

# Photos shipped with the project: an engine must agree with TensorFlow on them (and views of them) to serve.
CHECK_PHOTOS = bundled.EXAMPLES
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# The runtimes that run a model as it was loaded, unconverted: its own framework's.
REFERENCES = ("tensorflow", "onnxruntime")
# Set to 1 (python -m classifier --retime does): time the engines again on this machine, whatever was recorded.
RETIME_VARIABLE = "CLASSIFIER_RETIME"


def example_photos() -> list[Path]:
    """The photos shipped in examples/: the page's examples, the warm-up photo, the engines' check images."""
    return sorted(p for p in CHECK_PHOTOS.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


@dataclass(frozen=True)
class Wanted:
    """What a conf asks of the model to load (conf.RetrainJsonConfLoader's keys). convention: the input keys the
    conf sets (mean, std, resize), which win over the model's own word."""

    model_dir: Path
    input_size: tuple[int, int]
    tensor_names: tuple[str | None, str | None] = (None, None)
    labels_file: str | None = None
    engine: str = "auto"
    precision: str = "fp32"
    calibration_photos: str | None = None
    none_of_these: float | None = None
    convention: dict = dataclasses.field(default_factory=dict)
    limits: images.Limits = images.Limits()


@dataclass(frozen=True)
class Loaded:
    """A model as loaded: the runtime that serves it (its engine chosen, converted, checked), where its files and
    labels are, its version, the input size it takes and the convention its inputs are prepared in."""

    runtime: Runtime
    model_path: Path
    version: int | None
    labels: list[str]
    labels_path: Path
    input_size: tuple[int, int]
    convention: images.InputConvention
    limits: images.Limits

    def preprocess(self, item: Any) -> np.ndarray:
        """Any accepted input → [H, W, 3] in this model's input convention; the bytes, checked, for a model that
        decodes images itself. Raises images.ImageError with a clear message."""
        return images.model_input(item, self.limits, self.input_size, self.convention)


def load(wanted: Wanted) -> Loaded:
    """The model wanted, loaded from its newest version folder and served by the engine that agrees with its
    framework and serves fastest here (recorded beside the model, so that the next start needs no TensorFlow).
    Raises formats.ModelError or labels.LabelsError with what to do."""
    model_path, version = formats.latest_version(wanted.model_dir)
    key, recorded = _recorded(wanted, model_path)
    loaded = _described(wanted, model_path, version,
                        recorded.runtime if recorded else _load_with_tensorflow(wanted, model_path))
    served = None  # the runtime with the engine the record chose, if it serves
    if recorded:
        # Converted and checked before: served without TensorFlow, unless never checked for this conf's
        # convention, engine choice and precision, or the engine's version changed.
        # The check images (41 decoded views) are made only if the engines must be timed again here.
        served = recorded.serve(_check_name(wanted, loaded), wanted.engine, wanted.precision,
                                lambda: _check_batch(loaded), _decoding(loaded),
                                retime=os.environ.get(RETIME_VARIABLE) == "1")
        loaded = _described(wanted, model_path, version, served or _load_with_tensorflow(wanted, model_path))
    # Loaded by its reference (TensorFlow, ONNX Runtime) and another engine allowed: converted, checked, timed.
    # Not a .tflite (LiteRT already), nor what the record served.
    runtime = loaded.runtime
    convertible = not served and wanted.engine not in REFERENCES and runtime.format != formats.TFLITE
    if convertible and loaded.convention.dtype == images.ENCODED_INPUT:
        # Neither LiteRT nor OpenVINO runs a graph's image decoding (DecodeImage, DecodeJpeg …).
        log.info("%s decodes the images itself: TensorFlow serves it (the other engines cannot run the "
                 "decoding in its graph)", model_path)
    elif convertible:
        calibration, held_out = _calibration(wanted, loaded)
        runtime = engines.accelerate(runtime, np.concatenate([_check_batch(loaded), held_out]),
                                     _check_name(wanted, loaded), wanted.engine, wanted.precision, calibration,
                                     key, _decoding(loaded))
        loaded = dataclasses.replace(loaded, runtime=runtime)
    _check(wanted, loaded)
    return loaded


def _check(wanted: Wanted, loaded: Loaded) -> None:
    """What a loaded model must be to serve this conf: run by the engine it names, with its extra column for "none
    of these" if the conf calibrates one, and as many classes as labels."""
    runtime, path = loaded.runtime, loaded.model_path
    if wanted.engine in REFERENCES and wanted.engine != runtime.reference:
        raise formats.ModelError(f"{path} is run by {runtime.reference}, not {wanted.engine}: set "
                                 f"the conf's runtime to {runtime.reference!r} or 'auto'")
    if runtime.extra_columns != int(wanted.none_of_these is not None):
        raise formats.ModelError(f"{path}: its converted files were recorded for a conf with"
                                 f"{'out' if runtime.extra_columns else ''} none_of_these; convert it again "
                                 f"for this one (python -m classifier --retime --conf …)")
    if len(loaded.labels) != runtime.num_classes:
        raise labels.LabelsError(f"{loaded.labels_path} has {len(loaded.labels)} labels but the model in "
                                 f"{path} outputs {runtime.num_classes} classes")


def _load_with_tensorflow(wanted: Wanted, model_path: Path) -> Runtime:
    try:
        return formats.load(model_path, wanted.input_size, *wanted.tensor_names,
                            extra_columns=int(wanted.none_of_these is not None))
    except quiet.TensorFlowMissing:
        raise formats.ModelError(
            f"{model_path} has not been converted for this conf's engine, and TensorFlow, which converts "
            "it, is not installed here (a serving-only install: requirements-serve.txt, or the Docker image). "
            "Convert it once where TensorFlow is: `python -m classifier --convert --conf <its conf.json>` "
            "(in Docker: the image's `full` target, the model's folder mounted writable; docs/deploy.md), "
            "or serve a .tflite file, which needs no conversion") from None


def _recorded(wanted: Wanted, model_path: Path) -> tuple[str | None, engines.Recorded | None]:
    """The hash of the model's files (made once here, reused by accelerate) and the model as its engines' cache
    records it, to be served with no TensorFlow (engines.Recorded); (None, None) when no engine is to choose."""
    if wanted.engine in REFERENCES:
        return None, None
    _, path = formats.detect(model_path)
    if path.suffix == ".tflite":
        return None, None
    key = engines.cache.model_key(path, wanted.tensor_names)
    return key, engines.recorded(path, key)


def _check_name(wanted: Wanted, loaded: Loaded) -> str:
    """What an agreement check depends on besides the model's files: the inputs it fed, the tensors it used."""
    return f"{loaded.convention!r} {wanted.tensor_names!r}"


def _described(wanted: Wanted, model_path: Path, version: int | None, runtime: Runtime) -> Loaded:
    """A runtime with what serving it needs: the input size the model fixes (it wins over conf's), the labels,
    the input convention."""
    size = wanted.input_size
    if runtime.input_size and runtime.input_size != size:
        log.warning("%s takes %d×%d images, conf.json says %d×%d (input_width × input_height): the model's "
                    "size is used", runtime.path, *runtime.input_size, *size)
        size = runtime.input_size
    names, labels_path, numbered = _read_labels(wanted, model_path, runtime)
    return Loaded(runtime, model_path, version, names, labels_path, size, _input_convention(wanted, runtime, numbered),
                  wanted.limits)


def _read_labels(wanted: Wanted, model_path: Path, runtime: Runtime) -> tuple[list[str], Path, bool]:
    """The labels: conf's labels_file, else a labels file beside the model (a version folder's own, else
    model_dir's), else those packed in the model file. And whether they are Teachable Machine's numbered lines."""
    # One folder when unversioned; a model_dir that is one file has its labels beside it.
    folders = list(dict.fromkeys(p.parent if p.is_file() else p for p in (model_path, Path(wanted.model_dir))))
    for number, folder in enumerate(folders):
        try:
            path = labels.find_labels_file(folder, wanted.labels_file)
            break
        except labels.LabelsError:
            if number < len(folders) - 1:
                continue
            if runtime.labels and not wanted.labels_file:
                return runtime.labels, runtime.path, False
            raise
    names, numbered = labels.read_labels_file(path)
    return names, path, numbered


def _input_convention(wanted: Wanted, runtime: Runtime, teachable_machine: bool) -> images.InputConvention:
    """conf.json's input_mean, input_std and resize; for what it does not set, the model's own word (its
    layers, its input type, Teachable Machine's export), else the defaults ([0, 1], the whole photo)."""
    own, source = runtime.convention, runtime.convention_source
    if own is None and teachable_machine:
        own, source = TEACHABLE_MACHINE, "a Teachable Machine export (its labels.txt numbers its lines)"
    convention = dataclasses.replace(own or images.InputConvention(), **wanted.convention, dtype=runtime.input_dtype)
    if own is not None:
        overridden = f"; conf.json sets {', '.join(wanted.convention)}" if wanted.convention else ""
        log.info("%s: %s, as %s%s", runtime.path.name, convention.describe(), source, overridden)
    return convention


def _check_batch(loaded: Loaded) -> np.ndarray:
    """The project's example photos, each whole, mirrored and cropped, and one random image, as the model sees
    them: 41 images, so that a reduced precision may miss fp32's top-1 on one (97.5 %) but not on two."""
    width, height = loaded.input_size
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    # Decoded here, outside the conf's limits (a conf may allow less than these photos weigh); then the
    # model's own preprocess, so the check sees what serving will.
    views = [view for photo in example_photos() for view in images.views(images.decode(photo))]
    return np.stack([loaded.preprocess(view) for view in views + [noise]])


def _decoding(loaded: Loaded) -> Callable[[], None]:
    """One unit of what serving's decoders do beside the model, for timing the engines as they serve: an
    example photo decoded and preprocessed, the next one each call."""
    photos = [p.read_bytes() for p in example_photos()]
    turns = itertools.count()
    return lambda: loaded.preprocess(photos[next(turns) % len(photos)])


def _calibration(wanted: Wanted, loaded: Loaded) -> tuple[np.ndarray | None, np.ndarray]:
    """int8's calibration images, and the photos held out of them for the check: conf's calibration_photos
    (retraining names its training photos there), every other one calibrating and the rest checked, so that
    the guard also sees the model's own kind of photo, unseen by the calibration. Without calibration_photos
    (or for fp32 and bf16): (None, no images), and the check images calibrate."""
    width, height = loaded.input_size
    none = np.zeros((0, height, width, 3), loaded.convention.dtype)  # the inputs' own dtype
    if wanted.precision != "int8" or not wanted.calibration_photos:
        return None, none
    folder = Path(wanted.calibration_photos)
    photos = sorted(Path(top) / name for top, _, names in os.walk(folder, followlinks=True)  # class folders
                    for name in names if Path(name).suffix.lower() in PHOTO_SUFFIXES)  # may be symlinks
    if len(photos) < 2:
        raise formats.ModelError(f"calibration_photos {folder} holds fewer than two .jpg, .jpeg or .png photos")
    # At most CALIBRATION_SIZE of each half, spread evenly over the sorted paths: every class has its share.
    chosen = np.unique(np.linspace(0, len(photos) - 1, 2 * engines.openvino.CALIBRATION_SIZE).astype(int))
    tensors = np.stack([loaded.preprocess(images.decode(photos[index])) for index in chosen])
    return tensors[0::2], tensors[1::2]
