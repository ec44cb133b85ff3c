"""The int8 twin of a freshly retrained model: quantized on its own training photos, tested like the fp32 one."""
from __future__ import annotations

import logging
from pathlib import Path

from .options import Summary

log = logging.getLogger(__name__)


def write_int8(model_dir: Path, tensorflow_conf: dict, test_set: list[tuple[Path, str]], summary: Summary) -> None:
    """Converts and quantizes the model in model_dir (calibrated on conf's calibration_photos, the training
    photos), into its engine cache beside it, where `precision: "int8"` finds it; records in summary the int8
    model's test accuracy, or why the precision guard refused it."""
    from ..model import RetrainedClassificationModel  # the serving engines, guard and cache

    conf = {"http_server": {"exec": {"main_class": "RetrainedClassificationModel", "main_file": "retrain_inference"},
                            "tensorflow": {**tensorflow_conf, "model_dir": str(model_dir), "precision": "int8"}}}
    try:
        model = RetrainedClassificationModel(conf)
    except Exception as exc:  # the fp32 model is the product; an int8 failure is reported, not fatal
        summary.int8 = f"not written ({type(exc).__name__}: {exc})"
        return
    if "int8" not in model.runtime.engine:
        summary.int8 = "refused by the precision guard (see the log): serve it in fp32"
        return
    summary.int8 = f"written ({model.runtime.engine}); serve it with \"precision\": \"int8\" in conf.json"
    if test_set:
        answers = model.execute([path for path, _ in test_set], 32)
        right = sum(isinstance(a, list) and a[0][0] == label for a, (_, label) in zip(answers, test_set))
        summary.int8_test_accuracy = right / len(test_set)
