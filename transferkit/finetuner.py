"""The ``FineTuner`` facade: the two-phase transfer-learning recipe, evaluation, prediction, saving.

Each phase is a public method (:meth:`FineTuner.train_head`, :meth:`FineTuner.fine_tune`);
:meth:`FineTuner.fit` runs one after the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.backbones.groups import block_names, layer_groups
from transferkit.backbones.registry import BackboneSpec, get_backbone, list_backbones
from transferkit.backbones.weights import WeightsArg
from transferkit.data import (
    IMAGE_EXTENSIONS,
    WHITE,
    Color,
    ImageData,
    load_folder,
    load_image,
    make_dataset,
    scan_folder,
)
from transferkit.errors import ConfigError, DataError, NotFittedError, check_choice
from transferkit.features import (
    FeatureCache,
    cache_key,
    feature_dataset,
    files_digest,
    has_random_layers,
    split_at_boundary,
    weights_digest,
)
from transferkit.freezing import FreezeAll, FreezePolicy, FreezeSummary, UnfreezeTop, backbone_of
from transferkit.heads import Head
from transferkit.models import build_model

log = logging.getLogger("transferkit")

MODEL_FILE = "model.keras"
META_FILE = "transferkit.json"
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One training phase: how long, how fast, and what trains.

    Attributes:
        epochs: Passes over the training data (0 skips the phase).
        learning_rate: Peak learning rate.
        policy: Which backbone layers train (:mod:`transferkit.freezing`).
        schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 0 after the warm-up).
        warmup_epochs: Linear warm-up from 0 to ``learning_rate`` (cosine schedule only),
            capped at half the phase.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum 0.9).
        weight_decay: Decoupled weight decay for ``"adamw"``.

    Example:
        >>> Phase(epochs=10, learning_rate=1e-5, policy=UnfreezeTop(4), schedule="cosine")
    """

    epochs: int
    learning_rate: float
    policy: FreezePolicy
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    optimizer: str = "adam"
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"Expected epochs to be an integer >= 0. Received: epochs={self.epochs!r}.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ConfigError(f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate!r}.")
        if not isinstance(self.policy, FreezePolicy):
            raise ConfigError(
                f"Expected policy to be a FreezePolicy (FreezeAll(), UnfreezeTop(n), …). Received: {self.policy!r}."
            )
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.warmup_epochs, (int, float)) or self.warmup_epochs < 0:
            raise ConfigError(f"Expected warmup_epochs >= 0. Received: warmup_epochs={self.warmup_epochs!r}.")

    def learning_rate_schedule(self, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
        """The learning rate (constant) or schedule (cosine) for a phase of this many steps per epoch."""
        rate: float | keras.optimizers.schedules.LearningRateSchedule = float(self.learning_rate)
        if self.schedule == "cosine":
            total = max(1, self.epochs * steps_per_epoch)
            # a phase shorter than its warm-up still gets half of its steps for decay
            warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), total // 2)
            rate = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=0.0 if warmup else float(self.learning_rate),
                decay_steps=max(1, total - warmup),
                warmup_target=float(self.learning_rate) if warmup else None,
                warmup_steps=warmup,
            )
        return rate

    def make_optimizer(self, steps_per_epoch: int) -> keras.optimizers.Optimizer:
        """A fresh optimizer with this phase's learning-rate schedule."""
        rate = self.learning_rate_schedule(steps_per_epoch)
        if self.optimizer == "adamw":
            return keras.optimizers.AdamW(learning_rate=rate, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=rate, momentum=0.9)
        return keras.optimizers.Adam(learning_rate=rate)

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"},
                "policy": repr(self.policy)}


