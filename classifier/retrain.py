"""Retraining: a folder of labelled photos → a servable checkpoint_dir, in TensorFlow Hub retrain.py's workflow.

    python -m classifier.retrain --image_dir photos/ --output_dir my_model/

One subfolder of image_dir per class. The embedded EfficientNet-Lite0 turns each photo into a 1280-d
"bottleneck" (cached on disk by file content); a new softmax layer is trained on those; the result is written
as a frozen graph, labels, a SavedModel and a report, into a temporary folder renamed into place at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import images, labels as labels_module

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE_MODEL = PROJECT_ROOT / "checkpoint_dir"
FEATURE_TENSOR = "feature_vector"  # the base graph's pooled features, written by tools/port_efficientnet_lite0.py
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MAX_NUM_IMAGES_PER_CLASS = 2 ** 27 - 1  # retrain.py's constant: part of how a file name maps to its split
SPLITS = ("training", "validation", "testing")


class RetrainError(ValueError):
    """Data that cannot be trained on: the message names the folder or class and what is needed."""


@dataclass
class Options:
    """The flags, named as in retrain.py where the concept is the same."""

    image_dir: Path
    output_dir: Path
    how_many_training_steps: int = 4000
    epochs: float | None = None  # instead of steps: passes over the training set
    learning_rate: float = 0.01
    train_batch_size: int = 100
    validation_percentage: int = 10
    testing_percentage: int = 10
    eval_step_interval: int = 10
    bottleneck_dir: Path = Path(tempfile.gettempdir()) / "bottleneck"
    flip_left_right: bool = False
    random_crop: int = 0
    random_scale: int = 0
    random_brightness: int = 0
    distorted_copies: int = 5  # distorted variants per training photo (cached like bottlenecks)
    output_graph: str = "frozen_inference_graph.pb"
    output_labels: str = "label_map.txt"
    final_tensor_name: str = "final_result"
    saved_model_dir: str = "saved_model"  # relative to output_dir
    base_model_dir: Path = DEFAULT_BASE_MODEL
    seed: int = 0

    @property
    def distorts(self) -> bool:
        return bool(self.flip_left_right or self.random_crop or self.random_scale or self.random_brightness)


@dataclass
class Summary:
    """What a run did, as written to report/metrics.json."""

    classes: dict[str, int]
    split: dict[str, int]
    skipped: list[dict] = field(default_factory=list)
    bottlenecks_computed: int = 0
    bottlenecks_cached: int = 0
    training_steps: int = 0
    test_accuracy: float = float("nan")
    per_class: dict[str, dict] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    misclassified: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    output_dir: str = ""


# The data: classes from folder names, splits from file names, as retrain.py does.
def normalise_label(folder_name: str) -> str:
    """retrain.py's label for a folder: lower case, each run of characters outside [a-z0-9] → one space."""
    return re.sub(r"[^a-z0-9]+", " ", folder_name.lower())


