"""The `classifier` command (pyproject.toml's console script), in the style of `bentoml serve`: one subcommand per
job, each the command a clone runs today. Above serving, as app.py is: each subcommand is imported when asked for."""
from __future__ import annotations

import sys
from typing import Callable

USAGE = """usage: classifier COMMAND [ARGS...]   (classifier COMMAND --help: that command's options)

  serve      the server: the page, /service, /explain, KServe v2, TF Serving, gRPC, MCP   (python app.py)
  classify   the top labels of images, with no server                               (python -m classifier)
  retrain    a folder of labelled photos → a servable model                 (python -m classifier.retrain)
  convert    a model converted for the engines once, so that serving needs no TensorFlow
                                                                     (python -m classifier --convert)"""


def serve(argv: list[str]) -> int:
    from .serving import command

    command.main(argv, prog="classifier serve")
    return 0


def classify(argv: list[str]) -> int:
    from .__main__ import main

    return main(argv, prog="classifier classify")


def convert(argv: list[str]) -> int:
    from .__main__ import main

    return main(["--convert", *argv], prog="classifier convert")


def retrain(argv: list[str]) -> int:
    from .retrain.__main__ import main

    return main(argv, prog="classifier retrain")


COMMANDS: dict[str, Callable[[list[str]], int]] = {"serve": serve, "classify": classify, "retrain": retrain,
                                                    "convert": convert}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"classifier-serve {version('classifier-serve')}")
        except PackageNotFoundError:
            print("classifier-serve (not installed: run from a clone)")
        return 0
    if argv[0] not in COMMANDS:
        print(f"classifier: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
