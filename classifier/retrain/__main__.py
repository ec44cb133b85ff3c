"""The command line: python -m classifier.retrain --image_dir photos/ --output_dir my_model/ (retrain.py's flags)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .options import Options, RetrainError
from .report import format_summary
from .training import retrain


def parse_args(argv: list[str] | None = None, prog: str = "python -m classifier.retrain") -> Options:
    defaults = Options(image_dir=Path(), output_dir=Path())
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
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
    parser.add_argument("--no_int8", dest="int8", action="store_false",
                        help="do not write the int8 model (quantized on the training photos) beside the fp32 one")
    for name in ("output_graph", "output_labels", "final_tensor_name", "saved_model_dir"):
        parser.add_argument(f"--{name}", default=getattr(defaults, name))
    parser.add_argument("--no_none_of_these", dest="none_of_these", action="store_false",
                        help="serve without the calibrated 'none of these' verdict")
    parser.add_argument("--other_dir", type=Path, default=None,
                        help="photos of none of the classes: the report says how many are called 'none of these'")
    parser.add_argument("--bottleneck_dir", type=Path, default=defaults.bottleneck_dir)
    parser.add_argument("--base_model_dir", type=Path, default=defaults.base_model_dir,
                        help="the feature extractor's checkpoint_dir (default: the embedded EfficientNet-Lite0)")
    return Options(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None, prog: str = "python -m classifier.retrain") -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    options = parse_args(argv, prog)
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