def split_of(file_name: str, validation_percentage: float, testing_percentage: float) -> str:
    """retrain.py's stable split: a hash of the file name (less any _nohash_ suffix), so a file keeps its split
    as the folders grow."""
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    hashed = int(hashlib.sha1(hash_name.encode()).hexdigest(), 16)
    percentage = (hashed % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def list_images(image_dir: Path) -> dict[str, list[Path]]:
    """{label: image files}, classes sorted by folder name. Files without an image suffix are ignored."""
    if not Path(image_dir).is_dir():
        raise RetrainError(f"--image_dir {image_dir} is not a folder")
    folders = sorted(p for p in Path(image_dir).iterdir() if p.is_dir() and not _is_hidden(p))
    classes: dict[str, list[Path]] = {}
    for folder in folders:
        label = normalise_label(folder.name)
        if label in classes:
            raise RetrainError(f"folders {folder.name!r} and another both give the label {label!r}; rename one")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            classes[label] = files
        else:
            log.warning("%s holds no images: not a class", folder)
    if len(classes) < 2:
        raise RetrainError(f"{image_dir} has {len(classes)} class folder(s) with images; at least 2 are needed "
                           "(one subfolder of photos per class)")
    return classes


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"  # macOS zips add __MACOSX/ resource forks


def extract_zip(zip_path: Path, destination: Path, max_bytes: int = 2 * 1024 ** 3,
                max_files: int = 50_000) -> Path:
    """Unpacks an uploaded .zip of class folders and returns the folder that holds them.

    Refuses members that would land outside destination, and archives that unpack to more than max_bytes or
    max_files. A zip holding one top folder (as "Compress folder" makes) is looked into.
    """
    destination = Path(destination).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if len(members) > max_files or sum(m.file_size for m in members) > max_bytes:
                raise RetrainError(f"the zip unpacks to more than {max_files} files or {max_bytes} bytes")
            for member in members:
                if not (destination / member.filename).resolve().is_relative_to(destination):
                    raise RetrainError(f"the zip holds an unsafe path: {member.filename!r}")
            archive.extractall(destination)
    except zipfile.BadZipFile as exc:
        raise RetrainError(f"not a readable .zip file: {exc}") from None
    root = destination
    while True:
        entries = [p for p in root.iterdir() if not _is_hidden(p)]
        if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
            root = entries[0]
        else:
            return root


def read_flagged(flagging_dir: Path) -> list[tuple[Path, str]]:
    """The photos flagged on the page (Gradio's CSVLogger: dataset*.csv beside the saved images), with the label
    the model gave each: [(photo, predicted label)], oldest first. Rows whose photo is gone are left out."""
    import csv

    rows = []
    for dataset in sorted(Path(flagging_dir).glob("dataset*.csv")):
        with open(dataset, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                photo, predicted = row.get("Photo") or "", row.get("Top labels") or ""
                try:
                    photo = json.loads(photo).get("path", "") if photo.startswith("{") else photo
                    predicted = json.loads(predicted).get("label", "") if predicted.startswith("{") else predicted
                except (ValueError, AttributeError):
                    continue
                path = Path(photo) if Path(photo).is_absolute() else Path(flagging_dir) / photo
                if photo and path.is_file():
                    rows.append((path, predicted or ""))
    return rows


def write_labelled(photos: list[tuple[Path, str]], image_dir: Path) -> None:
    """Copies (photo, label) pairs into image_dir/<label>/, the layout retrain reads; into the existing class
    folder when one has the same label (e.g. "Mammals/" for "mammals"). Empty labels are skipped."""
    image_dir.mkdir(parents=True, exist_ok=True)
    folders = {normalise_label(p.name): p for p in image_dir.iterdir() if p.is_dir()}
    for number, (photo, label) in enumerate(photos):
        if label.strip():
            folder = folders.setdefault(normalise_label(label.strip()), image_dir / label.strip())
            folder.mkdir(exist_ok=True)
            shutil.copy(photo, folder / f"flagged_{number}{photo.suffix.lower()}")


def images_needed(options: Options) -> int:
    """Per class: enough that each held-out split gets about one image."""
    held_out = [p for p in (options.validation_percentage, options.testing_percentage) if p > 0]
    return max(2, math.ceil(100 / min(held_out))) if held_out else 1


def check_class_sizes(counts: dict[str, int], options: Options, what: str = "images") -> None:
    needed = images_needed(options)
    for label, count in counts.items():
        if count < needed:
            raise RetrainError(
                f"class {label!r} has {count} {what}; at least {needed} are needed for "
                f"{options.validation_percentage}% validation and {options.testing_percentage}% testing")


# Bottlenecks: the base model's features, cached by file content.
class FeatureExtractor:
    """The base model's frozen graph, cut at its pooled features."""

    def __init__(self, base_model_dir: Path):
        from .formats import load_frozen_graph

        graph_path = Path(base_model_dir) / "frozen_inference_graph.pb"
        self.graph_bytes = graph_path.read_bytes()
        self.runtime = load_frozen_graph(graph_path, "Placeholder", FEATURE_TENSOR)
        if not self.runtime.input_size:
            raise RetrainError(f"{graph_path} has no fixed input size")
        self.size = self.runtime.input_size
        self.key = hashlib.sha256(self.graph_bytes).hexdigest()[:16]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runtime.predict(batch)


def distort(image, rng: np.random.Generator, options: Options, size: tuple[int, int]) -> np.ndarray:
    """retrain.py's distortions: scale up and crop at random, flip, scale the brightness."""
    from PIL import Image

    scale = rng.uniform(1.0, 1.0 + options.random_scale / 100) * (1.0 + options.random_crop / 100)
    width, height = max(size[0], round(size[0] * scale)), max(size[1], round(size[1] * scale))
    big = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = rng.integers(0, width - size[0] + 1), rng.integers(0, height - size[1] + 1)
    tensor = images.to_tensor(big.crop((left, top, left + size[0], top + size[1])), size)
    if options.flip_left_right and rng.random() < 0.5:
        tensor = tensor[:, ::-1]
    if options.random_brightness:
        tensor = tensor * rng.uniform(1 - options.random_brightness / 100, 1 + options.random_brightness / 100)
    return np.ascontiguousarray(tensor, dtype=np.float32)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """Write then rename: an interrupted run never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def compute_bottlenecks(files: list[tuple[Path, str]], extractor: FeatureExtractor, options: Options,
                        summary: Summary) -> dict[tuple[Path, int], np.ndarray]:
    """{(file, variant): features}; variant 0 is the photo itself, 1… are distorted copies of training photos.

    Unreadable or corrupt photos are skipped with a warning and recorded in summary.skipped.
    """
    cache = Path(options.bottleneck_dir) / extractor.key
    distortion = (f"-f{int(options.flip_left_right)}c{options.random_crop}s{options.random_scale}"
                  f"b{options.random_brightness}")
    features: dict[tuple[Path, int], np.ndarray] = {}
    pending: list[tuple[tuple[Path, int], Path, np.ndarray]] = []

    def flush() -> None:
        if pending:
            out = extractor(np.stack([tensor for _, _, tensor in pending]))
            for (key, cache_path, _), row in zip(pending, out):
                _save_atomically(cache_path, row)
                features[key] = row
            summary.bottlenecks_computed += len(pending)
            pending.clear()

    for path, split in tqdm(files, desc="Bottlenecks", unit="photo"):
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            variants = 1 + (options.distorted_copies if options.distorts and split == "training" else 0)
            image = None
            for variant in range(variants):
                cache_path = cache / (digest + (f"{distortion}-{variant}" if variant else "") + ".npy")
                if cache_path.is_file():
                    try:
                        features[(path, variant)] = np.load(cache_path)
                        summary.bottlenecks_cached += 1
                        continue
                    except (OSError, ValueError):
                        pass  # a damaged cache entry is recomputed
                image = image or images.decode(data)
                rng = np.random.default_rng([int(digest[:8], 16), variant])
                tensor = (distort(image, rng, options, extractor.size) if variant
                          else images.to_tensor(image, extractor.size))
                pending.append(((path, variant), cache_path, tensor))
                if len(pending) >= 32:
                    flush()
        except (images.ImageError, OSError) as exc:
            tqdm.write(f"warning: skipping {path}: {exc}")
            summary.skipped.append({"file": str(path), "reason": str(exc)})
    flush()
    return features


# Training the new layer.
def train_softmax(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                  num_classes: int, options: Options) -> tuple[np.ndarray, np.ndarray, list[dict], int]:
    """retrain.py's final layer: dense + softmax on the bottlenecks, plain gradient descent, random mini-batches."""
    import tensorflow as tf

    steps = options.how_many_training_steps
    if options.epochs:
        steps = max(1, math.ceil(options.epochs * len(train_x) / options.train_batch_size))
    tf.random.set_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    weights = tf.Variable(tf.random.truncated_normal([train_x.shape[1], num_classes], stddev=0.001))
    bias = tf.Variable(tf.zeros([num_classes]))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, weights) + bias
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grad_w, grad_b = tape.gradient(loss, [weights, bias])
        weights.assign_sub(options.learning_rate * grad_w)
        bias.assign_sub(options.learning_rate * grad_b)
        return loss, tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(x @ weights.numpy() + bias.numpy(), 1) == y)) if len(x) else float("nan")

    history = []
    bar = tqdm(range(1, steps + 1), desc="Training", unit="step")
    for i in bar:
        batch = rng.integers(0, len(train_x), min(options.train_batch_size, len(train_x)))
        loss, train_accuracy = step(tf.constant(train_x[batch]), tf.constant(train_y[batch], tf.int32))
        if i % options.eval_step_interval == 0 or i == steps:
            history.append({"step": i, "loss": float(loss), "train_accuracy": float(train_accuracy),
                            "validation_accuracy": accuracy(val_x, val_y)})
            bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{history[-1]['validation_accuracy']:.2f}",
                            refresh=False)
    return weights.numpy(), bias.numpy(), history, steps


