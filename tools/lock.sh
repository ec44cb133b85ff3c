#!/usr/bin/env bash
# The locks: every package of each install path pinned, transitive ones included, from pyproject.toml's ranges.
#   pip install uv==0.13.9 && tools/lock.sh              # keeps each pin that still fits; --upgrade: the newest
# uv's `pip compile` (not pip-tools'): it reads pyproject.toml's extras and dependency groups, resolves for a
# platform and Python other than the one it runs on, and takes seconds. Each lock after the first is constrained
# by the one below it, so a package pinned in two locks has one version: installing requirements-ray.txt after
# requirements.txt (two pip calls) changes nothing requirements.txt installed (tests/test_setup.py checks).
#   requirements.txt        serving, conversion and retraining: `pip install .`'s dependencies
#   requirements-serve.txt  serving a converted model, no TensorFlow (the Docker image's runtime; group "runtime")
#   requirements-ray.txt    requirements.txt with Ray Serve (the "ray" extra)
#   requirements-dev.txt    requirements-ray.txt with the tests' packages (the "dev" extra): what ./test.sh installs
# For Linux on x86-64 with Python 3.11, what CI and the Docker image run; elsewhere pip resolves pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command tools/lock.sh
        --no-emit-index-url -q "$@")
uv pip compile pyproject.toml "${common[@]}" -o requirements.txt
uv pip compile --group pyproject.toml:runtime -c requirements.txt "${common[@]}" -o requirements-serve.txt
uv pip compile pyproject.toml --extra ray -c requirements.txt "${common[@]}" -o requirements-ray.txt
uv pip compile pyproject.toml --extra ray --extra dev -c requirements-ray.txt "${common[@]}" -o requirements-dev.txt
