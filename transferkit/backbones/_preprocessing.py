"""The preprocessing contract of each backbone, as a Keras layer inside the model.

Models built by transferkit take raw pixels (float, 0–255, RGB). The first layer maps them
to what the pretrained network was trained on, so a user never calls ``preprocess_input``
and a saved model cannot be fed the wrong range by accident.

Every contract is ``x * scale + offset`` per channel (after RGB → BGR for ``"caffe"``), computed
as ``keras.layers.Rescaling`` computes it: :func:`builtin_preprocessor` writes the same contract
with built-in Keras layers only (what a saved run holds, so that plain Keras loads it), and the two
give bit-identical outputs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from transferkit._errors import ConfigError, check_choice

# What each mode does, as documented by keras.applications and TensorFlow Hub.
PREPROCESSING_MODES: dict[str, str] = {
    "tf": "scale to [-1, 1] (x / 127.5 - 1)",
    "torch": "scale to [0, 1], then normalise with the ImageNet mean and std",
    "caffe": "RGB to BGR, then subtract the ImageNet mean (no scaling)",
    "builtin": "none here: the network rescales its input itself",
    "unit": "scale to [0, 1] (TensorFlow Hub convention)",
}
AFFINE_PREFIX = "affine:"
"""A contract of its own: ``affine:S0,S1,S2:O0,O1,O2`` is ``x * S + O`` per RGB channel (a KerasHub
preset's image converter, for one; see :func:`affine_mode`)."""

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# (scale, offset) of each contract that rescales, per channel where a list
_AFFINE: dict[str, tuple[float | list[float], float | list[float]]] = {
    "tf": (1 / 127.5, -1.0),
    "unit": (1 / 255.0, 0.0),
    "torch": ([1 / (255.0 * s) for s in _IMAGENET_STD_RGB],
              [-m / s for m, s in zip(_IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB, strict=True)]),
    "caffe": (1.0, [-m for m in _CAFFE_MEAN_BGR]),
}


def affine_mode(scale: Any, offset: Any) -> str:
    """The contract ``x * scale + offset`` (scalars or one value per RGB channel) as a mode name: a named
    mode where it is one (``"tf"``, ``"unit"``, ``"torch"``, to float32 precision), else ``affine:…``.

    Example:
        >>> affine_mode(1 / 127.5, -1.0)
        'tf'
        >>> affine_mode([1 / 255.0] * 3, [0.0] * 3)
        'unit'
    """
    scales, offsets = _per_channel(scale), _per_channel(offset)
    for mode, (named_scale, named_offset) in _AFFINE.items():
        if mode == "caffe":
            continue
        if (np.allclose(scales, _per_channel(named_scale), rtol=1e-6, atol=0)
                and np.allclose(offsets, _per_channel(named_offset), rtol=1e-6, atol=1e-7)):
            return mode
    return AFFINE_PREFIX + ",".join(map(repr, scales)) + ":" + ",".join(map(repr, offsets))


def _per_channel(value: Any) -> list[float]:
    values = [float(v) for v in np.ravel(np.asarray(value, dtype="float64"))]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ConfigError(f"Expected one value or three (RGB) for a preprocessing contract. Received: {value!r}.")
    return values


def check_mode(mode: str) -> str:
    """``mode`` if it names a contract (a key of ``PREPROCESSING_MODES`` or an ``affine:`` one), else a ConfigError."""
    if isinstance(mode, str) and mode.startswith(AFFINE_PREFIX):
        _scale_offset(mode)
        return mode
    return check_choice("mode", mode, PREPROCESSING_MODES)


def _scale_offset(mode: str) -> tuple[float | list[float], float | list[float]]:
    if not mode.startswith(AFFINE_PREFIX):
        return _AFFINE[mode]
    try:
        scale, offset = mode[len(AFFINE_PREFIX):].split(":")
        return _per_channel(scale.split(",")), _per_channel(offset.split(","))
    except (ValueError, ConfigError):
        raise ConfigError(
            f"Expected an affine preprocessing contract as 'affine:S0,S1,S2:O0,O1,O2'. Received: {mode!r}."
        ) from None


@keras.saving.register_keras_serializable(package="transferkit")
class Preprocess(keras.layers.Layer):
    """Map raw RGB pixels in [0, 255] to a backbone's expected input.

    Args:
        mode: One of ``"tf"``, ``"torch"``, ``"caffe"``, ``"builtin"``, ``"unit"``
            (see ``PREPROCESSING_MODES``), or ``"affine:S0,S1,S2:O0,O1,O2"`` (see :func:`affine_mode`).

    Example:
        >>> Preprocess(mode="tf")(np.full((1, 2, 2, 3), 255.0))  # all ones
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = check_mode(mode)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "builtin":
            return x
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB → BGR
        scale, offset = _scale_offset(self.mode)
        # the operations of keras.layers.Rescaling.call, in its order: builtin_preprocessor's twin
        return x * ops.cast(scale, x.dtype) + ops.cast(offset, x.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def builtin_preprocessor(mode: str, *, name: str, dtype: Any = None) -> keras.layers.Layer:
    """The contract ``mode`` in built-in Keras layers only, computing exactly what ``Preprocess(mode)`` does.

    A ``Rescaling`` layer for ``"tf"``, ``"unit"`` and ``"torch"``, an ``Identity`` for ``"builtin"``;
    for ``"caffe"`` a small model that reverses the channels by cropping and concatenating them (no
    arithmetic, so exact, and no weights) before its ``Rescaling``. Channels last, any image size.

    Args:
        mode: A key of ``PREPROCESSING_MODES`` or an ``affine:`` contract.
        name: The layer's name.
        dtype: Its dtype policy or policy name (``None``: the global one).

    Example:
        >>> builtin_preprocessor("tf", name="preprocess")  # keras.layers.Rescaling(1 / 127.5, -1.0)
    """
    check_mode(mode)
    dtype = getattr(dtype, "name", dtype)  # a policy by name: Identity cannot serialise a DTypePolicy object
    if mode == "builtin":
        return keras.layers.Identity(name=name, dtype=dtype)
    scale, offset = _scale_offset(mode)
    if mode != "caffe":
        return keras.layers.Rescaling(scale, offset, name=name, dtype=dtype)
    rgb = keras.Input(shape=(None, None, 3), name="rgb")
    # channels first, so that Cropping2D's row axis runs over them: one plane per crop
    planes = keras.layers.Permute((3, 1, 2), name="channels_first", dtype=dtype)(rgb)
    crops = {"blue": ((2, 0), (0, 0)), "green": ((1, 1), (0, 0)), "red": ((0, 2), (0, 0))}  # BGR order
    bgr = keras.layers.Concatenate(axis=1, name="bgr", dtype=dtype)([
        keras.layers.Cropping2D(crop, data_format="channels_last", name=color, dtype=dtype)(planes)
        for color, crop in crops.items()
    ])
    bgr = keras.layers.Permute((2, 3, 1), name="channels_last", dtype=dtype)(bgr)
    outputs = keras.layers.Rescaling(scale, offset, name="subtract_mean", dtype=dtype)(bgr)
    return keras.Model(rgb, outputs, name=name)