# Writing the checkpoint.
def serving_graph(extractor: FeatureExtractor, weights: np.ndarray, bias: np.ndarray, final_tensor_name: str):
    """The base graph up to its features, then the new layer: Placeholder → … → final_tensor_name (Softmax)."""
    import tensorflow as tf

    base = tf.compat.v1.GraphDef()
    base.ParseFromString(extractor.graph_bytes)
    trunk = _subgraph(base, FEATURE_TENSOR)  # drops the ImageNet head, and its final_result name with it
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(trunk, name="")
        features = graph.get_tensor_by_name(FEATURE_TENSOR + ":0")
        logits = tf.matmul(features, tf.constant(weights), name="final_layer/matmul") + tf.constant(bias)
        tf.nn.softmax(logits, name=final_tensor_name)
    return graph.as_graph_def()


def _subgraph(graph_def, output: str):
    """The nodes output depends on, in their original order (what TF1's deprecated extract_sub_graph does)."""
    import tensorflow as tf

    nodes = {node.name: node for node in graph_def.node}
    keep, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    trunk = tf.compat.v1.GraphDef()
    trunk.versions.CopyFrom(graph_def.versions)
    trunk.node.extend(node for node in graph_def.node if node.name in keep)
    return trunk


def write_saved_model(graph_def, final_tensor_name: str, path: Path) -> None:
    """The same graph as a TF2 SavedModel: serving_default takes `images` and returns `probabilities`."""
    import tensorflow as tf

    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    pruned = wrapped.prune(wrapped.graph.get_tensor_by_name("Placeholder:0"),
                           wrapped.graph.get_tensor_by_name(final_tensor_name + ":0"))
    module = tf.Module()
    module.pruned = pruned

    @tf.function(input_signature=[tf.TensorSpec([None, *pruned.inputs[0].shape[1:]], tf.float32, name="images")])
    def serve(images):
        return {"probabilities": module.pruned(images)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def write_report(folder: Path, summary: Summary, label_names: list[str], history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    (folder / "misclassified.json").write_text(json.dumps(summary.misclassified, indent=2) + "\n")

    matrix = np.array(summary.confusion_matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test set: {summary.test_accuracy:.1%} accurate ({matrix.sum()} photos)")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_accuracy"] for h in history], label="training accuracy (batch)")
    ax.plot(steps, [h["validation_accuracy"] for h in history], label="validation accuracy")
    ax.plot(steps, [h["loss"] for h in history], label="training loss")
    ax.set_xlabel("step")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Training")
    fig.tight_layout()
    fig.savefig(folder / "training_curve.png", dpi=100)
    plt.close(fig)


