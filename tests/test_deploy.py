"""The Dockerfile: it lints clean, follows the rules we set, and its exact CMD serves here (no Docker engine)."""
from __future__ import annotations

import json
import os
import re
import subprocess

from bench.server import wait_until_ready
from conftest import ROOT, encode, solid, write_colour_graph, write_conf
from test_app import curl

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instruction(name: str) -> str:
    """The last NAME instruction, with continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(name) + 1:].strip() for line in joined.splitlines() if line.startswith(name + " ")][-1]


def test_dockerfile_lints_clean_and_follows_the_rules():
    run = subprocess.run(["hadolint", "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert instruction("FROM") == "python:3.11-slim"
    assert instruction("USER") not in ("root", "0")
    assert instruction("EXPOSE") == "8080"
    assert "/healthz" in instruction("HEALTHCHECK")
    assert "UAI_SERVICE_CONFIG=/app/conf.json" in instruction("ENV")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests", "**/.litert"} <= set(ignored)


def test_the_exact_cmd_serves_and_honours_uai_service_config(tmp_path):
    """Runs the image's CMD as it is, from the project folder (the image's WORKDIR holds the same files)."""
    write_colour_graph(tmp_path / "model", size=224)
    conf = write_conf(tmp_path, model_dir="model", size=224)
    command = json.loads(instruction("CMD"))
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "UAI_SERVICE_CONFIG": str(conf)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready("http://127.0.0.1:8080/readyz", process, 120)
        red = tmp_path / "red.png"
        red.write_bytes(encode(solid("red")))
        status, result, _ = curl("-T", str(red), "http://127.0.0.1:8080/service")
        assert status == 200 and result[0][0] == "red"  # the colour model: UAI_SERVICE_CONFIG was honoured
        healthcheck = json.loads(instruction("HEALTHCHECK").split("CMD", 1)[1])  # the image's own probe, run here
        assert subprocess.run(healthcheck, timeout=30).returncode == 0
        assert "Training is turned off" in json.dumps(curl("http://127.0.0.1:8080/config")[1])  # --no-train
    finally:
        process.terminate()
        process.wait(30)
