"""The package as a stranger installs it: `python -m build` makes the wheel and sdist (twine check passes), and the
wheel, installed in a venv and run from an empty folder that is not the clone, serves examples/cat.jpeg as a cat
with its embedded model (`classifier serve`, `classifier classify`). The venv sees this machine's packages
(--system-site-packages: the dependencies, not the clone), so that the test does not download 2 GB of them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from conftest import CAT_LABELS, PHOTOS, ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The wheel and sdist of this clone, built without network (hatchling is among the tests' packages)."""
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def test_the_wheel_and_sdist_pass_twine_and_carry_the_model_but_no_cache(built):
    run = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, built.values())],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.count("PASSED") == 2, run.stdout + run.stderr
    names = zipfile.ZipFile(built["wheel"]).namelist()
    for shipped in ("conf.json", "retrain_inference.py", "checkpoint_dir/frozen_inference_graph.pb",
                    "checkpoint_dir/label_map.txt", "examples/cat.jpeg"):
        assert f"classifier/bundled/{shipped}" in names, shipped
    assert not [name for name in names if ".litert" in name or "__pycache__" in name or name.startswith("tests/")]
    entry_points = zipfile.ZipFile(built["wheel"]).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"classifier = classifier.cli:main" in entry_points


def test_the_installed_command_serves_and_classifies_a_cat_away_from_the_clone(built, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                          str(built["wheel"])], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cat.jpeg").write_bytes((PHOTOS / "cat.jpeg").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HOME": str(tmp_path)}
    command = str(venv / "bin" / "classifier")

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import classifier.bundled as b; print(b.FOLDER)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(venv), where  # the installed package's, not the clone's

    classify = subprocess.run([command, "classify", "cat.jpeg", "--json"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)
    assert classify.returncode == 0, classify.stderr[-3000:]
    classified = json.loads(classify.stdout)["cat.jpeg"]
    assert classified[0][0] in CAT_LABELS, classified

    port = free_port()
    served = subprocess.Popen([command, "serve", "--port", str(port), "--grpc-port", "0"], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answer = time.monotonic() + 300, None
        while time.monotonic() < deadline and served.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    photo = (elsewhere / "cat.jpeg").read_bytes()
                    answer = httpx.post(f"http://127.0.0.1:{port}/service", content=photo, timeout=60).json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert answer is not None, served.stdout.read() if served.poll() is not None else "not ready in 300 s"
        assert [label for label, _ in answer] == [label for label, _ in classified]  # the same model, as README says
    finally:
        served.terminate()
        served.wait(timeout=60)
    assert not (elsewhere / "flagged").exists() or not any((elsewhere / "flagged").iterdir())