def evaluate(test_x: np.ndarray, test_y: np.ndarray, test_files: list[Path], weights: np.ndarray,
             bias: np.ndarray, label_names: list[str], summary: Summary) -> None:
    logits = test_x @ weights + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    n = len(label_names)
    matrix = np.zeros((n, n), int)
    for truth, guess in zip(test_y, predicted):
        matrix[truth, guess] += 1
    summary.confusion_matrix = matrix.tolist()
    summary.test_accuracy = float(np.mean(predicted == test_y)) if len(test_y) else float("nan")
    for i, label in enumerate(label_names):
        predicted_as = matrix[:, i].sum()
        actual = matrix[i].sum()
        summary.per_class[label] = {
            "precision": float(matrix[i, i] / predicted_as) if predicted_as else None,
            "recall": float(matrix[i, i] / actual) if actual else None,
            "test_images": int(actual)}
    summary.misclassified = [
        {"file": str(path), "label": label_names[truth], "predicted": label_names[guess],
         "probability": float(probabilities[k, guess])}
        for k, (path, truth, guess) in enumerate(zip(test_files, test_y, predicted)) if truth != guess]


def retrain(options: Options) -> Summary:
    """The whole run. Raises RetrainError for data that cannot be trained on."""
    started = time.monotonic()
    classes = list_images(options.image_dir)
    check_class_sizes({label: len(files) for label, files in classes.items()}, options)
    label_names = list(classes)
    split = {path: split_of(path.name, options.validation_percentage, options.testing_percentage)
             for files in classes.values() for path in files}
    summary = Summary(classes={label: len(files) for label, files in classes.items()},
                      split={name: sum(s == name for s in split.values()) for name in SPLITS})

    extractor = FeatureExtractor(options.base_model_dir)
    features = compute_bottlenecks([(path, split[path]) for files in classes.values() for path in files],
                                   extractor, options, summary)
    usable = {label: [p for p in files if (p, 0) in features] for label, files in classes.items()}
    check_class_sizes({label: len(files) for label, files in usable.items()}, options, "readable images")
    summary.classes = {label: len(files) for label, files in usable.items()}
    summary.split = {name: sum(split[p] == name for files in usable.values() for p in files) for name in SPLITS}

    def arrays(name: str, with_distortions: bool = False):
        keys = [(p, v, i) for i, files in enumerate(usable.values()) for p in files if split[p] == name
                for v in range(1 + (options.distorted_copies if with_distortions else 0)) if (p, v) in features]
        x = np.stack([features[(p, v)] for p, v, _ in keys]) if keys else np.zeros((0, 1280), np.float32)
        return x, np.array([i for _, _, i in keys], np.int32), [p for p, _, _ in keys]

    train_x, train_y, _ = arrays("training", with_distortions=options.distorts)
    if not len(train_x):
        raise RetrainError("no training images: lower --validation_percentage / --testing_percentage")
    val_x, val_y, _ = arrays("validation")
    test_x, test_y, test_files = arrays("testing")
    weights, bias, history, summary.training_steps = train_softmax(train_x, train_y, val_x, val_y,
                                                                   len(label_names), options)
    evaluate(test_x, test_y, test_files, weights, bias, label_names, summary)
    summary.output_dir = str(Path(options.output_dir).resolve())
    summary.seconds = round(time.monotonic() - started, 1)
    write_checkpoint(options, extractor, weights, bias, label_names, summary, history)
    return summary


