"""What :meth:`FineTuner.evaluate` and :meth:`FineTuner.predict` accept, turned into batches,
and the model run over them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from transferkit._errors import ConfigError, DataError
from transferkit.data._augment import Augment
from transferkit.data._images import as_image_batch, load_image
from transferkit.data._kinds import EvalData, Images
from transferkit.data._loaders import ImageData
from transferkit.data._pipelines import PipelineSettings, file_pipeline
from transferkit.data._sources import find_images, scan_folder


def evaluation_batches(data: EvalData, *, class_names: tuple[str, ...], settings: PipelineSettings
                       ) -> tf.data.Dataset:
    """``(images, labels)`` batches to evaluate on.

    ImageData gives its validation split; a class folder is read with ``settings`` (the model's
    image size, resize mode and background) and must hold the model's classes.
    """
    if isinstance(data, (ImageData, tf.data.Dataset)):
        return labelled_batches(data)
    if isinstance(data, (str, os.PathLike)):
        files = scan_folder(data)
        if files.class_names != class_names:
            raise DataError(f"The classes in {str(data)!r} {list(files.class_names)} differ from the model's "
                            f"{list(class_names)}.")
        return file_pipeline(files, settings)
    raise DataError(
        f"Expected ImageData, a tf.data.Dataset or a class-folder path. Received: {type(data).__name__}."
    )


def labelled_batches(data: ImageData | tf.data.Dataset) -> tf.data.Dataset:
    """``(images, labels)`` batches: a dataset as it is, ImageData's validation split."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, ImageData):
        if data.validation is None:
            raise DataError("This ImageData has no validation split; pass a tf.data.Dataset of (images, labels).")
        return data.validation
    raise DataError(f"Expected ImageData or a tf.data.Dataset of (images, labels). Received: {type(data).__name__}.")


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Average the model's outputs over the plain images and ``views`` randomly augmented copies.

    The augmentation layers are called with ``training=True`` explicitly (Keras leaves them
    inactive at inference otherwise); the model itself always runs in inference mode.
    """

    views: int
    augment: Augment
    seed: int | None = None
    _layers: keras.Sequential = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.views, int) or self.views < 0:
            raise ConfigError(f"Expected tta to be an integer >= 0 (augmented views). Received: tta={self.views!r}.")
        # built once: a seeded layer reused across batches draws new views for each batch
        object.__setattr__(self, "_layers", self.augment.layers(seed=self.seed))

    def run(self, model: keras.Model, images: tf.Tensor | np.ndarray) -> np.ndarray:
        total = np.asarray(model(images, training=False))
        if self.views:
            total = total.astype(np.float64)
            for _ in range(self.views):
                total += np.asarray(model(self._layers(images, training=True), training=False))
            total = (total / (self.views + 1)).astype(np.float32)
        return total


def _call(model: keras.Model, images: tf.Tensor | np.ndarray, tta: TestTimeAugmentation | None) -> np.ndarray:
    return tta.run(model, images) if tta is not None else model(images, training=False).numpy()


def outputs_and_labels(model: keras.Model, batches: tf.data.Dataset, *, tta: TestTimeAugmentation | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs (inference mode, averaged over augmented views with ``tta``) and the labels,
    over every ``(images, labels)`` batch."""
    outputs, labels = [], []
    for images, batch_labels in batches:
        outputs.append(_call(model, images, tta))
        labels.append(batch_labels.numpy())
    if not outputs:
        raise DataError("The evaluation data is empty.")
    return np.concatenate(outputs), np.concatenate(labels)


@dataclass(frozen=True)
class PredictionInput:
    """Images ready for the model: raw pixels at its size, or batches; and the files they came from."""

    images: np.ndarray | tf.data.Dataset
    paths: tuple[str, ...] | None = None


def prediction_input(images: Images, *, settings: PipelineSettings) -> PredictionInput:
    """Read files (a file, a folder, a list of paths) or check arrays, at ``settings.image_size``."""
    size = settings.image_size
    if isinstance(images, (str, os.PathLike)):
        images = list(find_images(images))
    if isinstance(images, tf.data.Dataset):
        return PredictionInput(images)
    if isinstance(images, Sequence) and images and isinstance(images[0], (str, os.PathLike)):
        paths = tuple(str(p) for p in images)
        pixels = np.stack([load_image(p, image_size=size, resize=settings.resize, background=settings.background)
                           for p in paths])
        return PredictionInput(pixels.astype(np.float32), paths)
    array = as_image_batch(images).astype(np.float32)
    if array.shape[1:3] != (size, size):
        array = tf.image.resize(array, (size, size), antialias=True).numpy()
    return PredictionInput(array)


def predict_outputs(model: keras.Model, prepared: PredictionInput, *, batch_size: int,
                    tta: TestTimeAugmentation | None = None) -> np.ndarray:
    """The model's outputs for prepared images (a batch of a dataset may be ``images`` or ``(images, …)``)."""
    if isinstance(prepared.images, tf.data.Dataset):
        return np.concatenate([_call(model, x[0] if isinstance(x, tuple) else x, tta) for x in prepared.images])
    if tta is not None:
        return np.concatenate([tta.run(model, prepared.images[i:i + batch_size])
                               for i in range(0, len(prepared.images), batch_size)])
    return np.asarray(model.predict(prepared.images, batch_size=batch_size, verbose=0))
