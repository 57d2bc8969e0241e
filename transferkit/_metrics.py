"""Metrics and predictions as plain data: what :meth:`FineTuner.evaluate` and ``predict`` return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from transferkit._errors import ConfigError, DataError

TOP_K = 3
"""How many classes :meth:`Predictions.top` (and ``transferkit predict``) list by default."""

MULTI_LABEL_THRESHOLD = 0.5
"""A multi-label head's class counts as present at or above this probability (and a multi-hot label at or above it)."""


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

    def label_sets(self, threshold: float = MULTI_LABEL_THRESHOLD) -> list[list[str]]:
        """The classes at or above ``threshold`` for each image (the answer of a multi-label head)."""
        return [[self.class_names[j] for j in np.flatnonzero(row >= threshold)] for row in self.probabilities]

    def top(self, k: int = TOP_K) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class, probability)`` pairs of each image."""
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(self.probabilities, order)]


def evaluate_outputs(probabilities: np.ndarray, truth: np.ndarray, *, task: str, loss: keras.losses.Loss,
                     class_names: tuple[str, ...]) -> Evaluation:
    """Accuracy, loss, per-class precision/recall/F1 and (single-label) the confusion matrix.

    Args:
        probabilities: Model outputs, ``(n, num_classes)``.
        truth: Class indices ``(n,)`` (single-label) or multi-hot rows ``(n, num_classes)``.
        task: The head's task (``"single_label"`` or ``"multi_label"``).
        loss: The head's loss, applied to the whole set.
        class_names: Name of each class.
    """
    if not len(probabilities):
        raise DataError("The evaluation data is empty.")
    p, y = np.asarray(probabilities), np.asarray(truth)
    value = float(keras.ops.convert_to_numpy(loss(y, p)))
    if task == "multi_label":
        pred = p >= MULTI_LABEL_THRESHOLD
        truth_b = y >= MULTI_LABEL_THRESHOLD
        tp = (pred & truth_b).sum(0).astype(float)
        fp = (pred & ~truth_b).sum(0).astype(float)
        fn = (~pred & truth_b).sum(0).astype(float)
        precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
        return Evaluation(float((pred == truth_b).all(1).mean()), value, class_names, precision, recall, f1,
                          truth_b.sum(0), None)
    if task != "single_label":
        raise ConfigError("evaluate() reports classification metrics; use model.evaluate() for regression.")
    n = len(class_names)
    y = y.astype(np.int64).reshape(-1)
    pred = p.argmax(1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    tp = np.diag(cm).astype(float)
    precision, recall, f1 = _precision_recall_f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    return Evaluation(float((pred == y).mean()), value, class_names, precision, recall, f1, cm.sum(1), cm)
