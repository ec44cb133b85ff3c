"""The peers' own environments: a venv for each, installed by uv from its lock in this folder, kept between runs.

A peer whose pins conflict with our lock (KServe's) cannot share our environment, so it gets its own, made once
(uv: about a second from its cache, the downloads the first time) under $CLASSIFIER_BENCH_CACHE or
~/.cache/classifier-bench, named by its lock's hash so that a changed lock makes a new one. Without a package
index (offline), the peer is left out of the run and the reason printed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cache_folder() -> Path:
    given = os.environ.get("CLASSIFIER_BENCH_CACHE")
    return Path(given) if given else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "classifier-bench"


def python_for(peer: str) -> Path:
    """The peer's venv's python, made from HERE/<peer>.txt if it is not there yet. Raises RuntimeError (with
    uv's words) when it cannot be made."""
    lock = HERE / f"{peer}.txt"
    venv = cache_folder() / f"{peer}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{venv.name}.", dir=venv.parent))  # a run's own: two runs never share
    try:
        for step in (["venv", "-q", "--allow-existing", "--python", sys.executable, str(partial)],
                     ["pip", "install", "-q", "--python", str(partial / "bin" / "python"), "-r", str(lock)]):
            run = subprocess.run([sys.executable, "-m", "uv", *step], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{peer}'s environment could not be made: {run.stderr.strip()[-500:]}")
        # uv writes the venv's path into its activation scripts; renamed, only `bin/python …` is used, which works.
        partial.rename(venv)
    except OSError:  # another run made it first
        if not python.exists():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return python
