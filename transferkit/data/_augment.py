"""Random augmentation of training batches, described once and built as Keras layers."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from transferkit._errors import ConfigError, check_choice


@dataclass(frozen=True, kw_only=True)
class Augment:
    """Random augmentation of training batches, as Keras preprocessing layers.

    Attributes:
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``None``.
        rotation: Maximum rotation as a fraction of a full turn (0 disables).
        zoom: Maximum zoom in or out as a fraction (0 disables).
        contrast: Maximum contrast change as a fraction (0 disables).

    Example:
        >>> load_folder("photos", augment=Augment(rotation=0.1))
    """

    flip: str | None = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if self.flip is not None:
            check_choice("flip", self.flip, ("horizontal", "vertical", "horizontal_and_vertical"))
        for name in ("rotation", "zoom", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"Expected {name} in [0, 1). Received: {name}={value!r}.")

    def layers(self, seed: int | None = None) -> keras.Sequential:
        """The augmentation as one Keras model (works inside tf.data or a model)."""
        stack: list[keras.layers.Layer] = []
        if self.flip:
            stack.append(keras.layers.RandomFlip(self.flip, seed=seed))
        if self.rotation:
            stack.append(keras.layers.RandomRotation(self.rotation, fill_mode="reflect", seed=seed))
        if self.zoom:
            stack.append(keras.layers.RandomZoom(self.zoom, fill_mode="reflect", seed=seed))
        if self.contrast:
            # RandomContrast expects a declared value range; pixels here are 0–255
            stack.append(keras.layers.RandomContrast(self.contrast, value_range=(0, 255), seed=seed))
        return keras.Sequential(stack, name="augment")
