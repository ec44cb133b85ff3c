"""'None of these' scores compared on real photos: python -m bench.open_set (needs Debian's tuxpaint-stamps-default).

Trains retraining's layer on four tuxpaint categories (as docs/retraining.md shows), then scores the held-out test
photos of those classes against every stamp of six categories it never saw, with each candidate score: the AUROC of
known against unseen, and, at the threshold retraining's calibration sets on the validation photos, the shares of
known test photos and of unseen photos called none of these. The last row is what retraining ships."""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from classifier.retrain import Options
from classifier.retrain.bottlenecks import FeatureExtractor, compute_bottlenecks
from classifier.retrain.data import list_images, split_of
from classifier.retrain.open_set import KNOWN_REJECTED, OpenSetScore, auroc
from classifier.retrain.options import Summary
from classifier.retrain.training import train_softmax

STAMPS = Path("/usr/share/tuxpaint/stamps")
KNOWN = {"mammals": "animals/mammals", "birds": "animals/birds", "fruit": "food/fruit", "flowers": "plants/flowers"}
UNSEEN = ["vehicles", "space", "sports", "household", "town", "people"]


def features(folder: Path, bottlenecks: Path) -> dict:
    """The base model's features of the known classes (by split) and of the unseen stamps, and the trained layer."""
    for name, source in KNOWN.items():
        (folder / name).symlink_to(STAMPS / source)
    options = Options(image_dir=folder, output_dir=folder / "unused", bottleneck_dir=bottlenecks, int8=False)
    extractor = FeatureExtractor(options.base_model_dir)
    classes = list_images(folder)
    split = {path: split_of(path.name, options.validation_percentage, options.testing_percentage)
             for files in classes.values() for path in files}
    known = compute_bottlenecks([(path, split[path]) for path in split], extractor, options, Summary({}, {}))
    data = {}
    for name in ("training", "validation", "testing"):
        rows = [(known[(path, 0)], index) for index, files in enumerate(classes.values()) for path in files
                if split[path] == name and (path, 0) in known]
        data[name] = (np.stack([row for row, _ in rows]), np.array([index for _, index in rows]))
    stamps = [(path, "testing") for category in UNSEEN for path in sorted((STAMPS / category).rglob("*.png"))]
    data["unseen"] = np.stack(list(compute_bottlenecks(stamps, extractor, options, Summary({}, {})).values()))
    data["layer"] = train_softmax(*data["training"], *data["validation"], len(classes), options)[:2]
    return data


def candidates(data: dict) -> dict:
    """Each score as a function of features: larger is further from the trained classes."""
    weights, bias = data["layer"]
    train_x, train_y = data["training"]

    def logits(x):
        return x @ weights + bias

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def softmax_max(x):
        p = np.exp(logits(x) - logits(x).max(1, keepdims=True))
        return -(p / p.sum(1, keepdims=True)).max(1)

    def energy(x):
        z = logits(x)
        return -(z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)))

    means = unit(np.stack([unit(train_x[train_y == c]).mean(0) for c in range(train_y.max() + 1)]))
    relative = OpenSetScore.fit(train_x, train_y)
    plain = OpenSetScore.fit(train_x, train_y)
    plain.whitened_background = np.zeros_like(plain.whitened_background)
    plain.background_whitener = np.zeros_like(plain.background_whitener)  # no background term: plain Mahalanobis
    return {"maximum softmax probability": softmax_max, "energy (logits)": energy,
            "cosine to the nearest class mean": lambda x: -(unit(x) @ means.T).max(1),
            "nearest training photo (cosine, k = 1)": lambda x: -(unit(x) @ unit(train_x).T).max(1),
            "Mahalanobis (shared covariance, shrunk)": plain.distance,
            "relative Mahalanobis (shipped)": relative.distance}


def compare(data: dict) -> list[dict]:
    rows = []
    for name, score in candidates(data).items():
        held_out = np.sort(score(data["validation"][0]))
        rank = min(len(held_out), math.ceil((len(held_out) + 1) * (1 - KNOWN_REJECTED)))
        threshold = held_out[rank - 1]  # the same split-conformal rule as OpenSetScore.calibrate
        known, unseen = score(data["testing"][0]), score(data["unseen"])
        rows.append({"score": name, "auroc": round(auroc(known, unseen), 3),
                     "unseen_rejected": round(float(np.mean(unseen > threshold)), 3),
                     "known_test_rejected": round(float(np.mean(known > threshold)), 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_set", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "open_set.json")
    parser.add_argument("--bottleneck_dir", type=Path, default=Path(tempfile.gettempdir()) / "bottleneck")
    args = parser.parse_args(argv)
    if not STAMPS.is_dir():
        print(f"error: {STAMPS} is missing: apt-get install tuxpaint-stamps-default", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        data = features(Path(folder), args.bottleneck_dir)
    rows = compare(data)
    counts = {"known_test_photos": len(data["testing"][1]), "validation_photos": len(data["validation"][1]),
              "unseen_photos": len(data["unseen"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**counts, "scores": rows}, indent=2) + "\n")
    print(f"{counts['known_test_photos']} known test photos, {counts['unseen_photos']} unseen; threshold from "
          f"{counts['validation_photos']} validation photos\n")
    print("| score | AUROC | unseen called none of these | known test photos called none of these |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['score']} | {row['auroc']:.3f} | {row['unseen_rejected']:.0%} | {row['known_test_rejected']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
