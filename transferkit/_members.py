"""Several copies of a linear head trained side by side, kept as their average.

A linear head on few images lands wherever its random initialisation and dropout masks steer
it: on 133 photos, five seeds of the same head scored 0.82–0.94 on one fold. Training ``k``
copies at once (each with its own initialisation and dropout masks, on the same batches) and
averaging them is an ensemble of linear classifiers. For a linear output layer the average of
the copies' weights gives exactly the average of their logits, so the ensemble folds into the
one ``Dense`` layer the model already has: the saved model is unchanged in shape and cost
(docs/benchmarks.md has what it changed in accuracy).

The copies train on cached backbone features, where one step of ``k`` copies costs about what
one copy costs. The training model outputs every copy's predictions for every image (``k``
rows per image, the labels repeated to match) and, in inference, the averaged head: validation
figures during the phase are the average's.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from transferkit._heads import OUTPUT_LAYER


class HeadMembers(keras.layers.Layer):
    """``k`` linear heads over the same features (training: every copy; inference: their average)."""

    def __init__(self, members: int, units: int, *, dropout: float, activation: str, **kwargs: Any) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.members, self.units, self.rate = int(members), int(units), float(dropout)
        self.activation = keras.activations.get(activation)
        self.drop = keras.layers.Dropout(self.rate) if self.rate else None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("HeadMembers needs features of a known size.")
        # per copy the Glorot-uniform draw of a Dense(units) layer: VarianceScaling counts the copies
        # in both fans of a (k, dim, units) kernel, which scale=k cancels
        init = keras.initializers.VarianceScaling(scale=float(self.members), mode="fan_avg", distribution="uniform")
        self.kernel = self.add_weight(name="kernel", shape=(self.members, dim, self.units), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(self.members, self.units), initializer="zeros")

    def call(self, features: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        features = ops.cast(features, "float32")
        if not training:
            return self.activation(ops.matmul(features, ops.mean(self.kernel, axis=0)) + ops.mean(self.bias, axis=0))
        copies = ops.repeat(ops.expand_dims(features, 1), self.members, axis=1)  # (batch, k, dim)
        if self.drop is not None:
            copies = self.drop(copies, training=True)  # a mask of its own for every copy
        logits = ops.einsum("bkd,kdu->bku", copies, self.kernel) + self.bias
        return self.activation(ops.reshape(logits, (-1, self.units)))  # row b*k + j: copy j on image b

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (None, self.units)


def linear_output(head: keras.Model) -> keras.layers.Dense | None:
    """``head``'s output layer where ``head`` is linear (pooling, dropout and that one Dense), else ``None``."""
    kinds = (keras.layers.InputLayer, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
             keras.layers.Dropout, keras.layers.Dense)
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    if len(dense) != 1 or dense[0].name != OUTPUT_LAYER or any(not isinstance(layer, kinds) for layer in head.layers):
        return None
    return dense[0]


def pooled_features(head: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The features a linear ``head``'s output layer sees (after its pooling) and the labels, for
    every batch of ``dataset`` (one pass)."""
    pools = [layer for layer in head.layers
             if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D))]
    features, labels = [], []
    for batch in dataset:
        x = batch[0]
        for pool in pools:
            x = pool(x)
        features.append(ops.convert_to_numpy(ops.cast(x, "float32")))
        labels.append(np.asarray(batch[1]))
    return np.concatenate(features), np.concatenate(labels)


def members_model(head: keras.Model, members: int) -> keras.Model | None:
    """A model over ``head``'s input that trains ``members`` copies of its output layer, or ``None``
    where ``head`` is not a linear head (pooling, dropout, one Dense) that copies can average."""
    output = linear_output(head)
    if members <= 1 or output is None:
        return None
    dropout = max((layer.rate for layer in head.layers if isinstance(layer, keras.layers.Dropout)), default=0.0)
    x = inputs = keras.Input(head.input_shape[1:], name="features")
    for layer in head.layers:
        if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
            x = layer(x)
    copies = HeadMembers(members, output.units, dropout=dropout,
                         activation=keras.activations.serialize(output.activation), name="head_members")
    return keras.Model(inputs, copies(x), name="head_members_model")


def fold_members(trained: keras.Model, head: keras.Model) -> None:
    """Write the average of the copies in ``trained`` into ``head``'s output layer."""
    copies = trained.get_layer("head_members")
    assert isinstance(copies, HeadMembers)
    output = head.get_layer(OUTPUT_LAYER)
    output.kernel.assign(ops.cast(ops.mean(copies.kernel, axis=0), output.kernel.dtype))
    output.bias.assign(ops.cast(ops.mean(copies.bias, axis=0), output.bias.dtype))


def repeat_labels(dataset: tf.data.Dataset, members: int) -> tf.data.Dataset:
    """Training batches whose labels are repeated for every copy (row b*k + j: image b's label)."""
    def repeat(x: Any, y: tf.Tensor, weight: tf.Tensor | None = None) -> tuple[Any, ...]:
        labels = tf.repeat(y, members, axis=0)
        if weight is None:
            return x, labels
        return x, labels, tf.repeat(weight, members, axis=0)

    return dataset.map(repeat, num_parallel_calls=tf.data.AUTOTUNE)


class FoldMembers(keras.callbacks.Callback):
    """Keeps the head's output layer equal to the copies' average after every epoch (before the
    callbacks that read or store the model's weights)."""

    def __init__(self, trained: keras.Model, head: keras.Model) -> None:
        super().__init__()
        self.trained, self.head = trained, head

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        fold_members(self.trained, self.head)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        fold_members(self.trained, self.head)
