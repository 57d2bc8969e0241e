"""Tiny backbones for tests and quick experiments (a few thousand parameters, 32 px input).

They follow the same contract as the real ones — named stem, blocks with BatchNormalization,
a top — so every code path (freezing, BatchNorm handling, saving) runs on them in milliseconds.
"""

from __future__ import annotations

import keras

from transferkit.backbones._groups import GroupRule
from transferkit.backbones._registry import BackboneSpec, register_backbone


def _tiny_cnn(*, input_shape: tuple[int, int, int], weights: str | None, width: int = 8) -> keras.Model:
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet' here, got {weights!r}")
    # "imagenet" has no meaning for a test network: it gets a fixed seed instead, so that
    # "pretrained" and random tiny backbones differ and tests are repeatable.
    seed = 1234 if weights == "imagenet" else None
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", kernel_initializer=init, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for block in (1, 2, 3):
        width *= 2 if block > 1 else 1
        x = keras.layers.Conv2D(
            width, 3, strides=2 if block > 1 else 1, padding="same", kernel_initializer=init,
            name=f"block{block}_conv",
        )(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
    x = keras.layers.Conv2D(2 * width, 1, kernel_initializer=init, name="top_conv")(x)
    x = keras.layers.BatchNormalization(name="top_bn")(x)
    outputs = keras.layers.ReLU(name="top_relu")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


TINY_CNN = BackboneSpec(
    name="tiny_cnn",
    family="test",
    constructor=_tiny_cnn,
    input_size=32,
    min_size=8,
    preprocessing="tf",
    feature_dim=64,
    groups=GroupRule(blocks=(r"^(block\d+)_",), stem=r"^stem_", top=r"^top_"),
    description="8-32-channel CNN with BatchNorm, for tests",
    params=9240,
    source="test",
)


def register_test_backbones() -> None:
    """Register ``tiny_cnn`` (called once on import)."""
    register_backbone(TINY_CNN, overwrite=True)
