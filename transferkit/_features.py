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

Several processes (or machines sharing a folder) can fill one disk cache in parallel:
:meth:`FeatureCache.compute_shard` stores one contiguous block of an array's rows as a *shard*
(a folder ``<key>.shard-<i>-of-<n>`` written atomically), and whoever completes a set of shards —
the last writer, or any reader that finds the set complete — merges it into the ordinary entry.
A merge writes under temporary names and renames, so two processes merging at once both end
with the same complete entry; the shards are deleted afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit._atomic import _temporary, atomic_path
from transferkit._errors import DataError
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


SHARD_FORMAT = "transferkit-feature-shard"
SHARD_META = "shard.json"
_MERGE_CHUNK = 1 << 26  # bytes of rows copied at a time while merging: shards larger than RAM merge too


def shard_rows(total: int, batch: int, index: int, count: int) -> range:
    """The rows of shard ``index`` of ``count``: a contiguous block of whole ``batch``-row batches.

    Whole batches make every forward pass of a shard the same as in a single-process extraction
    (same images in the same batch), so the merged array equals a single process's bit for bit.
    Shards can be empty when there are fewer batches than shards.
    """
    batches = -(-total // batch)
    first, last = index * batches // count, (index + 1) * batches // count
    return range(min(first * batch, total), min(last * batch, total))


@dataclass(frozen=True)
class ShardState:
    """What :meth:`FeatureCache.compute_shard` did and found.

    Attributes:
        written: This call extracted the shard (``False``: it or the whole entry was there already).
        present: Shard indices of this set on disk when the call ended (empty once merged).
        merged: The whole entry is in the cache.
    """

    written: bool
    present: tuple[int, ...]
    merged: bool


@dataclass(frozen=True)
class _Shard:
    path: Path
    start: int
    rows: int
    total: int
    shape: tuple[int, ...]


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

    Processes sharing ``directory`` can each extract a block of an array's rows with
    :meth:`compute_shard`; the set is merged into the entry by whoever completes it, or by
    :meth:`get` when it finds a complete set.

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

    def _shard_folder(self, key: str, index: int, count: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.shard-{index}-of-{count}"

    def entries(self) -> list[str]:
        """Keys of the stored arrays: held by this cache (in memory or memory-mapped) or in ``directory``."""
        stored = set(self._memory)
        if self.directory is not None and self.directory.is_dir():
            stored |= {p.name[: -len(".features.npy")] for p in self.directory.glob("*.features.npy")}
        return sorted(stored)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(features, labels)`` stored under ``key``, or ``None``; arrays on disk come memory-mapped.

        A complete set of shards of ``key`` (see :meth:`compute_shard`) is merged first; an
        incomplete one is not used.
        """
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            features, labels = self._files(key, self.directory)
            if not features.is_file():
                self._merge_shards(key)  # a complete set from `transferkit extract --shard`, not merged yet
            if features.is_file() and labels.is_file():
                return np.load(features, mmap_mode="r"), np.load(labels)
        return None

    def shards(self, key: str) -> dict[int, tuple[int, ...]]:
        """Shards of ``key`` on disk, not merged yet: ``{n: indices present}`` for each set of ``n``."""
        found: dict[int, set[int]] = {}
        if self.directory is None or not self.directory.is_dir():
            return {}
        pattern = re.compile(rf"^{re.escape(key)}\.shard-(\d+)-of-(\d+)$")
        for path in self.directory.glob(f"{key}.shard-*-of-*"):
            match = pattern.match(path.name)
            if match and path.is_dir():
                index, count = int(match[1]), int(match[2])
                if 0 <= index < count:
                    found.setdefault(count, set()).add(index)
        return {count: tuple(sorted(indices)) for count, indices in sorted(found.items())}

    def compute_shard(self, key: str, extractor: keras.Model, batches: Iterable[tuple[tf.Tensor, tf.Tensor]], *,
                      shard: tuple[int, int], rows: range, total: int, progress: bool = False) -> ShardState:
        """Extract rows ``rows`` of the array ``key`` (``total`` rows) as shard ``shard = (i, n)``; merge
        the set into the entry when this completes it.

        ``batches`` hold exactly the images of ``rows``. Nothing is extracted when the entry or this
        very shard is stored already. Needs a ``directory``: shards are for processes sharing one.
        """
        if self.directory is None:
            raise ValueError("compute_shard() needs a FeatureCache with a directory that the processes share.")
        index, count = shard
        if self.get(key) is not None:
            return ShardState(written=False, present=(), merged=True)
        folder = self._shard_folder(key, index, count)
        shape = tuple(int(d) for d in extractor.output_shape[1:])
        expected = _Shard(folder, rows.start, len(rows), total, shape)
        written = False
        if not self._holds(folder, key, index, count, expected):
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder) as partial:
                partial.mkdir()
                if len(rows):
                    features = np.lib.format.open_memmap(partial / "features.npy", mode="w+", dtype=np.float32,
                                                         shape=(len(rows), *shape))
                    labels = self._extract(extractor, batches, into=features, progress=progress)
                    features.flush()
                    del features  # unmapped before the rename (Windows)
                else:  # more shards than batches: an empty shard still completes the set
                    np.save(partial / "features.npy", np.empty((0, *shape), np.float32))
                    labels = np.empty((0,), np.int64)
                np.save(partial / "labels.npy", labels)
                meta = {"format": SHARD_FORMAT, "version": 1, "key": key, "shard": index, "shards": count,
                        "start": rows.start, "rows": len(rows), "total": total, "shape": list(shape)}
                (partial / SHARD_META).write_text(json.dumps(meta), encoding="utf-8")
            written = True
        merged = self._merge_shards(key)
        return ShardState(written=written, present=() if merged else self.shards(key).get(count, ()), merged=merged)

    def _holds(self, folder: Path, key: str, index: int, count: int, expected: _Shard) -> bool:
        """Whether ``folder`` is this shard, complete (a rerun need not extract it again)."""
        try:
            return folder.is_dir() and self._read_shard(folder, key, index, count) == expected
        except (DataError, FileNotFoundError):
            return False  # damaged, or another run's: written again

    def _read_shard(self, folder: Path, key: str, index: int, count: int) -> _Shard:
        """A shard's metadata, checked against its name and its arrays; a DataError naming it otherwise."""
        fix = "Delete it and run that `transferkit extract --shard` again."
        try:
            meta = json.loads((folder / SHARD_META).read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
                raise ValueError("not a transferkit feature shard")
            found = _Shard(folder, int(meta["start"]), int(meta["rows"]), int(meta["total"]),
                           tuple(int(d) for d in meta["shape"]))
            named = (meta["key"], int(meta["shard"]), int(meta["shards"]))
            shapes = {name: _npy_header(folder / f"{name}.npy") for name in ("features", "labels")}
        except (OSError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, FileNotFoundError) and not folder.is_dir():
                raise  # deleted by a merge in another process: the caller checks for the merged entry
            raise DataError(f"Feature cache shard {folder} cannot be read ({error}). {fix}") from None
        if named != (key, index, count):
            raise DataError(f"Feature cache shard {folder} says it is shard {named[1]} of {named[2]} of key "
                            f"{named[0]}, but its name says shard {index} of {count} of key {key}. {fix}")
        if shapes["features"] != (found.rows, *found.shape) or (shapes["labels"] or ())[:1] != (found.rows,):
            raise DataError(f"Feature cache shard {folder} should hold {found.rows} rows of shape {found.shape} "
                            f"(its {SHARD_META}), but its features have shape {shapes['features']} and its labels "
                            f"{shapes['labels']}. {fix}")
        return found

    def _merge_shards(self, key: str) -> bool:
        """Merge a complete set of shards of ``key`` into its entry (unless there already) and delete
        the shards; returns whether the entry is there. Safe to run in several processes at once."""
        if self.directory is None:
            return False
        final_features, final_labels = self._files(key, self.directory)
        complete = [n for n, present in self.shards(key).items() if len(present) == n]
        if complete and not final_features.is_file():
            count = complete[0]
            try:
                self._write_merged(key, [self._read_shard(self._shard_folder(key, i, count), key, i, count)
                                         for i in range(count)])
            except (FileNotFoundError, DataError):
                if not final_features.is_file():
                    raise
                # another process merged the set and deleted the shards under this one's feet
        if not final_features.is_file():  # (checked after the shards: a merge elsewhere deletes them after this)
            return False
        self._remove_shards(key)  # merged here or elsewhere: every shard of the key is spent
        return final_labels.is_file()

    def _write_merged(self, key: str, shards: list[_Shard]) -> None:
        assert self.directory is not None
        first = shards[0]
        end = 0
        for shard in shards:
            if shard.total != first.total or shard.shape != first.shape or shard.start != end:
                raise DataError(
                    f"Feature cache shard {shard.path} holds rows {shard.start}–{shard.start + shard.rows} of "
                    f"{shard.total} (feature shape {shard.shape}), which does not follow on from rows 0–{end} of "
                    f"{first.total} (shape {first.shape}) in the shards before it: the shards were extracted "
                    "with different options (--batch-size?). Delete this key's shards and extract them again "
                    "with the same options.")
            end += shard.rows
        if end != first.total:
            raise DataError(f"Feature cache shard {shards[-1].path} ends at row {end}, but the shards say the array "
                            f"has {first.total} rows. Delete this key's shards and extract them again.")
        final_features, final_labels = self._files(key, self.directory)
        with atomic_path(final_features, keep_suffix=True) as partial:
            rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(first.total, *first.shape))
            labels: list[np.ndarray] = []
            step = max(1, _MERGE_CHUNK // max(1, int(np.prod(first.shape)) * 4))
            for shard in shards:
                if not shard.rows:
                    continue
                source = np.load(shard.path / "features.npy", mmap_mode="r")
                for at in range(0, shard.rows, step):
                    rows[shard.start + at:shard.start + min(at + step, shard.rows)] = source[at:at + step]
                del source
                labels.append(np.load(shard.path / "labels.npy"))
            rows.flush()
            del rows  # unmapped before the rename (Windows)
            with atomic_path(final_labels, keep_suffix=True) as partial_labels:
                np.save(partial_labels, np.concatenate(labels) if labels else np.empty((0,), np.int64))
        log.info("Merged %d feature shards into %s", len(shards), final_features)

    def _remove_shards(self, key: str) -> None:
        for count, present in self.shards(key).items():
            for index in present:
                folder = self._shard_folder(key, index, count)
                aside = _temporary(folder, keep_suffix=False)  # a name remove_stale_temporaries knows
                try:  # renamed aside first, so that a reader finds a shard whole or not at all
                    os.rename(folder, aside)
                except OSError:
                    continue  # removed by another process meanwhile
                shutil.rmtree(aside, ignore_errors=True)

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
        if self.directory is not None:
            self._remove_shards(key)  # an incomplete set of shards of this key is of no use now
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
        run = extractor.predict_on_batch
        if tf.distribute.has_strategy():  # there predict_on_batch runs the whole batch on every replica
            run = functools.partial(extractor, training=False)
        for images, batch_labels in batches:
            out = np.asarray(run(images))
            into[done:done + len(out)] = out
            labels.append(np.asarray(batch_labels))
            done += len(out)
            if bar is not None:
                bar.update(done)
        if done != count:
            raise RuntimeError(f"Feature extraction produced {done} rows, expected {count}.")
        return np.concatenate(labels) if labels else np.empty((0,), np.int64)


def _npy_header(path: Path) -> tuple[int, ...]:
    """The shape of a float32 or int64 ``.npy`` array from its header alone (a ValueError otherwise)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    if np.dtype(dtype).kind not in "fiu":
        raise ValueError(f"{path.name} holds {dtype}, not numbers")
    return tuple(int(d) for d in shape)


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


