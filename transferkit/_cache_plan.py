"""Where a phase can train on cached features, and the cached datasets it then trains on.

A phase trains on cached features only where the result is the same as running the frozen
layers every epoch (or, with ``augment_views``, where the user asked for fixed augmented views):

* head phase (whole backbone frozen): cache the backbone's output, train the head;
* fine-tune phase: cache the activations at the freeze boundary (see
  :func:`~transferkit._features.split_at_boundary`), train the unfrozen blocks and the head.

Never with augmented images (they differ every epoch), random layers below the cut, or callbacks
that save the model (they would save the part above the cache, not the whole model).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from transferkit._features import (
    FeatureCache,
    cache_key,
    feature_dataset,
    files_digest,
    has_random_layers,
    shard_rows,
    split_at_boundary,
    weights_digest,
)
from transferkit._freezing import FreezePolicy
from transferkit._model import build_model, model_parts, with_preprocessing
from transferkit._types import Callbacks, Weights
from transferkit.backbones._registry import BackboneSpec
from transferkit.data._loaders import ImageData, all_images
from transferkit.data._pipelines import PipelineSettings, file_pipeline
from transferkit.data._sources import ImageFiles

log = logging.getLogger("transferkit")

_SAVING_CALLBACKS = (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)


@dataclass(frozen=True)
class CachePlan:
    """How one phase trains on cached features.

    Attributes:
        extractor: Raw images → the cached tensor (the frozen part, run once).
        trainable: The cached tensor → the model's output (what the phase fits).
        where: What is cached, for the log line.
        views: Augmented views per training image (0: the images as they are).
    """

    extractor: keras.Model
    trainable: keras.Model
    where: str
    views: int = 0


def plan_cache(model: keras.Model, data: ImageData | None, cache: FeatureCache | None, *, augment_views: int,
               callbacks: Callbacks) -> CachePlan | None:
    """The plan for training ``model`` (its freezing already applied) on ``data``, or ``None``."""
    if cache is None or data is None or data.train_ordered is None:
        return None
    views = 0
    if data.settings.augment is not None:
        if not augment_views:
            return None  # augmented images differ every epoch: cached features would not
        views = augment_views  # asked for: K fixed augmented views stand in for fresh ones
    if any(isinstance(c, _SAVING_CALLBACKS) for c in callbacks):
        return None
    parts = model_parts(model)
    if parts.head is None:  # a model saved before heads were nested: train it whole
        return None
    net, mode = parts.backbone, parts.preprocessor.mode
    if not any(layer.trainable and layer.weights for layer in net.layers):
        if has_random_layers(net):
            return None
        where = f"backbone output, {views} augmented views per image" if views else "backbone output"
        return CachePlan(with_preprocessing(net, mode, name="extractor"), parts.head, where, views)
    if views:
        return None  # views stand in for augmentation in the head phase only
    split = split_at_boundary(net)
    if split is None:
        return None
    bottom, top = split
    cut = keras.Input(bottom.output_shape[1:], name="activations")
    tail = keras.Model(cut, parts.head(top(cut)), name="tail")
    where = f"activations at the freeze boundary, {bottom.output_shape[1:]} per image"
    return CachePlan(with_preprocessing(bottom, mode, name="extractor"), tail, where)


def _token(data: ImageData) -> str:
    """A name for arrays that no other ImageData gets, in this process or another (``id`` values
    recur): their features are found again only through the same ImageData object."""
    token = getattr(data, "_cache_token", None)
    if token is None:
        token = uuid.uuid4().hex
        object.__setattr__(data, "_cache_token", token)
    return str(token)


EXTRACTION_BATCH = 128  # images per forward pass while extracting: about 15 % faster than 32 on CPU


def extraction_batch(batch_size: int) -> int:
    """Bigger batches for the forward-only extraction, at most 4× the training batch (memory)."""
    return max(batch_size, min(EXTRACTION_BATCH, 4 * batch_size))


def _extraction_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    return dataset.rebatch(extraction_batch(batch_size))


def split_key(model_key: str, data: ImageData, split: str) -> str:
    """The cache key of one split's features (``split``: ``"train"`` or ``"validation"``) from an
    extractor with :func:`~transferkit._features.weights_digest` ``model_key``."""
    settings = data.settings
    files = data.train_files if split == "train" else data.validation_files
    source = files_digest(files.paths, files.labels) if files is not None else f"arrays:{_token(data)}"
    return cache_key(model=model_key, source=source, split=split, size=settings.image_size,
                     resize=settings.resize, background=settings.background)


@dataclass(frozen=True)
class FeatureSet:
    """One array of features that a head phase trains on, and the images behind it.

    Attributes:
        name: ``"training"``, ``"validation"`` or ``"refit"`` (training and validation images
            together, for the refit of ``FineTuner(refit=…)``).
        key: Its cache key.
        files: The images, in the order of the array's rows.
        settings: How the images are loaded (size, resize mode, background, batch size).
    """

    name: str
    key: str
    files: ImageFiles
    settings: PipelineSettings

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def batch(self) -> int:
        """Images per forward pass while extracting (what a shard's rows are whole multiples of)."""
        return extraction_batch(self.settings.batch_size)

    def batches(self, rows: range | None = None) -> tf.data.Dataset:
        """Extraction batches of the images (of ``rows`` only, which must start on a whole batch)."""
        files = self.files if rows is None else self.files.subset(np.arange(rows.start, rows.stop))
        return _extraction_batches(file_pipeline(files, self.settings, cache=False), self.settings.batch_size)

    def shard(self, index: int, count: int) -> range:
        """The rows shard ``index`` of ``count`` extracts: a contiguous block of whole batches."""
        return shard_rows(self.count, self.batch, index, count)


def head_feature_sets(spec: BackboneSpec, *, weights: Weights, data: ImageData, policy: FreezePolicy,
                      refit: bool) -> tuple[keras.Model, list[FeatureSet]] | None:
    """The extractor and the arrays that a FineTuner's head phase (``policy`` applied) caches for
    ``data``, with the refit's when ``refit``; ``None`` where the head phase trains uncached.

    The same model, freezing and keys as :meth:`FineTuner.fit`, so that features stored from
    these are found by a fit on the same data.
    """
    if data.train_files is None:
        raise ValueError("head_feature_sets() needs ImageData from files (load_folder, load_csv, from_files).")
    model = build_model(spec, num_outputs=max(2, len(data.class_names)), weights=weights,
                        image_size=data.settings.image_size)
    policy.apply(model, spec, clamp=True)
    plan = plan_cache(model, data, FeatureCache(), augment_views=0, callbacks=())
    if plan is None or plan.views or plan.trainable is not model_parts(model).head:
        return None
    model_key = weights_digest(plan.extractor)
    sets = [FeatureSet("training", split_key(model_key, data, "train"), data.train_files, data.settings)]
    if data.validation_files is not None and len(data.validation_files):
        sets.append(FeatureSet("validation", split_key(model_key, data, "validation"), data.validation_files,
                               data.settings))
        if refit:
            everything = all_images(data)
            assert everything.train_files is not None
            sets.append(FeatureSet("refit", split_key(model_key, everything, "train"), everything.train_files,
                                   everything.settings))
    return plan.extractor, sets


def cached_datasets(plan: CachePlan, data: ImageData, cache: FeatureCache, *, progress: bool
                    ) -> tuple[tf.data.Dataset, tf.data.Dataset | None, bool]:
    """Training and validation batches of cached features (extracted now on a miss), and whether
    the training features came from the cache."""
    settings = data.settings
    model_key = weights_digest(plan.extractor)

    def key(split: str) -> str:
        return split_key(model_key, data, split)

    ordered = data.train_ordered
    if ordered is None:
        raise ValueError("plan_cache() returns a plan only for data with an ordered training split.")
    if plan.views:
        augment = settings.augment
        if augment is None:
            raise ValueError("plan_cache() plans augmented views only for data with an Augment.")

        def augmented() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for k in range(plan.views):
                layers = augment.layers(seed=(settings.seed or 0) + k)
                for images, labels in ordered:
                    yield layers(images, training=True), labels

        train = cache.compute(cache_key(base=key("train"), views=plan.views, augment=repr(augment)),
                              plan.extractor, augmented(), plan.views * data.num_train, progress=progress)
    else:
        train = cache.compute(key("train"), plan.extractor, _extraction_batches(ordered, settings.batch_size),
                              data.num_train, progress=progress)
    train_ds = feature_dataset(train, batch_size=settings.batch_size, shuffle=True, seed=settings.seed)
    val_ds = None
    if data.validation is not None:
        val = cache.compute(key("validation"), plan.extractor,
                            _extraction_batches(data.validation, settings.batch_size), data.num_validation,
                            progress=progress)
        val_ds = feature_dataset(val, batch_size=settings.batch_size, shuffle=False, seed=settings.seed)
    return train_ds, val_ds, train.hit