HEAD_PHASE = Phase(epochs=5, learning_rate=1e-3, policy=FreezeAll())
FINE_TUNE_PHASE = Phase(epochs=5, learning_rate=1e-4, policy=UnfreezeTop(2), schedule="cosine", warmup_epochs=1)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on one dataset, as plain data.

    Attributes:
        accuracy: Fraction of exactly right predictions (every label right, for multi-label).
        loss: Mean loss.
        class_names: Class of each row/column below.
        precision, recall, f1, support: Per-class arrays.
        confusion_matrix: ``[true, predicted]`` counts (single-label only).
    """

    accuracy: float
    loss: float
    class_names: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion_matrix: np.ndarray | None

    @property
    def per_class(self) -> dict[str, dict[str, float]]:
        return {
            name: {"precision": float(self.precision[i]), "recall": float(self.recall[i]),
                   "f1": float(self.f1[i]), "support": int(self.support[i])}
            for i, name in enumerate(self.class_names)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "macro_f1": float(np.mean(self.f1)) if len(self.f1) else 0.0,
            "per_class": self.per_class,
            "class_names": list(self.class_names),
            "confusion_matrix": None if self.confusion_matrix is None else self.confusion_matrix.tolist(),
        }


def _precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


@dataclass(frozen=True)
class Predictions:
    """Class probabilities for a batch of images.

    Attributes:
        probabilities: ``(n, num_classes)`` array.
        class_names: Name of each column.
        paths: The image files, when predictions were made from files.
    """

    probabilities: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[str, ...] | None = None

    @property
    def indices(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        """The most probable class name of each image."""
        return [self.class_names[i] for i in self.indices]

    def top(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class, probability)`` pairs of each image."""
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(self.probabilities, order)]


def _steps(dataset: tf.data.Dataset) -> int:
    count = int(dataset.cardinality())
    if count > 0:
        return count
    return sum(1 for _ in dataset)  # unknown cardinality: count once


