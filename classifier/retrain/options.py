"""A retraining run's options (retrain.py's flags), its summary, and its error."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import bundled

DEFAULT_BASE_MODEL = bundled.CHECKPOINT_DIR
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
    int8: bool = True  # also write the int8 twin (quantize.py); --no_int8 skips it
    none_of_these: bool = True  # calibrate the "none of these" column (open_set.py); --no_none_of_these skips it
    other_dir: Path | None = None  # photos of none of the classes: the report gives the share called none of these

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
    int8_test_accuracy: float = float("nan")  # the int8 twin's, on the same test photos (quantize.py)
    int8: str = ""  # what became of the int8 twin: written, refused by the guard, or not written and why
    per_class: dict[str, dict] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    misclassified: list[dict] = field(default_factory=list)
    # "None of these": its threshold, the held-out photos that set it, the shares called none of these (known test
    # photos; other_dir's photos) and the AUROC of known test photos against other_dir's; or why there is none.
    none_of_these: dict = field(default_factory=dict)
    seconds: float = 0.0
    output_dir: str = ""
