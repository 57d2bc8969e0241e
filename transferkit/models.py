"""Putting a backbone, its preprocessing and a head together into one Keras model."""

from __future__ import annotations

import re

import keras

from transferkit.backbones.registry import BackboneSpec, get_backbone
from transferkit.backbones.weights import WeightsArg, build_backbone
from transferkit.freezing import BACKBONE_LAYER
from transferkit.heads import Head
from transferkit.preprocessing import Preprocess


def build_model(
    backbone: str | BackboneSpec,
    *,
    num_outputs: int,
    weights: WeightsArg,
    head: Head | None = None,
    image_size: int | None = None,
) -> keras.Model:
    """Build ``raw pixels → preprocessing → backbone → head`` as one functional model.

    The model takes float RGB images in [0, 255] of shape ``(image_size, image_size, 3)``.
    The backbone is a nested model named ``"backbone"``; it starts frozen. Apply a
    :class:`~transferkit.freezing.FreezePolicy` to unfreeze parts of it: policies keep its
    BatchNormalization layers non-trainable, which in Keras 3 means inference mode.

    Args:
        backbone: Registry name or spec.
        num_outputs: Number of classes (or regression targets).
        weights: ``"imagenet"``, ``None`` or a weights file path — always explicit.
        head: Head to put on top; ``Head()`` by default.
        image_size: Square input size; the backbone's default when omitted.

    Example:
        >>> model = build_model("mobilenet_v2", num_outputs=5, weights=None, image_size=160)
    """
    spec = get_backbone(backbone)
    head = head or Head()
    net = build_backbone(spec, weights=weights, image_size=image_size)
    net.name = BACKBONE_LAYER
    net.trainable = False
    size = net.input_shape[1]
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = Preprocess(spec.preprocessing, name="preprocess")(inputs)
    # Keras 3 replays a functional graph with the outer call's `training` flag, overriding a
    # `training=False` recorded here; BatchNorm is kept in inference mode by leaving those
    # layers non-trainable instead (see freezing.py), which Keras 3 honours in every mode.
    x = net(x)
    outputs = head.build(x, num_outputs)
    return keras.Model(inputs, outputs, name="transferkit_" + re.sub(r"\W", "_", spec.name)[-60:])
