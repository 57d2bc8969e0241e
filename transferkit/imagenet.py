"""Offline ImageNet predictions: the 1000 class names and raw-pixel ImageNet classifiers.

Keras' own ``decode_predictions`` downloads its class index; these names ship with the package.

Example:
    >>> model = imagenet_classifier("mobilenet", weights="imagenet")
    >>> decode_predictions(model.predict(photos_0_255))[0][0]
    (285, 'Egyptian cat', 0.93)
"""

from __future__ import annotations

import functools
import re

import keras
import numpy as np

from transferkit._errors import ConfigError
from transferkit._model import with_preprocessing
from transferkit._types import Weights
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.backbones._weights import build_classifier, shipped_file

__all__ = ["decode_predictions", "imagenet_class_names", "imagenet_classifier"]


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in Keras' class order (index 285 is 'Egyptian cat')."""
    lines = shipped_file("imagenet_classes.tsv").read_text(encoding="utf-8").splitlines()
    return tuple(line.split("\t", 1)[1] for line in lines)


def decode_predictions(probabilities: np.ndarray, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """The ``top`` ``(index, name, probability)`` triples of each row of ImageNet probabilities."""
    probs = np.asarray(probabilities)
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ConfigError(f"Expected ImageNet probabilities of shape (n, 1000). Received: {probs.shape}.")
    names = imagenet_class_names()
    order = np.argsort(-probs, axis=1)[:, :top]
    return [[(int(j), names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def imagenet_classifier(
    backbone: str | BackboneSpec = "mobilenet", *, weights: Weights = "imagenet", image_size: int | None = None
) -> keras.Model:
    """A pretrained ImageNet classifier that takes raw RGB pixels in [0, 255].

    The backbone's preprocessing is the first layer, as in every transferkit model. With
    ``backbone="mobilenet"`` this works offline: the weights ship with the package.
    """
    spec = get_backbone(backbone)
    net = build_classifier(spec, weights=weights, image_size=image_size)
    return with_preprocessing(net, spec.preprocessing, name="imagenet_" + re.sub(r"\W", "_", spec.name)[-60:])
