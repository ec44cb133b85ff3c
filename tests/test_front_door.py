"""The front door (issue 30): a model served by its path alone (--model), and a README whose links and flags
are all real."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import CAT_LABELS, COLOURS, PHOTOS, ROOT, Server, encode, solid
from test_app import curl
from test_conventions import keras2_h5


@pytest.fixture(scope="module")
def teachable_machine_zip(tmp_path_factory) -> Path:
    """converted_keras.zip as Teachable Machine's "Export model → Tensorflow → Keras" makes it: keras_model.h5
    (a Keras 2 file) and labels.txt with numbered lines."""
    folder = tmp_path_factory.mktemp("tm")
    keras2_h5(folder / "keras_model.h5")
    (folder / "labels.txt").write_text("0 red\n1 green\n2 blue\n")
    path = folder / "converted_keras.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(folder / "keras_model.h5", "keras_model.h5")
        archive.write(folder / "labels.txt", "labels.txt")
    return path


def test_app_serves_a_teachable_machine_zip_with_one_flag(teachable_machine_zip, tmp_path):
    running = Server("--model", str(teachable_machine_zip), "--no-train",
                     env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        assert "a .zip export" in running.output() and "Teachable Machine export" in running.output()
        for colour in COLOURS:
            photo = tmp_path / f"{colour}.png"
            photo.write_bytes(encode(solid(colour)))
            status, result, _ = curl("-T", str(photo), f"{running.url}/service")
            assert status == 200 and result[0][0] == colour
    finally:
        running.stop()
    unpacked = list((tmp_path / "cache" / "classifier" / "models").iterdir())
    assert any((folder / "keras_model.h5").is_file() for folder in unpacked if folder.is_dir())


@pytest.mark.parametrize("target", ["checkpoint_dir", "checkpoint_dir/frozen_inference_graph.pb"])
def test_the_command_line_serves_a_folder_or_one_file(target):
    run = subprocess.run([sys.executable, "-m", "classifier", "--model", str(ROOT / target),
                          str(PHOTOS / "cat.jpeg")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--model: " in run.stderr
    assert run.stdout.splitlines()[1].split("%", 1)[1].strip() in CAT_LABELS


def test_a_path_that_is_no_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for target, message in ((tmp_path / "missing", "no such file or folder"), (tmp_path / "notes.txt",
                                                                               "not a model file")):
        run = subprocess.run([sys.executable, "-m", "classifier", "--model", str(target), str(PHOTOS / "cat.jpeg")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_fits_on_a_screen_and_every_relative_link_resolves():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            anchor = target.split("#", 1)[1] if "#" in target else None
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path), f"{page.relative_to(ROOT)}: no #{anchor} in {target}"
        for anchor in re.findall(r"\]\(#([^)\s]+)\)", page.read_text()):
            assert anchor in anchors(page), f"{page.relative_to(ROOT)}: no heading for #{anchor}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces → hyphens."""
    found, fence = set(), False
    for line in page.read_text().splitlines():
        fence ^= line.startswith("```")
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return found


def flags_of(command: list[str]) -> set[str]:
    run = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-1000:]
    return set(re.findall(r"(--[a-z][a-z0-9-_]*)", run.stdout))


def test_every_flag_a_command_block_names_exists():
    known = {"app.py": flags_of(["app.py"]), "-m classifier.retrain": flags_of(["-m", "classifier.retrain"]),
             "-m classifier": flags_of(["-m", "classifier"]), "-m bench": flags_of(["-m", "bench"])}
    for page in DOCS:
        blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", page.read_text(), re.S)
        for line in (line for block in blocks for line in block.splitlines()):
            for command, flags in known.items():
                match = re.search(rf"python3? {re.escape(command)}(?:\s|$)(.*)", line)
                if match and not re.search(rf"python3? {re.escape(command)}[.\w]", line):
                    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-_]*)", match.group(1).split("|")[0]):
                        assert flag in flags, f"{page.relative_to(ROOT)}: `{line.strip()}` names {flag}, " \
                                              f"which {command} does not have"
                    break