class FineTuner:
    """Fine-tune a pretrained backbone on your images with the proven two-phase recipe.

    1. :meth:`train_head`: the backbone is frozen and only the new head learns (fast, safe).
    2. :meth:`fine_tune`: the top blocks of the backbone are unfrozen and trained at a lower
       learning rate with warm-up and cosine decay, BatchNorm kept in inference mode.

    Args:
        backbone: Registry name (see ``transferkit backbones``) or a :class:`BackboneSpec`.
        weights: ``"imagenet"``, ``None`` (random) or a path to a weights file. Required, so
            that nothing is downloaded behind a default and a random network is never a surprise.
        num_classes: Number of classes; taken from the data when omitted.
        class_names: Names of the classes; taken from the data when omitted.
        head: The head to put on the backbone (``Head()`` by default).
        image_size: Input size; taken from the data, else the backbone's default.
        head_phase: Settings of phase 1 (default ``HEAD_PHASE``: 5 epochs at 1e-3).
        fine_tune_phase: Settings of phase 2 (default ``FINE_TUNE_PHASE``: 5 epochs at 1e-4,
            top 2 blocks, cosine with 1 warm-up epoch). ``None`` skips fine-tuning in :meth:`fit`.
        class_weight: ``None``, ``"balanced"`` (weights from the training split) or a dict.
        seed: Seeds Python, NumPy and TensorFlow for repeatable runs.
        cache: Train on cached features wherever that gives the same result as running the
            frozen layers every epoch (ImageData without augmentation; see
            :mod:`transferkit.features`). ``True``: in memory; a folder path or
            :class:`FeatureCache`: on disk, reused across runs; ``False``: never.
        augment_views: With augmented data, cache this many augmented views of each image for
            the head phase instead of augmenting afresh every epoch (0, the default, leaves
            augmented data uncached). Faster, but not the same result: see docs/speed.md.

    Example:
        >>> data = load_folder("photos", image_size=224)
        >>> tuner = FineTuner("mobilenet_v2", weights="imagenet")
        >>> tuner.fit(data)
        >>> tuner.evaluate(data.validation).accuracy
        >>> tuner.save("run/")
    """

    def __init__(
        self,
        backbone: str | BackboneSpec = "mobilenet_v2",
        *,
        weights: WeightsArg,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        head: Head | None = None,
        image_size: int | None = None,
        head_phase: Phase = HEAD_PHASE,
        fine_tune_phase: Phase | None = FINE_TUNE_PHASE,
        class_weight: str | dict[int, float] | None = None,
        seed: int | None = None,
        cache: bool | str | os.PathLike[str] | FeatureCache = True,
        augment_views: int = 0,
    ) -> None:
        self.spec = get_backbone(backbone)
        self.weights = weights
        if image_size is not None:
            self.spec.check_size(image_size)
        self.image_size = image_size
        self.head = head
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(f"num_classes={num_classes} but {len(class_names)} class_names were given.")
        self.class_names: tuple[str, ...] | None = tuple(class_names) if class_names is not None else None
        self.num_classes = num_classes if num_classes is not None else (
            len(self.class_names) if self.class_names else None)
        self.head_phase = head_phase
        self.fine_tune_phase = fine_tune_phase
        if isinstance(class_weight, str):
            check_choice("class_weight", class_weight, ("balanced",))
        self.class_weight = class_weight
        self.seed = seed
        self.resize = "pad"
        self.background: Color = WHITE
        self.model: keras.Model | None = None
        self.history: dict[str, dict[str, list[float]]] = {}
        self._class_weight_from_data: dict[int, float] | None = None
        self._data: ImageData | None = None
        if not isinstance(augment_views, int) or augment_views < 0:
            raise ConfigError(f"Expected augment_views to be an integer >= 0. Received: {augment_views!r}.")
        self.augment_views = augment_views
        if cache is True:
            self.cache: FeatureCache | None = FeatureCache()
        elif cache is False or cache is None:
            self.cache = None
        else:
            self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)

    # ------------------------------------------------------------------ model

    def build(self, num_classes: int | None = None) -> keras.Model:
        """Build the model now (``fit`` does this for you); returns it."""
        if self.model is not None:
            return self.model
        n = num_classes or self.num_classes
        if n is None:
            raise ConfigError("The number of classes is unknown: pass num_classes=… or fit on data first.")
        if self.class_names is None:
            self.class_names = tuple(str(i) for i in range(n))
        if len(self.class_names) != n:
            raise ConfigError(f"num_classes={n} but the model has {len(self.class_names)} class names.")
        self.num_classes = n
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        self.model = build_model(self.spec, num_outputs=n, weights=self.weights, head=self.head,
                                 image_size=self.image_size)
        self.image_size = int(self.model.input_shape[1])
        self.head = self.head or Head()
        log.info("Built %s (%s weights) at %d px with %d outputs", self.spec.name,
                 "random" if self.weights is None else self.weights, self.image_size, n)
        return self.model

    def _require_model(self) -> keras.Model:
        if self.model is None:
            raise NotFittedError("This FineTuner has no model yet: call fit() (or build()) first.")
        return self.model

    # ------------------------------------------------------------------ data

    def _adopt(self, train: Any, validation: Any) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        if isinstance(train, (str, os.PathLike)):
            train = load_folder(train, image_size=self.image_size or self.spec.input_size, seed=self.seed or 0)
        if isinstance(train, ImageData):
            data = train
            if self.image_size is not None and data.image_size != self.image_size:
                raise DataError(
                    f"The data was loaded at image_size={data.image_size} but this FineTuner uses "
                    f"image_size={self.image_size}. Load the data with image_size={self.image_size}."
                )
            if self.class_names is not None and self.model is not None and tuple(data.class_names) != self.class_names:
                raise DataError(f"The data's classes {list(data.class_names)} differ from the model's "
                                f"{list(self.class_names)}.")
            self.class_names = tuple(data.class_names)
            self.num_classes = len(self.class_names)
            self.image_size = data.image_size
            self.resize, self.background = data.resize, data.background
            self._class_weight_from_data = data.class_weight
            if data.multi_label and self.head is None:
                self.head = Head(task="multi_label")
            self._data = data if validation is None else None  # features are cached for ImageData only
            return data.train, (validation if validation is not None else data.validation)
        if isinstance(train, tf.data.Dataset):
            self._data = None
            if isinstance(validation, ImageData):
                validation = validation.validation
            return train, validation
        raise DataError(
            f"Expected training data as ImageData (from load_folder/load_csv/from_arrays), a tf.data.Dataset "
            f"of (images, labels) batches, or a folder path. Received: {type(train).__name__}."
        )

    def _resolve_class_weight(self) -> dict[int, float] | None:
        if isinstance(self.class_weight, dict):
            return self.class_weight
        if self.class_weight == "balanced":
            if self._class_weight_from_data is None:
                raise ConfigError('class_weight="balanced" needs ImageData (from a loader) to count classes.')
            return self._class_weight_from_data
        return None

    # ------------------------------------------------------------------ training

    def _run(self, name: str, phase: Phase, train: Any, validation: Any, callbacks: Sequence[Any],
             verbose: Any) -> dict[str, list[float]]:
        train_ds, val_ds = self._adopt(train, validation)
        model = self.build()
        policy = phase.policy
        if isinstance(policy, UnfreezeTop):
            available = len(block_names(layer_groups(backbone_of(model), self.spec.groups)))
            if policy.blocks > available:  # e.g. a Hub module is one block
                log.warning("%s has %d block(s); unfreezing all of them instead of %d.", self.spec.name,
                            available, policy.blocks)
                policy = dataclasses.replace(policy, blocks=available)
        summary: FreezeSummary = policy.apply(model, self.spec)
        assert self.head is not None
        model.compile(optimizer=phase.make_optimizer(_steps(train_ds)), loss=self.head.loss(),
                      metrics=self.head.metrics())
        log.info("Phase %s: %d epochs, lr %g (%s), %s: %d of %d backbone parameters train", name, phase.epochs,
                 phase.learning_rate, phase.schedule, policy, summary.trainable_params, summary.total_params)
        if phase.epochs == 0:
            return {}
        done = total_epochs(self.history)
        plan = self._cache_plan(model, callbacks)
        if plan is not None:
            extractor, tail, where = plan
            train_ds, val_ds = self._cached_datasets(extractor, name, verbose)
            tail.compile(optimizer=phase.make_optimizer(_steps(train_ds)), loss=self.head.loss(),
                         metrics=self.head.metrics())
            log.info("Phase %s trains on cached features (%s): the frozen layers below run once, not every "
                     "epoch. FineTuner(cache=False) turns this off.", name, where)
            model = tail
        result = model.fit(train_ds, validation_data=val_ds, epochs=done + phase.epochs, initial_epoch=done,
                           callbacks=list(callbacks), class_weight=self._resolve_class_weight(), verbose=verbose,
                           shuffle=False)  # the pipeline shuffles itself
        history = {k: [float(v) for v in values] for k, values in result.history.items()}
        self.history[name] = history
        return history

    def _cache_plan(self, model: keras.Model, callbacks: Sequence[Any]) -> tuple[keras.Model, keras.Model, str] | None:
        """``(extractor, tail, where)`` when training on cached features gives the same result
        (or, with ``augment_views``, when the user asked for cached augmented views)."""
        data = self._data
        if self.cache is None or data is None or data.train_ordered is None:
            return None
        views = 0
        if data.augment is not None:
            if not self.augment_views:
                return None  # augmented images differ every epoch: cached features would not
            views = self.augment_views  # asked for: K fixed augmented views stand in for fresh ones
        if any(isinstance(c, (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore))
               for c in callbacks):
            return None  # they would save the part above the cache, not the whole model
        net = backbone_of(model)
        names = [layer.name for layer in model.layers]
        head_input = model.layers[names.index(net.name) + 1].input
        head = keras.Model(head_input, model.output, name="head")
        image = keras.Input(model.input_shape[1:], name="image")
        preprocessed = model.get_layer("preprocess")(image)
        if not any(layer.trainable and layer.weights for layer in net.layers):
            if has_random_layers(net):
                return None
            where = f"backbone output, {views} augmented views per image" if views else "backbone output"
            return keras.Model(image, net(preprocessed), name="extractor"), head, where
        if views:
            return None  # views stand in for augmentation in the head phase only
        split = split_at_boundary(net)
        if split is None:
            return None
        bottom, top = split
        cut = keras.Input(bottom.output_shape[1:], name="activations")
        tail = keras.Model(cut, head(top(cut)), name="tail")
        where = f"activations at the freeze boundary, {bottom.output_shape[1:]} per image"
        return keras.Model(image, bottom(preprocessed), name="extractor"), tail, where

    def _cached_datasets(self, extractor: keras.Model, name: str, verbose: Any
                         ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        data = self._data
        assert data is not None and data.train_ordered is not None and self.cache is not None
        model_key = weights_digest(extractor)

        def key(split: str) -> str:
            files = data.train_files if split == "train" else data.validation_files
            source = files_digest(files.paths, files.labels) if files is not None else f"arrays:{id(data)}"
            return cache_key(model=model_key, source=source, split=split, size=data.image_size,
                             resize=data.resize, background=data.background)

        show = verbose not in (0, False)
        views = self.augment_views if data.augment is not None else 0
        if views:
            def augmented() -> Any:
                for k in range(views):
                    layers = data.augment.layers(seed=data.seed + k)
                    for images, labels in data.train_ordered:
                        yield layers(images, training=True), labels

            train = self.cache.compute(cache_key(base=key("train"), views=views, augment=repr(data.augment)),
                                       extractor, augmented(), views * data.num_train, progress=show)
        else:
            train = self.cache.compute(key("train"), extractor, data.train_ordered, data.num_train, progress=show)
        train_ds = feature_dataset(train, batch_size=data.batch_size, shuffle=True, seed=data.seed)
        val_ds = None
        if data.validation is not None:
            val = self.cache.compute(key("validation"), extractor, data.validation, data.num_validation,
                                     progress=show)
            val_ds = feature_dataset(val, batch_size=data.batch_size, shuffle=False, seed=data.seed)
        log.info("Features for phase %s: %s", name, "from the cache" if train.hit else "computed and cached")
        return train_ds, val_ds

    def train_head(self, train: Any, validation: Any = None, *, phase: Phase | None = None,
                   callbacks: Sequence[Any] = (), verbose: Any = "auto") -> dict[str, list[float]]:
        """Phase 1: train the head with the backbone frozen.

        Args:
            train: ``ImageData``, a ``tf.data.Dataset`` of ``(images, labels)`` batches, or a folder.
            validation: Validation batches (``ImageData.validation`` is used when omitted).
            phase: Overrides ``self.head_phase`` for this call.
            callbacks: Keras callbacks, passed to ``model.fit``.

        Returns:
            The Keras history of this phase (``{"loss": [...], "val_accuracy": [...], …}``).
        """
        return self._run("head", phase or self.head_phase, train, validation, callbacks, verbose)

    def fine_tune(self, train: Any, validation: Any = None, *, phase: Phase | None = None,
                  callbacks: Sequence[Any] = (), verbose: Any = "auto") -> dict[str, list[float]]:
        """Phase 2: unfreeze the top of the backbone and train it at a low learning rate."""
        chosen = phase or self.fine_tune_phase
        if chosen is None:
            raise ConfigError("fine_tune_phase is None: pass phase=Phase(...) to fine_tune().")
        return self._run("fine_tune", chosen, train, validation, callbacks, verbose)

    def fit(self, train: Any, validation: Any = None, *, callbacks: Sequence[Any] = (),
            verbose: Any = "auto") -> dict[str, dict[str, list[float]]]:
        """Run :meth:`train_head`, then :meth:`fine_tune` (unless ``fine_tune_phase`` is None).

        Returns:
            ``{"head": history, "fine_tune": history}``.
        """
        self.train_head(train, validation, callbacks=callbacks, verbose=verbose)
        if self.fine_tune_phase is not None and self.fine_tune_phase.epochs:
            self.fine_tune(train, validation, callbacks=callbacks, verbose=verbose)
        return self.history

    # ------------------------------------------------------------------ inference

    def _as_dataset(self, data: Any) -> tf.data.Dataset:
        if isinstance(data, ImageData):
            if data.validation is None:
                raise DataError("This ImageData has no validation split to evaluate on; pass a dataset.")
            return data.validation
        if isinstance(data, tf.data.Dataset):
            return data
        if isinstance(data, (str, os.PathLike)):
            files = scan_folder(data)
            if files.class_names != self.class_names:
                raise DataError(f"The classes in {str(data)!r} {list(files.class_names)} differ from the model's "
                                f"{list(self.class_names or ())}.")
            return make_dataset(files, image_size=self._size(), resize=self.resize, background=self.background)
        raise DataError(
            f"Expected ImageData, a tf.data.Dataset or a class-folder path. Received: {type(data).__name__}."
        )

    def _size(self) -> int:
        return int(self._require_model().input_shape[1])

    def evaluate(self, data: Any, *, verbose: int = 0) -> Evaluation:
        """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on ``data``."""
        model = self._require_model()
        dataset = self._as_dataset(data)
        assert self.head is not None and self.class_names is not None
        probs, truth = [], []
        for images, labels in dataset:
            probs.append(model(images, training=False).numpy())
            truth.append(labels.numpy())
        if not probs:
            raise DataError("The evaluation data is empty.")
        p, y = np.concatenate(probs), np.concatenate(truth)
        loss = float(keras.ops.convert_to_numpy(self.head.loss()(y, p)))
        n = len(self.class_names)
        if self.head.task == "multi_label":
            pred = p >= 0.5
            truth_b = y >= 0.5
            tp = (pred & truth_b).sum(0).astype(float)
            fp = (pred & ~truth_b).sum(0).astype(float)
            fn = (~pred & truth_b).sum(0).astype(float)
            precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
            return Evaluation(float((pred == truth_b).all(1).mean()), loss, self.class_names, precision, recall, f1,
                              truth_b.sum(0), None)
        if self.head.task == "regression":
            raise ConfigError("evaluate() reports classification metrics; use model.evaluate() for regression.")
        y = y.astype(np.int64).reshape(-1)
        pred = p.argmax(1)
        cm = np.zeros((n, n), dtype=np.int64)
        np.add.at(cm, (y, pred), 1)
        tp = np.diag(cm).astype(float)
        precision, recall, f1 = _precision_recall_f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)
        return Evaluation(float((pred == y).mean()), loss, self.class_names, precision, recall, f1, cm.sum(1), cm)

    def predict(self, images: Any, *, batch_size: int = 32) -> Predictions:
        """Class probabilities for image files, a folder of images, arrays or a dataset.

        Args:
            images: A path (file or folder), a list of paths, an array ``(n, h, w, 3)`` or
                ``(h, w, 3)`` of raw 0–255 pixels, or a ``tf.data.Dataset`` of image batches.
        """
        model = self._require_model()
        assert self.class_names is not None
        size = self._size()
        paths: tuple[str, ...] | None = None
        if isinstance(images, (str, os.PathLike)):
            root = Path(images)
            if root.is_dir():
                found = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
                if not found:
                    raise DataError(f"Folder {str(root)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)}).")
                images = found
            elif not root.exists():
                raise DataError(f"Image {str(root)!r} does not exist. Check the path.")
            else:
                images = [str(root)]
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
            paths = tuple(str(p) for p in images)
            arrays = np.stack([load_image(p, image_size=size, resize=self.resize, background=self.background)
                               for p in paths])
            probs = model.predict(arrays.astype(np.float32), batch_size=batch_size, verbose=0)
        elif isinstance(images, tf.data.Dataset):
            probs = np.concatenate([model(x[0] if isinstance(x, tuple) else x, training=False).numpy()
                                    for x in images])
        else:
            array = np.asarray(images, dtype=np.float32)
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4 or array.shape[-1] != 3:
                raise DataError(f"Expected images of shape (n, h, w, 3) or (h, w, 3). Received: {array.shape}.")
            if array.shape[1:3] != (size, size):
                array = tf.image.resize(array, (size, size), antialias=True).numpy()
            probs = model.predict(array, batch_size=batch_size, verbose=0)
        return Predictions(np.asarray(probs), self.class_names, paths)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.keras`` and ``transferkit.json`` (classes, settings, history) to ``directory``."""
        model = self._require_model()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / MODEL_FILE)
        meta = {
            "format": 1,
            "backbone": self.spec.name,
            "hub_handle": self.spec.description if self.spec.family == "hub" else None,
            "weights": None if self.weights is None else str(self.weights),
            "image_size": self.image_size,
            "class_names": list(self.class_names or ()),
            "head": (self.head or Head()).to_config(),
            "resize": self.resize,
            "background": list(self.background),
            "history": self.history,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, safe_mode: bool = True) -> FineTuner:
        """Load a FineTuner written by :meth:`save`; predictions are identical.

        Args:
            safe_mode: Passed to ``keras.saving.load_model``. Models holding a TensorFlow Hub
                module need ``safe_mode=False`` (loading runs the module's SavedModel graph).
        """
        root = Path(directory)
        if not (root / MODEL_FILE).is_file() or not (root / META_FILE).is_file():
            raise DataError(f"{str(root)!r} is not a saved FineTuner: expected {MODEL_FILE} and {META_FILE} in it.")
        meta = json.loads((root / META_FILE).read_text())
        backbone = meta["backbone"]
        if meta.get("hub_handle") and backbone not in list_backbones(family="hub"):
            backbone = meta["hub_handle"]  # an unregistered Hub module: resolve its handle again
        tuner = cls(backbone, weights=meta["weights"], class_names=meta["class_names"],
                    head=Head.from_config(meta["head"]), image_size=meta["image_size"])
        tuner.model = keras.saving.load_model(root / MODEL_FILE, safe_mode=safe_mode)
        tuner.resize = meta.get("resize", "pad")
        tuner.background = tuple(meta.get("background", WHITE))  # type: ignore[assignment]
        tuner.history = meta.get("history", {})
        return tuner


def total_epochs(history: dict[str, dict[str, list[float]]]) -> int:
    """Epochs run over all phases of a FineTuner history."""
    return sum(len(next(iter(h.values()), [])) for h in history.values())

