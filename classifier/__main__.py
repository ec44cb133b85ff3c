"""The command line: python -m classifier IMAGE... [--conf conf.json] [--top-k K] [--json] [--retime] [--convert];
python -m classifier --convert --model-repository DIR: every model of a repository, converted."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None, prog: str = "python -m classifier") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="Classify images with the model "
                                     "that conf.json names; print the top-k labels of each.")
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    parser.add_argument("--conf", type=Path, default=None,
                        help="conf.json to load (default: --model's, else $UAI_SERVICE_CONFIG, else ./conf.json, else "
                             "the project's own)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="serve this model with no conf.json: a model folder, a .pb, .keras, .h5 or .tflite "
                             "file, or a Teachable Machine .zip export (--conf wins when both are given)")
    parser.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                        help="with --convert or --retime and no IMAGE: every model in DIR (as app.py's "
                             "--model-repository names them), one after the other")
    parser.add_argument("--labels", default=None, metavar="FILE", help="with --model: its labels file, one per line "
                        "(default: the one beside the model, or packed in it)")
    parser.add_argument("--top-k", type=int, default=None, help="how many labels per image (default: conf's top_k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object {path: result} instead")
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's own start-up log lines")
    parser.add_argument("--retime", action="store_true",
                        help="time the engines again on this machine and record the choice (no TensorFlow needed "
                             "once the model is converted); with no IMAGE, only that")
    parser.add_argument("--convert", action="store_true",
                        help="convert the model for the engines and check them against TensorFlow (once: the "
                             "result is cached beside the model), so that an install without TensorFlow serves "
                             "it; with no IMAGE, only that")
    parser.add_argument("--converted-only", action="store_true",
                        help="with --convert: choose among the converted engines only, for an install that has "
                             "no TensorFlow (the Docker image's runtime stage), even where TensorFlow times faster")
    args = parser.parse_args(argv)
    if not args.images and not (args.retime or args.convert):
        parser.error("give at least one IMAGE (or --retime, or --convert)")
    if args.model_repository and (args.images or not (args.retime or args.convert)):
        parser.error("--model-repository goes with --convert or --retime, and no IMAGE")
    return args


def main(argv: list[str] | None = None, prog: str = "python -m classifier") -> int:
    from . import ConfError, LabelsError, load, quiet

    args = parse_args(argv, prog)
    if args.retime or args.convert:
        import logging
        import os

        from .loader import RETIME_VARIABLE

        from .engines import CONVERTED_ONLY_VARIABLE

        if args.retime:
            os.environ[RETIME_VARIABLE] = "1"
        if args.converted_only:
            os.environ[CONVERTED_ONLY_VARIABLE] = "1"
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # the figures and the choice are the answer
    if args.verbose:
        quiet.set_verbose()  # before TensorFlow loads, with the model
    from .formats import ModelError

    from .from_path import chosen_conf

    if args.model_repository:
        return convert_repository(args.model_repository)
    try:
        conf = chosen_conf(args.conf, args.model, args.labels)
        model = load(conf)
    except (ConfError, ModelError, LabelsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.top_k:
        model.top_k = args.top_k
    if args.retime or args.convert:
        print(f"serving with {model.runtime.engine}")
        if not args.images:
            return 0
    results = classify_files(model, args.images)
    print_results(args.images, results, args.json)
    return 1 if any(isinstance(result, dict) and "error" in result for result in results) else 0


def convert_repository(folder: Path) -> int:
    """Each model of the repository loaded (converted, checked, timed: what --convert does for one), its engine
    or its error printed by name; 2 if any was refused, so that a build step fails."""
    from . import ConfError, LabelsError, load
    from .formats import ModelError
    from .from_path import discover

    try:
        confs = discover(folder)
    except ConfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refused = 0
    for name, conf in confs.items():
        try:
            print(f"{name}: serving with {load(conf).runtime.engine}", flush=True)
        except (ConfError, ModelError, LabelsError, OSError) as exc:
            print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
            refused += 1
    return 2 if refused else 0


def print_results(paths: list[Path], results: list, as_json: bool) -> None:
    """Each image's top-k labels (and "none of these" where asked), or its error on stderr; or one JSON object."""
    from .results import plain

    if as_json:
        print(json.dumps({str(path): plain(result) for path, result in zip(paths, results)}, indent=2))
    else:
        for path, result in zip(paths, results):
            if isinstance(result, dict) and "error" in result:
                print(f"{path}: error: {result['error']}", file=sys.stderr)
                continue
            if isinstance(result, dict):
                print(f"{path}" + (": none of these (closest below)" if result["none_of_these"] else ""))
                result = result["labels"]
            else:
                print(f"{path}")
            for label, probability in result:
                print(f"  {probability:7.2%}  {label}")


def classify_files(model: Any, paths: list[Path]) -> list:
    """One result per file: the model's execute() on the readable ones, in one call, given as UAI gave them
    (objects whose .body holds the bytes), so UAI-style classes work too; {"error": …} for the others."""
    from .images import ImageError, limits_of, read_bytes
    from .model import uai_request

    results: list = [None] * len(paths)
    readable = []
    for index, path in enumerate(paths):
        try:
            readable.append((index, uai_request(read_bytes(path, limits_of(model)))))
        except ImageError as exc:
            results[index] = {"error": str(exc)}
    if readable:
        # A model calibrated for "none of these" gives each image's verdict beside its labels.
        calibrated = getattr(model, "none_of_these_above", None) is not None
        execute = model.execute_with_verdicts if calibrated else model.execute
        answers = execute([request for _, request in readable], len(readable))
        for (index, _), answer in zip(readable, answers, strict=True):
            results[index] = answer
    return results


if __name__ == "__main__":
    sys.exit(main())
