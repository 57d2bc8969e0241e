"""The parts of a transferkit model, named once, and how they are put together.

Every model transferkit builds is ``image → preprocessor → backbone → head``: a raw-pixel input
(float RGB in [0, 255]), a :class:`~transferkit.backbones.Preprocess` layer that applies the
backbone's own input contract, the backbone as a nested model, and the head as a nested model.
Code that needs one of them asks :func:`model_parts` instead of looking for layer names or
positions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras

from transferkit._heads import Head
from transferkit._types import Weights
from transferkit.backbones._preprocessing import Preprocess
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.backbones._weights import build_backbone

PREPROCESSOR = "preprocess"
BACKBONE = "backbone"
HEAD = "head"
INPUT = "image"
MIXED_PRECISION = "mixed_float16"  # float16 compute, float32 variables (see FineTuner(mixed_precision=…))


@dataclass(frozen=True)
class ModelParts:
    """The named parts of a transferkit model.

    Attributes:
        preprocessor: Maps raw pixels to the backbone's input range.
        backbone: The pretrained network (outputs a feature map or vector).
        head: The trainable top, or ``None`` for a model saved before heads were nested
            (such a model predicts and trains as before, but without cached features).
    """

    preprocessor: Preprocess
    backbone: keras.Model
    head: keras.Model | None


def model_parts(model: keras.Model) -> ModelParts:
    """The preprocessor, backbone and head of ``model`` (built by :func:`build_model`)."""
    names = {layer.name for layer in model.layers}
    if PREPROCESSOR not in names or BACKBONE not in names:
        raise ValueError(
            f"Model {model.name!r} is not a transferkit model: it has no {PREPROCESSOR!r} and {BACKBONE!r} layers."
        )
    head = model.get_layer(HEAD) if HEAD in names else None
    return ModelParts(model.get_layer(PREPROCESSOR), model.get_layer(BACKBONE), head)


def with_preprocessor(model: keras.Model, preprocessor: keras.layers.Layer) -> keras.Model:
    """``model`` with ``preprocessor`` in place of its own, every other layer shared (same weights, same
    trainable flags), and no compile state: what ``save_run`` writes and ``load_run`` maps back."""
    # a fresh view of the same graph is not compiled, and clone_model copies a compile state (with an
    # optimizer that is not built: loading that warns about skipped optimizer variables)
    view = keras.Model(model.inputs, model.outputs, name=model.name)

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        # the preprocessor takes the image alone: keyword arguments recorded for the one it replaces
        # (``mask=None`` for a nested model) need not fit its signature
        return layer(*args) if layer is preprocessor else layer(*args, **kwargs)

    return keras.models.clone_model(
        view, clone_function=lambda layer: preprocessor if layer.name == PREPROCESSOR else layer, call_function=call
    )


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone of a transferkit model, or ``model`` itself when it is a bare backbone."""
    if any(layer.name == BACKBONE for layer in model.layers):
        return model.get_layer(BACKBONE)
    return model


def with_preprocessing(net: keras.Model, preprocessing: str, *, name: str) -> keras.Model:
    """``raw pixels → Preprocess(preprocessing) → net`` as one model taking float RGB in [0, 255]."""
    size = net.input_shape[1]
    inputs = keras.Input(shape=(size, size, 3), name=INPUT)
    return keras.Model(inputs, net(Preprocess(preprocessing, name=PREPROCESSOR)(inputs)), name=name)


def build_model(
    backbone: str | BackboneSpec,
    *,
    num_outputs: int,
    weights: Weights,
    head: Head | None = None,
    image_size: int | None = None,
) -> keras.Model:
    """Build ``raw pixels → preprocessing → backbone → head`` as one functional model.

    The model takes float RGB images in [0, 255] of shape ``(image_size, image_size, 3)``.
    The backbone is a nested model named ``"backbone"`` and starts frozen; the head is a nested
    model named ``"head"``. Apply a :class:`~transferkit.FreezePolicy` to unfreeze parts of the
    backbone: policies keep its BatchNormalization layers non-trainable, which in Keras 3 means
    inference mode.

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
    return assemble_model(spec, build_backbone(spec, weights=weights, image_size=image_size), num_outputs=num_outputs,
                          head=head)


def assemble_model(spec: BackboneSpec, net: keras.Model, *, num_outputs: int, head: Head | None = None
                   ) -> keras.Model:
    """:func:`build_model` around a headless network already built (and frozen here)."""
    net.name = BACKBONE
    net.trainable = False
    top = (head or Head()).build_model(net.output_shape[1:], num_outputs, name=HEAD)
    size = net.input_shape[1]
    inputs = keras.Input(shape=(size, size, 3), name=INPUT)
    # Keras 3 replays a functional graph with the outer call's `training` flag, overriding a
    # `training=False` recorded here; BatchNorm is kept in inference mode by leaving those
    # layers non-trainable instead (see _freezing.py), which Keras 3 honours in every mode.
    features = net(Preprocess(spec.preprocessing, name=PREPROCESSOR)(inputs))
    return keras.Model(inputs, top(features), name="transferkit_" + re.sub(r"\W", "_", spec.name)[-60:])


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Build layers under the Keras dtype policy ``name`` (``None``: the current one), restoring the
    previous policy afterwards: layers keep the policy they were built with, the process does not."""
    if name is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _all_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    yield layer
    for child in getattr(layer, "layers", ()):  # nested models
        yield from _all_layers(child)


def computes_in_float16(model: keras.Model) -> bool:
    """Whether any layer of ``model`` (nested models opened) computes in float16: a mixed-precision
    model, whose training needs loss scaling."""
    return any(layer.compute_dtype == "float16" for layer in _all_layers(model))