def write_checkpoint(options: Options, extractor: FeatureExtractor, weights: np.ndarray, bias: np.ndarray,
                     label_names: list[str], summary: Summary, history: list[dict]) -> None:
    """Everything goes into a temporary folder beside output_dir, renamed into place only when complete."""
    output = Path(options.output_dir).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        graph_def = serving_graph(extractor, weights, bias, options.final_tensor_name)
        (staging / options.output_graph).write_bytes(graph_def.SerializeToString())
        (staging / options.output_labels).write_text("\n".join(label_names) + "\n", encoding="utf-8")
        (staging / "label_map.pbtxt").write_text(labels_module.to_pbtxt(label_names), encoding="utf-8")
        write_saved_model(graph_def, options.final_tensor_name, staging / options.saved_model_dir)
        shutil.copy(staging / options.output_labels, staging / options.saved_model_dir / "label_map.txt")
        write_report(staging / "report", summary, label_names, history)
        width, height = extractor.size
        tensorflow_conf = {"model_dir": ".", "input_width": str(width), "input_height": str(height)}
        if options.final_tensor_name != "final_result":
            tensorflow_conf["output_tensor"] = options.final_tensor_name
        if options.output_labels != "label_map.txt":
            tensorflow_conf["labels_file"] = options.output_labels
        (staging / "conf.json").write_text(json.dumps({"http_server": {
            "exec": {"main_class": "RetrainedClassificationModel", "main_file": "retrain_inference"},
            "tensorflow": tensorflow_conf}}, indent=2) + "\n")
        previous = output.with_name(f".{output.name}.previous")
        if output.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(output, previous)
        os.replace(staging, output)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def format_summary(summary: Summary) -> str:
    classes = ", ".join(f"{label} {count}" for label, count in summary.classes.items())
    lines = [f"Trained on {sum(summary.classes.values())} photos in {len(summary.classes)} classes ({classes}).",
             f"Split: {summary.split['training']} training, {summary.split['validation']} validation, "
             f"{summary.split['testing']} testing. Bottlenecks: {summary.bottlenecks_computed} computed, "
             f"{summary.bottlenecks_cached} from the cache. {summary.training_steps} training steps."]
    if summary.skipped:
        lines.append(f"Skipped {len(summary.skipped)} unreadable file(s): "
                     + ", ".join(Path(s["file"]).name for s in summary.skipped))
    tested = sum(c["test_images"] for c in summary.per_class.values())
    lines.append(f"Test accuracy: {summary.test_accuracy:.1%} ({tested} photos).")
    for label, c in summary.per_class.items():
        precision = "–" if c["precision"] is None else f"{c['precision']:.0%}"
        recall = "–" if c["recall"] is None else f"{c['recall']:.0%}"
        lines.append(f"  {label:<20} precision {precision:>4}  recall {recall:>4}  ({c['test_images']} test photos)")
    lines.append(f"Wrote {summary.output_dir} in {summary.seconds:.0f} s (report in report/). "
                 f"Serve it: python app.py --conf {summary.output_dir}/conf.json")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    defaults = Options(image_dir=Path(), output_dir=Path())
    parser = argparse.ArgumentParser(prog="python -m classifier.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", type=Path, required=True, help="one subfolder of photos per class")
    parser.add_argument("--output_dir", type=Path, required=True, help="the checkpoint_dir to write")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--how_many_training_steps", type=int, default=defaults.how_many_training_steps)
    steps.add_argument("--epochs", type=float, default=None, help="train for this many passes instead of steps")
    for name in ("learning_rate",):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    for name in ("train_batch_size", "validation_percentage", "testing_percentage", "eval_step_interval",
                 "random_crop", "random_scale", "random_brightness", "distorted_copies", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument("--flip_left_right", action="store_true")
    for name in ("output_graph", "output_labels", "final_tensor_name", "saved_model_dir"):
        parser.add_argument(f"--{name}", default=getattr(defaults, name))
    parser.add_argument("--bottleneck_dir", type=Path, default=defaults.bottleneck_dir)
    parser.add_argument("--base_model_dir", type=Path, default=defaults.base_model_dir,
                        help="the feature extractor's checkpoint_dir (default: the embedded EfficientNet-Lite0)")
    return Options(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    options = parse_args(argv)
    try:
        summary = retrain(options)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the output folder", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
