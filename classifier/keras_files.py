"""What Keras files need besides loading: Keras 2 configs made readable, the input convention their layers say."""
from __future__ import annotations

from typing import Any

from .images import InputConvention


def depthwise_without_groups(keras: Any) -> type:
    class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
        def __init__(self, *args: Any, groups: int = 1, **kwargs: Any):
            super().__init__(*args, **kwargs)
    return DepthwiseConv2D


def convention(model: Any) -> tuple[InputConvention | None, str]:
    """A model whose first layers rescale or normalise its input wants pixels as they are, 0–255."""
    import keras

    layers = [layer for layer in flat_layers(model) if not isinstance(layer, keras.layers.InputLayer)][:3]
    for layer in layers:
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return InputConvention(mean=0.0, std=1.0), f"its {type(layer).__name__} layer takes pixels 0–255"
    return None, ""


def flat_layers(model: Any) -> list:
    """The layers in order, nested Sequential/functional models opened up (Teachable Machine nests two)."""
    found = []
    for layer in getattr(model, "layers", []):
        found += flat_layers(layer) if hasattr(layer, "layers") else [layer]
    return found
