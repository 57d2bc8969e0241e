"""Cached backbone features: push each image through the frozen part of the network once.

With a frozen backbone, every epoch of the usual recipe runs every image through the whole
pretrained network again although its output never changes. :class:`FeatureCache` stores that
output — in memory, or on disk (memory-mapped ``.npy``) past a size limit — and the layers that
train are fitted on it directly.

The cache key covers everything the features depend on: the frozen network's architecture and
weights (a hash of their values), the input size, the preprocessing, the images (paths, sizes,
modification times, labels, split, resize mode, background) and the augmentation views. A change
to any of them is a miss and a recompute, never a stale hit.

:func:`split_at_boundary` goes one step further than caching the final features: when only the
top groups train, BatchNorm stays in inference mode and nothing random runs below the boundary,
the activations at the freeze boundary are cached and only the layers above it run each epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit._atomic import atomic_path
from transferkit._types import PathLike
from transferkit.backbones._groups import producers

log = logging.getLogger("transferkit")

# Layers whose output is random while training: below a cache boundary they would make the
# cached run differ from the uncached one.
_RANDOM_LAYERS = (
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def weights_digest(model: keras.Model) -> str:
    """A hash of the model's architecture and every weight value."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def files_digest(paths: Iterable[str], labels: np.ndarray) -> str:
    """A hash of the files (path, size, modification time) and their labels."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """The key of one feature array: a hash of all its inputs (any JSON-able values)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class CachedArrays:
    """Features and labels of one dataset, and whether they came from the cache."""

    features: np.ndarray
    labels: np.ndarray
    hit: bool


class FeatureCache:
    """Stores extracted features by key, in memory or on disk.

    Args:
        directory: Keep the arrays here as ``<key>.npy`` files (reused across runs and
            processes). ``None`` keeps them in memory, spilling to a temporary folder past
            ``memory_limit``.
        memory_limit: Bytes above which an array is written to disk and memory-mapped, so a
            dataset larger than RAM still works.

    Example:
        >>> cache = FeatureCache("~/.cache/transferkit")
        >>> tuner = FineTuner("mobilenet_v2", weights="imagenet", cache=cache)
    """

    def __init__(self, directory: PathLike | None = None, *, memory_limit: int = 2 * 1024**3) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.memory_limit = memory_limit
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def _files(self, key: str, directory: Path) -> tuple[Path, Path]:
        return directory / f"{key}.features.npy", directory / f"{key}.labels.npy"

    def entries(self) -> list[str]:
        """Keys of the stored arrays: held by this cache (in memory or memory-mapped) or in ``directory``."""
        stored = set(self._memory)
        if self.directory is not None and self.directory.is_dir():
            stored |= {p.name[: -len(".features.npy")] for p in self.directory.glob("*.features.npy")}
        return sorted(stored)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(features, labels)`` stored under ``key``, or ``None``; arrays on disk come memory-mapped."""
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            features, labels = self._files(key, self.directory)
            if features.is_file() and labels.is_file():
                return np.load(features, mmap_mode="r"), np.load(labels)
        return None

    def compute(self, key: str, extractor: keras.Model, batches: Iterable[tuple[tf.Tensor, tf.Tensor]], count: int,
                *, progress: bool = False) -> CachedArrays:
        """Return the cached arrays for ``key``, or run ``extractor`` over ``batches`` and store them."""
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return CachedArrays(found[0], found[1], hit=True)
        self.misses += 1
        shape = tuple(int(d) for d in extractor.output_shape[1:])
        nbytes = count * int(np.prod(shape)) * 4
        directory = self.directory
        if directory is None and nbytes > self.memory_limit:
            directory = Path(tempfile.gettempdir()) / "transferkit-features"
        if directory is None:
            features = np.empty((count, *shape), dtype=np.float32)
            label_array = self._extract(extractor, batches, into=features, progress=progress)
            self._memory[key] = (features, label_array)
            return CachedArrays(features, label_array, hit=False)
        directory.mkdir(parents=True, exist_ok=True)
        final_features, final_labels = self._files(key, directory)
        # Rows go straight into a hidden temporary file; the labels are renamed into place first
        # and the features last, so a key (its features file) appears only once both are complete.
        with atomic_path(final_features, keep_suffix=True) as partial:
            rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(count, *shape))
            label_array = self._extract(extractor, batches, into=rows, progress=progress)
            rows.flush()
            del rows  # unmapped before the rename, which Windows refuses on a mapped file
            with atomic_path(final_labels, keep_suffix=True) as partial_labels:
                np.save(partial_labels, label_array)
        mapped = np.load(final_features, mmap_mode="r")
        if self.directory is None:  # spilled past memory_limit: keep the mapping, not the rows
            log.info("Features (%.1f GB) are memory-mapped from %s", nbytes / 1e9, final_features)
            self._memory[key] = (mapped, label_array)
        return CachedArrays(mapped, label_array, hit=False)

    @staticmethod
    def _extract(extractor: keras.Model, batches: Iterable[tuple[tf.Tensor, tf.Tensor]], *, into: np.ndarray,
                 progress: bool) -> np.ndarray:
        """Fill ``into`` with the extractor's output batch by batch; returns the labels."""
        count = len(into)
        bar = keras.utils.Progbar(count, unit_name="image") if progress else None
        labels: list[np.ndarray] = []
        done = 0
        for images, batch_labels in batches:
            out = np.asarray(extractor.predict_on_batch(images))
            into[done:done + len(out)] = out
            labels.append(np.asarray(batch_labels))
            done += len(out)
            if bar is not None:
                bar.update(done)
        if done != count:
            raise RuntimeError(f"Feature extraction produced {done} rows, expected {count}.")
        return np.concatenate(labels)


