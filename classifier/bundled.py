"""Where the embedded default model, its conf.json and the example photos are: beside the package in a clone,
inside it (classifier/bundled/, put there by the wheel's build: pyproject.toml) once installed."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
FOLDER = _PACKAGE / "bundled" if (_PACKAGE / "bundled" / "conf.json").is_file() else _PACKAGE.parent
DEFAULT_CONF = FOLDER / "conf.json"  # names the model below, and retrain_inference.py beside it as main_file
CHECKPOINT_DIR = FOLDER / "checkpoint_dir"  # ImageNet EfficientNet-Lite0: the default model and retraining's base
EXAMPLES = FOLDER / "examples"  # the page's examples, the warm-up photo, the engines' check photos
