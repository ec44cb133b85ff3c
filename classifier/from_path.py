"""A model named by its path alone (--model): a folder, one model file, or a Teachable Machine .zip → a conf.json;
and a folder of such models (a model repository), each by name."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .archives import ArchiveError, unpack
from .conf import ConfError

MODEL_SUFFIXES = (".pb", ".keras", ".h5", ".tflite", ".onnx")
# Where a zip is unpacked (by its SHA-256, once) and the conf written: the user's cache, else the temp folder
# (a read-only home, as in a container).
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "classifier" / "models"


def conf_for(model: str | os.PathLike, labels: str | os.PathLike | None = None, top_k: int | None = None,
             size: int = 224) -> tuple[Path, str]:
    """A conf.json that serves `model` with RetrainedClassificationModel, its other keys at their defaults (input
    size, labels and convention come from the model, as for any conf), and what was inferred, in words."""
    path = Path(model).expanduser().resolve()
    if not path.exists():
        raise ConfError(f"--model {model}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".zip":
        model_dir, what = _unpacked(path), "a .zip export (Teachable Machine's converted_keras.zip and the like)"
    elif path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
        model_dir, what = path, f"one {path.suffix} file"
    elif path.is_file():
        raise ConfError(f"--model {model}: not a model file; give a folder, a {', '.join(MODEL_SUFFIXES)} file "
                        "or a .zip export")
    else:
        model_dir, what = path, "a model folder"
    keys = {"model_dir": str(model_dir), "input_width": str(size), "input_height": str(size)}
    if labels:
        keys["labels_file"] = str(Path(labels).expanduser().resolve())
    if top_k:
        keys["top_k"] = str(top_k)
    conf = {"http_server": {"exec": {"main_class": "RetrainedClassificationModel", "main_file": "classifier.model"},
                            "tensorflow": keys}}
    text = json.dumps(conf, indent=1)
    return _write(f"conf-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json", text), f"{what}: {model_dir}"


def chosen_conf(conf: Path | None, model: str | None, labels: str | None, default: Path | None = None) -> Path:
    """--conf if given, else a conf made for --model (saying what it inferred), else $UAI_SERVICE_CONFIG (UAI's
    own variable), else `default`, else ./conf.json or the project's."""
    from . import DEFAULT_CONF

    if conf is None and not model and os.environ.get("UAI_SERVICE_CONFIG"):
        conf = Path(os.environ["UAI_SERVICE_CONFIG"])

    if conf:
        if model:
            print(f"note: --conf {conf} is served; --model {model} is ignored", file=sys.stderr)
        return conf
    if model:
        made, inferred = conf_for(model, labels)
        print(f"--model: {inferred} (its input size, labels and convention from the model)", file=sys.stderr)
        return made
    return default or (Path("conf.json") if Path("conf.json").is_file() else DEFAULT_CONF)


def _unpacked(zip_path: Path) -> Path:
    """The zip unpacked into the cache, once per content; a zip holding one top folder is looked into."""
    with open(zip_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    for folder in _folders():
        target = folder / digest
        if not target.is_dir():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                partial = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder))
            except OSError:
                continue
            try:
                unpack(zip_path, partial, max_bytes=2 * 1024 ** 3, max_files=1000)
                os.replace(partial, target)  # whole or not at all: a killed unpack leaves only .unpacking-*
            except ArchiveError as exc:
                raise ConfError(f"--model {zip_path}: {exc}") from None
            except OSError:
                continue
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        entries = [p for p in target.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        return entries[0] if len(entries) == 1 and entries[0].is_dir() else target
    raise ConfError(f"--model {zip_path}: no writable folder to unpack it into ({CACHE}, or the temp folder)")


def _write(name: str, text: str) -> Path:
    for folder in _folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    raise ConfError(f"no writable folder for the conf of --model ({CACHE}, or the temp folder)")


def _folders() -> list[Path]:
    return [CACHE, Path(tempfile.gettempdir()) / "classifier-models"]


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def checked_name(name: str, where: str) -> str:
    """A model's name as the routes carry it (/service/NAME, /v2/models/NAME): ConfError for one they cannot."""
    if not NAME.fullmatch(name):
        raise ConfError(f"{where}: {name!r} cannot name a model: use letters, digits, '_', '.' and '-' (at most 64, "
                        "starting with a letter or digit)")
    return name


def discover(folder: Path) -> dict[str, Path]:
    """A model repository's models, by name → each one's conf.json. A folder holding a conf.json (UAI's keys, its
    model_dir relative to it) is served as that conf says; any other folder, a model file or a .zip export as
    `--model PATH` serves it, its input convention, labels and size inferred. Hidden entries and other files (a
    README) are not models."""
    if not folder.is_dir():
        raise ConfError(f"--model-repository {folder}: no such folder")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or (entry.is_file() and entry.suffix.lower() not in (*MODEL_SUFFIXES, ".zip")):
            continue
        name = checked_name(entry.stem if entry.is_file() else entry.name, f"--model-repository {folder}")
        if name in found:
            raise ConfError(f"--model-repository {folder}: two entries are named {name!r}; rename one")
        found[name] = conf_of(entry)
    if not found:
        raise ConfError(f"--model-repository {folder}: no models in it (a model folder, a {', '.join(MODEL_SUFFIXES)} "
                        "file or a .zip export per model)")
    return found


def conf_of(path: Path) -> Path:
    """The conf.json that serves one repository entry (or --model NAME=PATH)."""
    if path.is_dir() and (path / "conf.json").is_file():
        return path / "conf.json"
    return conf_for(path)[0]