def split_at_boundary(backbone: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """Split a partly frozen backbone into ``(frozen_bottom, trainable_top)`` at one tensor.

    Returns ``None`` where caching below the boundary would not give the same result: nothing or
    everything is frozen, a BatchNormalization below the boundary is trainable, a random layer
    (dropout, noise) lies below it, or more than one tensor crosses it.
    """
    layers = list(backbone.layers)
    first = next((i for i, layer in enumerate(layers) if layer.trainable and layer.weights), None)
    if first is None or first <= 1:
        return None
    bottom = layers[:first]
    if any(isinstance(layer, _RANDOM_LAYERS) for layer in bottom):
        return None
    if any(layer.trainable and layer.weights for layer in bottom):
        return None
    names = {layer.name for layer in bottom}
    crossing = set()
    for config in backbone.get_config()["layers"]:
        if config["name"] not in names:
            crossing |= set(producers(config.get("inbound_nodes", []))) & names
    if len(crossing) != 1:
        return None
    cut = backbone.get_layer(crossing.pop()).output
    return keras.Model(backbone.input, cut, name="frozen_bottom"), keras.Model(cut, backbone.output, name="top")


def has_random_layers(model: keras.Model) -> bool:
    """Whether ``model`` holds layers that behave randomly in training (dropout, noise)."""
    return any(isinstance(layer, _RANDOM_LAYERS) for layer in model.layers)


def feature_dataset(arrays: CachedArrays, *, batch_size: int, shuffle: bool, seed: int | None
                    ) -> tf.data.Dataset:
    """Batches of cached features, in the order the image pipeline would give the same images.

    Shuffling indices, not rows, gives the image pipeline's permutation (same seed and count)
    and lets memory-mapped arrays stay on disk: each batch reads only its own rows.
    (A phase gets the permutations of a fresh image pipeline: after an earlier phase the image
    pipeline's shuffle has moved on by however many iterators Keras drew from it.)
    """
    features, labels = arrays.features, np.asarray(arrays.labels)
    count = len(labels)
    shape = (None, *features.shape[1:])

    def gather(index: np.ndarray) -> np.ndarray:
        order = np.argsort(index)  # memory-mapped reads go faster in file order
        rows = np.asarray(features[index[order]], dtype=np.float32)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.numpy_function(gather, [index], tf.float32, stateful=False)
        batch.set_shape(shape)
        return batch, tf.gather(labels, index)

    ds = tf.data.Dataset.range(count)
    if shuffle:
        ds = ds.shuffle(max(1, count), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


