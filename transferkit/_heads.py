"""Head builders: what goes on top of a backbone's feature map.

A :class:`Head` is a frozen description; :meth:`Head.build` turns it into plain Keras layers,
so models that hold it save to ``.keras`` and load back with ``safe_mode=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from transferkit._errors import ConfigError, check_choice

TASKS = ("single_label", "multi_label", "regression")
POOLINGS = ("avg", "max")
OUTPUT_LAYER = "head_output"  # the name of every head's output Dense layer


@dataclass(frozen=True, kw_only=True)
class Head:
    """A classification or regression head.

    Attributes:
        task: ``"single_label"`` (softmax over classes), ``"multi_label"`` (one sigmoid per
            class) or ``"regression"`` (linear outputs).
        pooling: ``"avg"`` or ``"max"`` global pooling of a 4-D feature map (ignored for
            backbones that already output a vector).
        hidden_units: Sizes of optional hidden Dense layers, input side first.
        activation: Activation of the hidden layers.
        dropout: Dropout rate before each Dense layer (0 disables it).

    Example:
        >>> Head(hidden_units=(256,), dropout=0.3)
        >>> Head(task="multi_label")
    """

    task: str = "single_label"
    pooling: str = "avg"
    hidden_units: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("pooling", self.pooling, POOLINGS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Expected dropout in [0, 1). Received: dropout={self.dropout!r}.")
        units = tuple(self.hidden_units)
        if any(not isinstance(u, int) or u <= 0 for u in units):
            raise ConfigError(f"Expected hidden_units to be positive integers. Received: hidden_units={units!r}.")
        object.__setattr__(self, "hidden_units", units)
        keras.activations.get(self.activation)  # raises on an unknown name

    @property
    def output_activation(self) -> str:
        return {"single_label": "softmax", "multi_label": "sigmoid", "regression": "linear"}[self.task]

    def loss(self, *, label_smoothing: float = 0.0, dense_labels: bool = False) -> keras.losses.Loss:
        """The loss that matches the head's task: integer labels for single-label, one-hot rows with
        ``dense_labels`` (label smoothing and mixing need them)."""
        if self.task == "single_label":
            if dense_labels:
                return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
            return keras.losses.SparseCategoricalCrossentropy()
        if self.task == "multi_label":
            return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        if label_smoothing:
            raise ConfigError("label_smoothing is for classification heads; this head is a regression.")
        return keras.losses.MeanSquaredError()

    def metrics(self, *, dense_labels: bool = False, label_smoothing: float = 0.0) -> list[keras.metrics.Metric]:
        """Accuracy (MAE for regression); with label smoothing also the unsmoothed cross-entropy as
        ``plain_loss``, which is what epochs of different phases are compared by."""
        plain: list[keras.metrics.Metric] = []
        if label_smoothing and self.task == "single_label":
            plain = [keras.metrics.CategoricalCrossentropy(name="plain_loss")]
        elif label_smoothing and self.task == "multi_label":
            plain = [keras.metrics.BinaryCrossentropy(name="plain_loss")]
        if self.task == "single_label":
            if dense_labels:
                return [keras.metrics.CategoricalAccuracy(name="accuracy"), *plain]
            return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.task == "multi_label":
            return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc", multi_label=True),
                    *plain]
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def build(self, features: keras.KerasTensor, num_outputs: int) -> keras.KerasTensor:
        """Apply the head to a symbolic feature tensor and return the output tensor."""
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ConfigError(f"Expected num_outputs to be a positive integer. Received: {num_outputs!r}.")
        if self.task == "single_label" and num_outputs < 2:
            raise ConfigError(
                f"A single-label classifier needs at least 2 classes. Received: num_classes={num_outputs}."
            )
        x = features
        if len(x.shape) == 4:
            pool = keras.layers.GlobalAveragePooling2D if self.pooling == "avg" else keras.layers.GlobalMaxPooling2D
            x = pool(name="head_pool")(x)
        elif len(x.shape) != 2:
            raise ConfigError(f"Expected backbone features of rank 2 or 4. Received shape {tuple(x.shape)}.")
        for i, units in enumerate(self.hidden_units, start=1):
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, name=f"head_dropout_{i}")(x)
            x = keras.layers.Dense(units, activation=self.activation, name=f"head_dense_{i}")(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, name="head_dropout")(x)
        # float32 output keeps softmax/sigmoid stable under mixed precision
        return keras.layers.Dense(
            num_outputs, activation=self.output_activation, dtype="float32", name=OUTPUT_LAYER
        )(x)

    def build_model(self, feature_shape: tuple[int | None, ...], num_outputs: int, *, name: str) -> keras.Model:
        """The head as a model of its own, taking the backbone's features (``feature_shape``, no batch)."""
        features = keras.Input(shape=tuple(feature_shape), name="features")
        return keras.Model(features, self.build(features, num_outputs), name=name)

    def to_config(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "pooling": self.pooling,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Head:
        return cls(**{**config, "hidden_units": tuple(config.get("hidden_units", ()))})
