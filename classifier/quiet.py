"""A quiet start: TensorFlow's and LiteRT's native INFO lines stay off the console unless asked for."""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

VERBOSE_ENV = "CLASSIFIER_VERBOSE"  # =1: show everything TensorFlow and LiteRT print (as --verbose does)

# What TensorFlow and LiteRT print once per process however TF_CPP_MIN_LOG_LEVEL is set: absl's INFO lines
# written before absl::InitializeLog (oneDNN's notice, …) and LiteRT's XNNPACK notice. Warnings and errors pass.
NATIVE_NOISE = re.compile(r"I\d{4} [\d:.]+ +\d+ \S+:\d+\]|WARNING: All log messages before "
                          r"absl::InitializeLog\(\) is called|INFO: Created TensorFlow Lite XNNPACK delegate")
_redirect = threading.Lock()  # fd 2 is one per process: one filter at a time


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def set_verbose() -> None:
    """--verbose: takes effect when called before TensorFlow loads (it reads its log level once)."""
    os.environ[VERBOSE_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


if not verbose():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own C++ INFO and WARNING lines


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Runs the block with file descriptor 2 (where native code writes) captured, then passes on every captured
    line but the known start-up noise. Python's own stderr output in the block is passed on too, only later."""
    if verbose():
        yield
        return
    with _redirect, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class TensorFlowMissing(ImportError):
    """TensorFlow is needed (to load a model it has not converted yet, or to retrain) and is not installed: a
    serving-only install (requirements-serve.txt, the Docker image)."""


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported with its start-up noise filtered (the core's modules import it through here)."""
    try:
        with native_stderr_filtered():
            import tensorflow
    except ModuleNotFoundError as exc:
        if exc.name != "tensorflow":
            raise
        raise TensorFlowMissing("TensorFlow is not installed here (a serving-only install)") from None
    python_logger = tensorflow.get_logger()  # made here, with a handler of its own that would print each line twice
    python_logger.handlers.clear()  # its lines go to the application's handlers, once, in the application's format
    if not verbose():  # its Python INFO lines too ("Assets written to …" at each LiteRT conversion)
        python_logger.setLevel(logging.WARNING)
    return tensorflow
