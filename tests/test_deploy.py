"""The Dockerfile: it lints clean and follows the rules we set (tests/test_docker.py builds and runs it)."""
from __future__ import annotations

import json
import re
import subprocess

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """Every NAME instruction's arguments, in order, with continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(name) + 1:].strip() for line in joined.splitlines() if line.startswith(name + " ")]


def test_dockerfile_lints_clean_and_follows_the_rules():
    run = subprocess.run(["hadolint", "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ARG BASE_IMAGE=python:3.11-slim" in DOCKERFILE  # the official image unless a build says otherwise
    assert instructions("FROM")[0] == "${BASE_IMAGE} AS base"
    assert instructions("FROM")[-1] == "base AS runtime"  # the default target: the image without TensorFlow
    runtime = DOCKERFILE[DOCKERFILE.rindex("FROM "):]
    assert "all-packages" not in runtime and "requirements.txt" not in runtime  # no TensorFlow, no wheels
    assert instructions("USER")[-1] not in ("root", "0")
    assert instructions("EXPOSE")[-1] == "8080 8500"  # HTTP, and the gRPC port (TF Serving's)
    probe = json.loads(instructions("HEALTHCHECK")[-1].split("CMD", 1)[1])
    assert probe[0] == "python" and "/readyz" in probe[-1]
    assert json.loads(instructions("CMD")[-1]) == ["python", "app.py"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests", "**/.litert"} <= set(ignored)
