"""python -m bench.explain: the explanation methods compared on photos whose answer is known, in one run.

Each photo is two halves: the cat on one side, the coffee on the other, and swapped. A method is right when the
heat for the cat label falls on the cat's half and the heat for the coffee label on the coffee's half. Methods:
occlusion (classifier.explain: hiding squares, log-probability drops) at several grid and square sizes, hidden
by the mean colour or by a blurred copy, scored by log-probability or probability, and RISE (random masks, 7×7 upsampled, as Petsiuk et al. 2018), all as batched
forward passes through the served engine. Prints a Markdown table: share of positive heat on the right half
(mean and worst of the 4 cases), forward passes and seconds per explanation (median of 3).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

from bench.server import ROOT

PHOTOS = ROOT / "tests" / "photos"
CAT_LABELS = ("Egyptian cat", "tiger cat", "tabby")
COFFEE_LABELS = ("espresso", "cup", "coffee mug")


def halves(left: Image.Image, right: Image.Image, size: tuple[int, int] = (448, 224)) -> Image.Image:
    """One photo made of two: `left` squeezed into the left half, `right` into the right half."""
    width, height = size
    photo = Image.new("RGB", size)
    photo.paste(left.convert("RGB").resize((width // 2, height)), (0, 0))
    photo.paste(right.convert("RGB").resize((width // 2, height)), (width // 2, 0))
    return photo


def share_on(grid: np.ndarray, side: str) -> float:
    """The share of the grid's positive heat on the left or right half."""
    positive = np.clip(grid, 0, None)
    half = positive.shape[1] // 2
    part = positive[:, :half] if side == "left" else positive[:, half:]
    return float(part.sum() / positive.sum()) if positive.sum() > 0 else 0.0


def cases(model) -> list[tuple[Image.Image, int, str]]:
    """(photo, label index, the half where its heat belongs): the cat and the coffee label, on both layouts. Each
    label is the most probable of its kind on that photo."""
    cat, coffee = Image.open(PHOTOS / "cat.jpeg"), Image.open(PHOTOS / "coffee.jpeg")
    found = []
    for photo, cat_side in ((halves(cat, coffee), "left"), (halves(coffee, cat), "right")):
        row = model.forward(model.preprocess(photo)[None])[0]
        coffee_side = "right" if cat_side == "left" else "left"
        for names, side in ((CAT_LABELS, cat_side), (COFFEE_LABELS, coffee_side)):
            index = max((model.labels.index(n) for n in names), key=lambda i: row[i])
            found.append((photo, index, side))
    return found


def occlusion(grid: int, patch: int, log: bool = True, blur: bool = False) -> Callable:
    from classifier import explain

    def run(model, photo, index) -> tuple[np.ndarray, int]:
        masks = explain.hiding_masks(grid, patch)
        tensor = model.preprocess(photo)
        hiding = blurred(tensor) if blur else explain.stand_in(tensor)
        rows = forward_all(model, np.concatenate([tensor[None], explain.hidden(tensor, masks, hiding)]))
        if log:
            return explain.heat(rows[0], rows[1:], masks, index), len(rows)
        drops = rows[0, index] - rows[1:, index]
        return (drops[:, None, None] * masks).sum(0) / masks.sum(0), len(rows)
    return run


def blurred(tensor: np.ndarray, factor: int = 16) -> np.ndarray:
    """The other stand-in measured: the photo shrunk `factor` times (box average) and enlarged back, per channel."""
    height, width = tensor.shape[:2]
    small = (max(1, width // factor), max(1, height // factor))
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(tensor[..., c], dtype=np.float32), "F")
                                .resize(small, Image.Resampling.BOX).resize((width, height), Image.Resampling.BILINEAR))
                     for c in range(tensor.shape[2])], axis=-1).astype(tensor.dtype)


def rise(count: int, cells: int = 7, keep: float = 0.5) -> Callable:
    def run(model, photo, index) -> tuple[np.ndarray, int]:
        tensor = model.preprocess(photo)
        height, width = tensor.shape[:2]
        grids = np.random.default_rng(0).random((count, cells, cells)) < keep
        masks = np.stack([np.asarray(Image.fromarray(g.astype(np.float32), "F").resize((width, height),
                                                                                       Image.Resampling.BILINEAR))
                          for g in grids])
        rows = forward_all(model, tensor[None] * masks[..., None])
        saliency = (rows[:, index][:, None, None] * masks).sum(0) / count / keep
        saliency -= saliency.mean()  # RISE's map is relative: above the mean is what drove the score
        return saliency.reshape(8, height // 8, 8, width // 8).mean((1, 3)), count  # pooled, for share_on
    return run


def forward_all(model, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([model.forward(batch[start:start + 16]) for start in range(0, len(batch), 16)])


def compare(model) -> list[dict]:
    methods = {"occlusion 6×6, 2×2 squares, mean colour, log-probability (served)": occlusion(6, 2),
               "occlusion 8×8, 3×3 squares, mean colour, log-probability": occlusion(8, 3),
               "occlusion 8×8, 3×3 squares, blurred photo, log-probability": occlusion(8, 3, blur=True),
               "occlusion 8×8, 3×3 squares, mean colour, probability": occlusion(8, 3, log=False),
               "occlusion 8×8, 2×2 squares, mean colour, log-probability": occlusion(8, 2),
               "RISE, 128 masks": rise(128), "RISE, 256 masks": rise(256)}
    found = cases(model)
    rows = []
    for name, method in methods.items():
        shares, seconds, passes = [], [], 0
        for photo, index, side in found:
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                grid, passes = method(model, photo, index)
                timings.append(time.perf_counter() - started)
            seconds.append(statistics.median(timings))
            shares.append(share_on(grid, side))
        rows.append({"method": name, "mean_share": round(float(np.mean(shares)), 2),
                     "worst_share": round(min(shares), 2), "passes": passes,
                     "seconds": round(statistics.median(seconds), 2)})
    return rows


def main() -> int:
    import classifier
    from bench.server import cpu_name

    model = classifier.load(ROOT / "conf.json")
    print("| method | heat on the right half: mean | worst | forward passes | seconds |\n|---|---|---|---|---|")
    for row in compare(model):
        print(f"| {row['method']} | {row['mean_share']:.0%} | {row['worst_share']:.0%} | {row['passes']} | "
              f"{row['seconds']} |")
    print(f"\n{os.cpu_count()} CPUs, {cpu_name()}; engine: {model.runtime.engine}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
