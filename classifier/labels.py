"""Labels: read label files (one per line, or label_map.pbtxt) and turn probabilities into top-k pairs."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

# Looked for in this order when conf.json names no labels file. retrain.py writes output_labels.txt;
# UAI users renamed it label_map.txt.
LABEL_FILE_NAMES = ("label_map.txt", "output_labels.txt", "labels.txt", "label_map.pbtxt")


class LabelsError(ValueError):
    """A labels file that is missing, empty or malformed."""


def find_labels_file(model_dir: Path, name: str | None = None) -> Path:
    """The labels file conf.json names (relative to model_dir), else the first of LABEL_FILE_NAMES there."""
    if name:
        path = Path(model_dir, name)
        if not path.is_file():
            raise LabelsError(f"the labels file {path} does not exist")
        return path
    for candidate in LABEL_FILE_NAMES:
        if (Path(model_dir) / candidate).is_file():
            return Path(model_dir) / candidate
    raise LabelsError(f"no labels file in {model_dir}: expected one of {', '.join(LABEL_FILE_NAMES)}")


def read_labels(path: Path) -> list[str]:
    """Class names by index: a line per class in a text file, or the items of a label_map.pbtxt."""
    return read_labels_file(path)[0]


def read_labels_file(path: Path) -> tuple[list[str], bool]:
    """The class names, and whether the file numbers its lines as Teachable Machine's labels.txt does."""
    text = Path(path).read_text(encoding="utf-8")
    pbtxt = Path(path).suffix == ".pbtxt"
    labels = parse_pbtxt(text, path) if pbtxt else parse_lines(text)
    if not labels:
        raise LabelsError(f"the labels file {path} holds no labels")
    return labels, not pbtxt and is_numbered(text)


def parse_lines(text: str) -> list[str]:
    """retrain.py's format: line i is the name of class i. Trailing blank lines are ignored. Teachable Machine's
    labels.txt ("0 Cats", "1 Dogs": every line numbered 0, 1, 2 … in order) gives the names without the numbers."""
    lines = [line.strip() for line in text.rstrip("\n").splitlines()] if text.strip() else []
    return [line.split(None, 1)[1] for line in lines] if is_numbered(lines) else lines


def is_numbered(lines: list[str] | str) -> bool:
    """Teachable Machine's labels: every line is "<its index> <name>", from 0 in order."""
    if isinstance(lines, str):
        lines = [line.strip() for line in lines.rstrip("\n").splitlines()]
    return bool(lines) and all(_NUMBERED.fullmatch(line) and int(line.split(None, 1)[0]) == index
                               for index, line in enumerate(lines))


_NUMBERED = re.compile(r"\d+\s+\S.*")


_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"""(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+))""")


def parse_pbtxt(text: str, path: Path | str = "label_map.pbtxt") -> list[str]:
    """The `item { id: N name: "…" display_name: "…" }` format of TensorFlow's object detection API.

    Ids are contiguous and start at 0 or 1 (1 is usual: the detection API keeps 0 for background). The item with
    the lowest id is class 0 of the model's output, the next class 1, and so on. display_name wins over name.
    """
    by_id: dict[int, str] = {}
    for block in _ITEM.findall(text):
        fields = {key: re.sub(r"\\(.)", r"\1", dq or sq) or number
                  for key, dq, sq, number in _FIELD.findall(block)}
        if not fields.get("id", "").lstrip("-").isdigit():
            raise LabelsError(f"{path}: an item has no numeric id: {block.strip()!r}")
        label = fields.get("display_name") or fields.get("name")
        if not label:
            raise LabelsError(f"{path}: item {fields['id']} has neither name nor display_name")
        item_id = int(fields["id"])
        if item_id in by_id:
            raise LabelsError(f"{path}: id {item_id} appears twice")
        by_id[item_id] = label
    if not by_id:
        return []
    first = min(by_id)
    if first not in (0, 1) or sorted(by_id) != list(range(first, first + len(by_id))):
        raise LabelsError(f"{path}: ids must be contiguous from 0 or 1, found {sorted(by_id)[:10]}…")
    return [by_id[i] for i in range(first, first + len(by_id))]


def to_pbtxt(labels: list[str]) -> str:
    """Writes labels as label_map.pbtxt, ids from 1 (class index + 1), as the object detection API does."""
    def quoted(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(f"item {{\n  id: {i + 1}\n  name: {quoted(label)}\n  display_name: {quoted(label)}\n}}\n"
                   for i, label in enumerate(labels))


def packed_labels(path: Path) -> list[str] | None:
    """The labels file a TFLite metadata writer packs into the model (the .tflite is then also a zip)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as packed:
        names = packed.namelist()
        name = next((n for n in LABEL_FILE_NAMES if n in names), None) or \
            next((n for n in names if n.lower().endswith(".txt") and "label" in n.lower()), None)
        return parse_lines(packed.read(name).decode("utf-8")) if name else None


def best(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k most probable classes, most probable first (the one ranking every answer uses)."""
    k = min(k, len(probabilities))
    indices = np.argpartition(-probabilities, k - 1)[:k]
    return indices[np.argsort(-probabilities[indices], kind="stable")]


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[list]:
    """The k most probable classes as [label, probability] pairs, Python floats, most probable first."""
    return [[labels[i], float(probabilities[i])] for i in best(probabilities, k)]
