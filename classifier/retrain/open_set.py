"""'None of these': how far a photo's features lie from every trained class, calibrated, and built into the graph.

The score is fitted on the training photos' base-model features and calibrated on the held-out ones; the serving
graph computes it as one more output column, after the class probabilities."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The covariances' shrinkage towards their mean variance: a class of tens of photos has far fewer photos than the
# features have dimensions (1280), so its sample covariance cannot be inverted as it is. 0.05–0.3 measured alike.
SHRINKAGE = 0.1
# The share of known-class photos the calibrated threshold may call none of these (split conformal: at most this
# share of new photos of the trained classes, in expectation, when the held-out photos are like them).
KNOWN_REJECTED = 0.05


def _normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _whitener(centred: np.ndarray) -> np.ndarray:
    """L with L Lᵀ the inverse of the shrunk covariance of the centred rows: ‖x L‖² is x's Mahalanobis
    distance."""
    covariance = centred.T @ centred / len(centred)
    target = np.trace(covariance) / len(covariance)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * target * np.eye(len(covariance))
    return np.linalg.cholesky(np.linalg.inv(shrunk))


@dataclass
class OpenSetScore:
    """The relative Mahalanobis distance (Ren et al., 2021) of L2-normalised features: the distance to the nearest
    class mean under the classes' shared covariance, less the distance to the mean of all training photos under
    theirs. Measured on the tuxpaint stamps (docs/retraining.md), it told unseen categories from the trained ones
    best of the scores tried: maximum softmax probability, energy, cosine to the class means, k nearest neighbours
    and the plain Mahalanobis distance. Both distances are sums of squares of whitened features, so the graph
    computes them without the cancellation an expanded quadratic form would suffer in low precision.

    The served column is sigmoid((distance - threshold) / scale): above 0.5, none of these."""

    class_whitener: np.ndarray  # [D, D]
    whitened_means: np.ndarray  # [C, D]: the class means, whitened
    background_whitener: np.ndarray  # [D, D]
    whitened_background: np.ndarray  # [D]: the mean of all training features, whitened
    threshold: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, features: np.ndarray, classes: np.ndarray) -> "OpenSetScore":
        x = _normalised(features)
        means = np.stack([x[classes == c].mean(0) for c in range(int(classes.max()) + 1)])
        class_whitener = _whitener(x - means[classes])
        background = x.mean(0)
        background_whitener = _whitener(x - background)
        return cls(class_whitener, means @ class_whitener, background_whitener, background @ background_whitener)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """[N] relative Mahalanobis distances, in float64: larger is further from every trained class."""
        x = _normalised(features)
        to_classes = (((x @ self.class_whitener)[:, None, :] - self.whitened_means[None]) ** 2).sum(-1).min(1)
        to_all = (((x @ self.background_whitener) - self.whitened_background) ** 2).sum(-1)
        return to_classes - to_all

    def calibrate(self, held_out: np.ndarray) -> None:
        """The threshold from the held-out known photos' distances: the split-conformal quantile, the
        ⌈(n + 1)(1 − KNOWN_REJECTED)⌉-th smallest (their largest when fewer than 19 are held out). The scale is
        their spread, so that the column moves from ~0.27 to ~0.73 across one spread around the threshold."""
        distances = np.sort(self.distance(held_out))
        rank = min(len(distances), math.ceil((len(distances) + 1) * (1 - KNOWN_REJECTED)))
        self.threshold = float(distances[rank - 1])
        spread = float(np.subtract(*np.percentile(distances, [75, 25])))
        self.scale = spread if spread > 0 else max(abs(self.threshold), 1.0)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """[N] the served column, in numpy: what the graph computes."""
        return self.column(self.distance(features))

    def column(self, distances: np.ndarray) -> np.ndarray:
        """The served column for distances already computed."""
        return 1 / (1 + np.exp(-(distances - self.threshold) / self.scale))

    def graph(self, features):
        """The same column in TensorFlow ops, [N, 1], on the graph's features tensor [N, D]."""
        import tensorflow as tf

        x = features / tf.maximum(tf.norm(features, axis=1, keepdims=True), 1e-12)
        whitened = tf.matmul(x, tf.constant(self.class_whitener, tf.float32))
        to_classes = tf.reduce_min(tf.reduce_sum(tf.square(
            whitened[:, None, :] - tf.constant(self.whitened_means, tf.float32)[None]), -1), 1)
        to_all = tf.reduce_sum(tf.square(tf.matmul(x, tf.constant(self.background_whitener, tf.float32))
                                         - tf.constant(self.whitened_background, tf.float32)), -1)
        return tf.sigmoid((to_classes - to_all - self.threshold) / self.scale)[:, None]


def rejected(scores: np.ndarray) -> float:
    """The share of photos called none of these."""
    return float(np.mean(scores > 0.5)) if len(scores) else float("nan")


def auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    """The probability that an unseen photo scores above a known one (ties count half): 1 separates them."""
    if not len(known) or not len(unseen):
        return float("nan")
    greater = (unseen[:, None] > known[None]).mean()
    ties = (unseen[:, None] == known[None]).mean()
    return float(greater + ties / 2)


def fit_and_measure(train: tuple[np.ndarray, np.ndarray], validation: np.ndarray, test: np.ndarray,
                    other: np.ndarray | None) -> tuple[OpenSetScore | None, dict]:
    """The score fitted on the training features and calibrated on the validation photos', and what the report
    says of it: the threshold, how many photos set it, the shares of known test photos (and of other photos)
    called none of these, and the AUROC of the test photos against the other ones. None, and why, when no photo
    was held out for validation."""
    if not len(validation):
        return None, {"calibrated": False, "why": "no validation photos to calibrate on: raise "
                                                  "--validation_percentage or add photos"}
    score = OpenSetScore.fit(*train)
    score.calibrate(validation)
    known = score.distance(test)
    measured = {"calibrated": True, "threshold": score.threshold, "scale": score.scale,
                "calibration_photos": int(len(validation)), "target_known_rejected": KNOWN_REJECTED,
                "test_photos": int(len(test)), "test_rejected": rejected(score.column(known))}
    if other is not None:
        unseen = score.distance(other)
        measured.update(other_photos=int(len(other)), other_rejected=rejected(score.column(unseen)),
                        auroc=auroc(known, unseen))
    return score, measured
