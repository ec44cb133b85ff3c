"""The engines' disk cache: converted models keyed by the model's files, and the record of their checks beside them."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FOLDER = ".litert"  # beside the model; the name predates the other engines, and old caches stay valid
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "classifier" / "litert"


def package_version(*names: str) -> str:
    """An installed package's version from its metadata, without importing it (TensorFlow costs ~1 GB)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def installed(reference: str) -> bool:
    """Whether a reference engine (tensorflow, onnxruntime) can be imported here."""
    return importlib.util.find_spec(reference) is not None


def model_key(model_path: Path, tensors: tuple[str | None, ...] = ()) -> str:
    """A hash of the model's files: a changed model is converted again. It holds no TensorFlow version, so that a
    serving-only install (no TensorFlow: the Docker image) finds what a full one converted; a conversion is valid
    whatever later TensorFlow would make, for it was checked against the reference when made. The record keeps
    which engine versions made each file (and the TensorFlow that converted them). tensors: the input and output
    the conf names, if any: a conversion made for other tensors of the same graph is another model."""
    digest = hashlib.sha256()
    if any(tensors):
        digest.update(repr(tuple(tensors)).encode())
    files = [model_path] if model_path.is_file() else sorted(
        p for p in model_path.rglob("*") if p.is_file() and CACHE_FOLDER not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(model_path) if model_path.is_dir() else path.name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def folders(model_path: Path) -> tuple[Path, Path]:
    """Where cached files go: beside the model, else (a read-only model folder) the user's cache."""
    model_dir = model_path if model_path.is_dir() else model_path.parent
    return model_dir / CACHE_FOLDER, USER_CACHE


def find(model_path: Path, name: str) -> Path | None:
    """The cached file of that name for this model, in the first folder that has it."""
    for folder in folders(model_path):
        if (folder / name).is_file():
            return folder / name
    return None


def store(model_path: Path, name: str, content: bytes) -> Path:
    """Writes a cached file in the first writable folder; returns its path."""
    for folder in folders(model_path):
        try:
            write_atomically(folder / name, content)
            return folder / name
        except OSError as exc:
            log.info("cannot cache %s in %s (%s)", name, folder, exc)
    raise OSError(f"no writable folder for {name}")


def write_atomically(path: Path, content: bytes) -> None:
    """Never a half-written cache entry: a temporary file in the same folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_record(model_path: Path, key: str) -> dict:
    """What was recorded of this model's conversions and checks ({} if nothing): the newest record, for one
    re-timed beside a read-only model folder is written to the user's cache and must win over the folder's."""
    found = [folder / f"{key}.json" for folder in folders(model_path) if (folder / f"{key}.json").is_file()]
    for path in sorted(found, key=lambda path: path.stat().st_mtime, reverse=True):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return {}


def write_record(model_path: Path, key: str, record: dict) -> None:
    try:
        store(model_path, f"{key}.json", json.dumps(record, indent=1).encode())
    except OSError as exc:
        log.info("cannot record the engine checks of %s (%s)", model_path, exc)
