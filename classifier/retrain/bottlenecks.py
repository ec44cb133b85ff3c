"""Bottlenecks: the base model's features for each photo (and its distorted copies), cached by file content."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import images
from ..formats import load_frozen_graph
from .options import Options, RetrainError, Summary

FEATURE_TENSOR = "feature_vector"  # the base graph's pooled features, written by tools/port_efficientnet_lite0.py


class FeatureExtractor:
    """The base model's frozen graph, cut at its pooled features."""

    def __init__(self, base_model_dir: Path):
        graph_path = Path(base_model_dir) / "frozen_inference_graph.pb"
        self.graph_bytes = graph_path.read_bytes()
        self.runtime = load_frozen_graph(graph_path, "Placeholder", FEATURE_TENSOR)
        if not self.runtime.input_size:
            raise RetrainError(f"{graph_path} has no fixed input size")
        self.size = self.runtime.input_size
        self.key = hashlib.sha256(self.graph_bytes).hexdigest()[:16]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runtime.predict(batch)


def distort(image, rng: np.random.Generator, options: Options, size: tuple[int, int]) -> np.ndarray:
    """retrain.py's distortions: scale up and crop at random, flip, scale the brightness."""
    scale = rng.uniform(1.0, 1.0 + options.random_scale / 100) * (1.0 + options.random_crop / 100)
    width, height = max(size[0], round(size[0] * scale)), max(size[1], round(size[1] * scale))
    big = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = rng.integers(0, width - size[0] + 1), rng.integers(0, height - size[1] + 1)
    tensor = images.to_tensor(big.crop((left, top, left + size[0], top + size[1])), size)
    if options.flip_left_right and rng.random() < 0.5:
        tensor = tensor[:, ::-1]
    if options.random_brightness:
        tensor = tensor * rng.uniform(1 - options.random_brightness / 100, 1 + options.random_brightness / 100)
    return np.ascontiguousarray(tensor, dtype=np.float32)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """Write then rename: an interrupted run never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def compute_bottlenecks(files: list[tuple[Path, str]], extractor: FeatureExtractor, options: Options,
                        summary: Summary) -> dict[tuple[Path, int], np.ndarray]:
    """{(file, variant): features}; variant 0 is the photo itself, 1… are distorted copies of training photos.

    Unreadable or corrupt photos are skipped with a warning and recorded in summary.skipped.
    """
    cache = Path(options.bottleneck_dir) / extractor.key
    distortion = (f"-f{int(options.flip_left_right)}c{options.random_crop}s{options.random_scale}"
                  f"b{options.random_brightness}")
    features: dict[tuple[Path, int], np.ndarray] = {}
    pending: list[tuple[tuple[Path, int], Path, np.ndarray]] = []

    def flush() -> None:
        if pending:
            out = extractor(np.stack([tensor for _, _, tensor in pending]))
            for (key, cache_path, _), row in zip(pending, out):
                _save_atomically(cache_path, row)
                features[key] = row
            summary.bottlenecks_computed += len(pending)
            pending.clear()

    for path, split in tqdm(files, desc="Bottlenecks", unit="photo"):
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            variants = 1 + (options.distorted_copies if options.distorts and split == "training" else 0)
            image = None
            for variant in range(variants):
                cache_path = cache / (digest + (f"{distortion}-{variant}" if variant else "") + ".npy")
                if cache_path.is_file():
                    try:
                        features[(path, variant)] = np.load(cache_path)
                        summary.bottlenecks_cached += 1
                        continue
                    except (OSError, ValueError):
                        pass  # a damaged cache entry is recomputed
                image = image or images.decode(data)
                rng = np.random.default_rng([int(digest[:8], 16), variant])
                tensor = (distort(image, rng, options, extractor.size) if variant
                          else images.to_tensor(image, extractor.size))
                pending.append(((path, variant), cache_path, tensor))
                if len(pending) >= 32:
                    flush()
        except (images.ImageError, OSError) as exc:
            tqdm.write(f"warning: skipping {path}: {exc}")
            summary.skipped.append({"file": str(path), "reason": str(exc)})
    flush()
    return features
