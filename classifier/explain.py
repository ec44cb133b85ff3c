"""Why a label: occlusion heatmaps from batched forward passes through the model's own engine, and their overlay.

The photo, as the model sees it, is cut into GRID × GRID cells. Each of the masked copies hides a square of
PATCH × PATCH cells (painted in the photo's mean colour); all of them go through the model like any batch. A
cell's heat is how much hiding it lowered the label's log-probability, averaged over the squares that hid it. It
needs nothing but forward passes, so it works for every format and engine (LiteRT included) and for any class
with preprocess/forward. Measured against RISE, and why log-probability:
bench/explain.py and README's "Why this label".
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import images

GRID = 6  # heatmap cells per side
PATCH = 2  # cells per side of each hiding square: every cell is hidden by PATCH² squares; (GRID + 1)² squares
OVERLAY_SIZE = 512  # longest side of the overlay picture
ENCODED_SIDE = 448  # longest side of the copies hidden for a model that takes encoded images


class LabelError(ValueError):
    """A label to explain that the model does not have (a 400)."""


@dataclass(frozen=True)
class Explanation:
    """The label explained, its probability for the whole photo, and the heat grid [GRID, GRID]: how much hiding
    each cell lowers the label's log-probability (positive: the cell drove the score; negative: it held it back)."""

    label: str
    probability: float
    grid: np.ndarray

    def as_json(self, photo: Image.Image) -> dict:
        """Plain data for HTTP: the label, its probability, the grid as numbers, and the overlay as PNG base64."""
        buffer = io.BytesIO()
        overlay(photo, self.grid).save(buffer, "PNG")
        return {"label": self.label, "probability": self.probability,
                "grid": np.round(self.grid, 4).tolist(), "overlay_png": base64.b64encode(buffer.getvalue()).decode()}


def hiding_masks(grid: int = GRID, patch: int = PATCH) -> np.ndarray:
    """[M, grid, grid] booleans: every square of patch × patch cells, sliding one cell at a time and overhanging
    the edges, so that each cell is hidden by exactly patch² squares (edges count as much as the centre)."""
    positions = range(1 - patch, grid)
    masks = np.zeros((len(positions) ** 2, grid, grid), dtype=bool)
    for number, (top, left) in enumerate((top, left) for top in positions for left in positions):
        masks[number, max(top, 0):top + patch, max(left, 0):left + patch] = True
    return masks


def hidden(tensor: np.ndarray, masks: np.ndarray, stand_in: np.ndarray) -> np.ndarray:
    """[M, H, W, 3]: one copy of the tensor per mask, its masked cells replaced by the stand-in."""
    height, width = tensor.shape[:2]
    grid = masks.shape[1]
    pixels = masks[:, (np.arange(height) * grid) // height][:, :, (np.arange(width) * grid) // width]
    return np.where(pixels[..., None], stand_in, tensor)


def occludable(tensor: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], list[np.ndarray]]]:
    """What the squares hide, and how the hidden copies become the model's inputs again: the tensor itself; or, for
    a model that decodes images itself (its input is the photo's bytes), the photo's pixels, each copy sent as PNG."""
    if tensor.dtype != object:
        return tensor, list
    photo = images.decode(tensor.item())
    photo.thumbnail((ENCODED_SIDE, ENCODED_SIDE))  # 100 copies are encoded, and the model resizes them anyway
    return np.asarray(photo), lambda copies: [images.to_encoded(copy) for copy in copies]


def stand_in(tensor: np.ndarray) -> np.ndarray:
    """What a hidden cell shows: the photo's own mean colour (in the model's value range, whatever it is). Measured
    against a blurred copy (bench/explain.py): as good on photos, and it also hides flat areas, which blur keeps."""
    return np.broadcast_to(tensor.mean(axis=(0, 1), dtype=np.float64).astype(tensor.dtype), tensor.shape)


def heat(whole: np.ndarray, masked: np.ndarray, masks: np.ndarray, index: int) -> np.ndarray:
    """The heat grid: `whole` is the model's probability row for the photo, `masked` its rows for the hidden copies.

    Log-probability, not probability: for a label the model gives 0.4 %, hiding what it saw still divides that
    by ten, which a difference of probabilities would not show above the noise (bench/explain.py measures both)."""
    def log(p: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, None))
    drops = log(whole[index]) - log(masked[:, index])
    return (drops[:, None, None] * masks).sum(0) / masks.sum(0)


def label_index(labels: list[str], label: str | None, probabilities: np.ndarray) -> int:
    """The index of `label`, or of the most probable label when none is given."""
    if not label:
        return int(np.argmax(probabilities))
    try:
        return labels.index(label)
    except ValueError:
        raise LabelError(f"the model has no label {label!r}") from None


def explain(model: Any, item: Any, label: str | None = None,
            forward: Callable[[np.ndarray], np.ndarray] | None = None, batch_size: int = 16) -> Explanation:
    """Explains `label` (default: the top one) for one image, with the model's preprocess and forward, in batches
    (never all the copies at once: 100 of them at 224² are 60 MB). For library users; the server runs the same
    steps through its batcher (serving/explanations.py)."""
    forward = forward or model.forward
    tensor = model.preprocess(item)
    pixels, as_inputs = occludable(tensor)
    masks, hiding = hiding_masks(), stand_in(pixels)
    classes = len(model.labels)  # a row's first columns: its probabilities (a "none of these" score may follow)
    whole = forward(tensor[None])[0][:classes]
    masked = np.concatenate([forward(np.stack(as_inputs(hidden(pixels, masks[start:start + batch_size], hiding))))
                             for start in range(0, len(masks), batch_size)])[:, :classes]
    index = label_index(list(model.labels), label, whole)
    return Explanation(model.labels[index], float(whole[index]), heat(whole, masked, masks, index))


def overlay(photo: Image.Image, grid: np.ndarray) -> Image.Image:
    """The photo (at most OVERLAY_SIZE px) with the positive heat laid over it, smoothly, in red to yellow."""
    photo = photo.convert("RGB")
    photo.thumbnail((OVERLAY_SIZE, OVERLAY_SIZE))
    positive = np.clip(grid, 0, None).astype(np.float32)
    peak = positive.max()
    level = positive / peak if peak > 0 else positive
    smooth = np.asarray(Image.fromarray(level, mode="F").resize(photo.size, Image.Resampling.BICUBIC))
    smooth = np.clip(smooth, 0, 1)[..., None]
    colour = np.concatenate([np.ones_like(smooth), smooth, np.zeros_like(smooth)], axis=-1) * 255  # red → yellow
    alpha = 0.65 * smooth
    blended = np.asarray(photo, dtype=np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(blended.round().astype(np.uint8))
