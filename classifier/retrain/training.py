"""The run: list and split the photos, compute bottlenecks, train the new softmax layer, evaluate, write."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bottlenecks import FeatureExtractor, compute_bottlenecks
from .checkpoint import write_checkpoint
from .data import IMAGE_SUFFIXES, check_class_sizes, check_split, list_images, split_of
from .open_set import fit_and_measure
from .options import SPLITS, Options, RetrainError, Summary


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
    check_split(summary.classes, summary.split, options)  # before any photo is read

    extractor = FeatureExtractor(options.base_model_dir)
    features = compute_bottlenecks([(path, split[path]) for files in classes.values() for path in files],
                                   extractor, options, summary)
    usable = {label: [p for p in files if (p, 0) in features] for label, files in classes.items()}
    check_class_sizes({label: len(files) for label, files in usable.items()}, options, "readable images")
    summary.classes = {label: len(files) for label, files in usable.items()}
    summary.split = {name: sum(split[p] == name for files in usable.values() for p in files) for name in SPLITS}
    check_split(summary.classes, summary.split, options)

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
    open_set = None
    if options.none_of_these:
        other = other_features(options, extractor, summary) if options.other_dir else None
        open_set, summary.none_of_these = fit_and_measure((train_x, train_y), val_x, test_x, other)
    summary.output_dir = str(Path(options.output_dir).resolve())
    summary.seconds = round(time.monotonic() - started, 1)
    test_set = [(path, label_names[index]) for path, index in zip(test_files, test_y)]
    write_checkpoint(options, extractor, weights, bias, label_names, summary, history, test_set, open_set)
    return summary


def other_features(options: Options, extractor: FeatureExtractor, summary: Summary) -> np.ndarray:
    """The base model's features of other_dir's photos (any folders deep), which belong to none of the classes."""
    folder = Path(options.other_dir)
    if not folder.is_dir():
        raise RetrainError(f"--other_dir {folder} is not a folder")
    photos = sorted(Path(top) / name for top, _, names in os.walk(folder, followlinks=True)  # folders may be links
                    for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    counted = Summary(classes={}, split={})  # the run's bottleneck counts are the training photos'
    features = compute_bottlenecks([(path, "testing") for path in photos], extractor, options, counted)
    summary.skipped += counted.skipped
    if not features:
        raise RetrainError(f"--other_dir {folder} holds no readable photos")
    return np.stack(list(features.values()))


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
