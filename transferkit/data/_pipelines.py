"""tf.data pipelines: decode once, cache, shuffle, batch, augment, prefetch.

Every pipeline yields ``(images, labels)`` batches with images as float32 RGB in [0, 255] at
``image_size × image_size``: the model's first layer applies the backbone's own preprocessing.
:class:`PipelineSettings` holds the options every loader shares, in one place.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import tensorflow as tf

from transferkit._defaults import BATCH_SIZE, SEED, VALIDATION_SPLIT
from transferkit._errors import ConfigError, check_choice, did_you_mean
from transferkit._types import Color
from transferkit.data._augment import Augment
from transferkit.data._images import RESIZE_MODES, WHITE, load_image
from transferkit.data._sources import ImageFiles

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """How images become training and validation batches; every loader takes these as keywords.

    Attributes:
        image_size: Side of the square images, in pixels.
        batch_size: Images per batch.
        validation_split: Fraction of the images held out for validation (stratified, seeded).
        seed: Seeds the split, the shuffling and the augmentation (``None``: different every run).
        resize: ``"pad"`` (keep the aspect ratio, fill with ``background``), ``"stretch"`` or
            ``"crop"`` (centre).
        background: RGB colour that transparent pixels and padding become.
        augment: Random augmentation of training batches, or ``None``.

    Example:
        >>> load_folder("photos", image_size=160, batch_size=16, augment=Augment())
    """

    image_size: int = 224
    batch_size: int = BATCH_SIZE
    validation_split: float = VALIDATION_SPLIT
    seed: int | None = SEED
    resize: str = "pad"
    background: Color = WHITE
    augment: Augment | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Expected {name} to be a positive integer. Received: {name}={value!r}.")
        if not isinstance(self.validation_split, (int, float)) or not 0.0 <= self.validation_split < 1.0:
            raise ConfigError(
                f"Expected validation_split in [0, 1). Received: validation_split={self.validation_split!r}."
            )
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ConfigError(f"Expected seed to be an integer or None. Received: seed={self.seed!r}.")
        check_choice("resize", self.resize, RESIZE_MODES)
        background = tuple(self.background)
        if len(background) != 3 or not all(isinstance(c, (int, float, np.number)) and 0 <= c <= 255
                                           for c in background):
            raise ConfigError(f"Expected background to be an RGB triple of values in 0–255. Received: {background!r}.")
        object.__setattr__(self, "background", tuple(int(c) for c in background))
        if self.augment is not None and not isinstance(self.augment, Augment):
            raise ConfigError(f"Expected augment to be an Augment(...) or None. Received: augment={self.augment!r}.")


class PipelineOptions(TypedDict, total=False):
    """The fields of :class:`PipelineSettings`, as keyword arguments of the loaders."""

    image_size: int
    batch_size: int
    validation_split: float
    seed: int | None
    resize: str
    background: Color
    augment: Augment | None


_FIELDS = tuple(f.name for f in dataclasses.fields(PipelineSettings))


def pipeline_settings(options: dict[str, Any], *, where: str) -> PipelineSettings:
    """Settings from a loader's keyword arguments; an unknown keyword is a ConfigError naming it."""
    for key in options:
        if key not in _FIELDS:
            raise ConfigError(
                f"{where}() got an unexpected option {key}=….{did_you_mean(key, _FIELDS, n=1)} "
                f"Pipeline options: {', '.join(_FIELDS)}."
            )
    return PipelineSettings(**options)


def _finish(ds: tf.data.Dataset, count: int, settings: PipelineSettings, *, training: bool,
            cache: bool | str) -> tf.data.Dataset:
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if training:
        ds = ds.shuffle(max(1, count), seed=settings.seed, reshuffle_each_iteration=True)
    ds = ds.batch(settings.batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and settings.augment is not None:
        model = settings.augment.layers(seed=settings.seed)
        ds = ds.map(lambda x, y: (model(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def file_pipeline(files: ImageFiles, settings: PipelineSettings, *, training: bool = False,
                  cache: bool | str = True) -> tf.data.Dataset:
    """The pipeline over image files (see :func:`make_dataset`), from settings already checked."""
    size, resize, background = settings.image_size, settings.resize, settings.background

    def decode(path: bytes) -> np.ndarray:
        return load_image(os.fsdecode(path), image_size=size, resize=resize, background=background)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((size, size, 3))
        return image, label

    labels = files.labels.astype(np.float32 if files.multi_label else np.int64)
    # File names are bytes to the operating system and may not be valid UTF-8 (a Latin-1 'café.png'):
    # TF string tensors hold bytes, so hand it the bytes, never text it would have to encode.
    ds = tf.data.Dataset.from_tensor_slices(([os.fsencode(p) for p in files.paths], labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, len(files), settings, training=training, cache=cache)


def array_pipeline(images: np.ndarray, labels: np.ndarray, settings: PipelineSettings, *,
                   training: bool = False) -> tf.data.Dataset:
    """The pipeline over ``(n, h, w, 1|3|4)`` pixel arrays: gray → RGB, alpha composited, stretched."""
    size = settings.image_size
    background = tf.constant(settings.background, tf.float32)

    def prepare(x: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        if channels == 1:
            x = tf.repeat(x, 3, axis=-1)
        elif channels == 4:
            alpha = x[..., 3:] / 255.0
            x = x[..., :3] * alpha + background * (1.0 - alpha)
        x = tf.image.resize(x, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), label

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, len(labels), settings, training=training, cache=True)


def make_dataset(files: ImageFiles, *, training: bool = False, cache: bool | str = True,
                 **options: Unpack[PipelineOptions]) -> tf.data.Dataset:
    """A tf.data pipeline over ``files``: parallel decode → cache → shuffle → batch → augment → prefetch.

    Decoding happens once: the decoded, resized uint8 images are cached (in memory, or in the
    file prefix given as ``cache``), so later epochs cost no decoding. Training pipelines
    reshuffle every epoch and apply ``augment``; evaluation pipelines keep file order.

    Args:
        files: The images and labels (from :func:`~transferkit.scan_folder` or
            :func:`~transferkit.read_csv`).
        training: Shuffle every epoch and augment.
        cache: ``True`` (memory), ``False``, or a file prefix to cache decoded images on disk.
        **options: The :class:`~transferkit.PipelineSettings` fields that shape one pipeline:
            ``image_size`` (required), ``batch_size``, ``seed``, ``resize``, ``background``,
            ``augment``.

    Example:
        >>> make_dataset(scan_folder("photos"), image_size=160, training=True)
    """
    if "image_size" not in options:
        raise ConfigError("make_dataset() needs image_size=… (the side of the square images, in pixels).")
    if "validation_split" in options:
        raise ConfigError("make_dataset() builds one pipeline and does not split; split first with "
                          "transferkit.stratified_split, or use transferkit.from_files.")
    settings = pipeline_settings(dict(options), where="make_dataset")
    return file_pipeline(files, settings, training=training, cache=cache)
