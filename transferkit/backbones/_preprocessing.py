"""The preprocessing contract of each backbone, as a Keras layer inside the model.

Models built by transferkit take raw pixels (float, 0–255, RGB). The first layer maps them
to what the pretrained network was trained on, so a user never calls ``preprocess_input``
and a saved model cannot be fed the wrong range by accident.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from transferkit._errors import check_choice

# What each mode does, as documented by keras.applications and TensorFlow Hub.
PREPROCESSING_MODES: dict[str, str] = {
    "tf": "scale to [-1, 1] (x / 127.5 - 1)",
    "torch": "scale to [0, 1], then normalise with the ImageNet mean and std",
    "caffe": "RGB to BGR, then subtract the ImageNet mean (no scaling)",
    "builtin": "none here: the network rescales its input itself",
    "unit": "scale to [0, 1] (TensorFlow Hub convention)",
}

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="transferkit")
class Preprocess(keras.layers.Layer):
    """Map raw RGB pixels in [0, 255] to a backbone's expected input.

    Args:
        mode: One of ``"tf"``, ``"torch"``, ``"caffe"``, ``"builtin"``, ``"unit"``
            (see ``PREPROCESSING_MODES``).

    Example:
        >>> Preprocess(mode="tf")(np.full((1, 2, 2, 3), 255.0))  # all ones
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, PREPROCESSING_MODES)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            bgr = ops.flip(x, axis=-1)
            return bgr - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        return x  # builtin

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
