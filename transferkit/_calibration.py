"""Probability calibration by temperature scaling, and how calibrated a classifier is.

A fine-tuned softmax classifier is usually over-confident: of the images it gives 0.9, fewer than
90 % are right. Temperature scaling divides the logits by one number ``T`` fitted on the
validation split (the ``T`` with the lowest negative log-likelihood there); the ranking of the
classes, and so the accuracy, does not change. transferkit folds ``T`` into the weights of the
head's output layer — ``softmax((W x + b) / T) = softmax((W / T) x + b / T)`` — so the saved
model, and every export of it, gives calibrated probabilities with no extra layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from transferkit._errors import ConfigError

BINS = 15
MIN_IMAGES = 20  # fewer validation images than this: the temperature is left at 1
_EPSILON = 1e-12


@dataclass(frozen=True)
class Reliability:
    """Accuracy against confidence in equal-width confidence bins (a reliability diagram's data).

    Attributes:
        confidence: Mean top-class probability of the predictions in each bin (``nan`` if empty).
        accuracy: Share of them that are right (``nan`` if empty).
        counts: Predictions in each bin.
    """

    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def expected_calibration_error(self) -> float:
        """Mean |accuracy - confidence| over the bins, weighted by how many predictions each holds."""
        total = sum(self.counts)
        return float(sum(n * abs(a - c) for a, c, n in zip(self.accuracy, self.confidence, self.counts) if n)
                     / max(total, 1))

    def to_dict(self) -> dict[str, list[float | None] | list[int]]:
        def clean(values: tuple[float, ...]) -> list[float | None]:
            return [None if math.isnan(v) else round(v, 6) for v in values]

        return {"confidence": clean(self.confidence), "accuracy": clean(self.accuracy), "counts": list(self.counts)}


@dataclass(frozen=True)
class Calibration:
    """The temperature a FineTuner's probabilities were scaled by, and what it did on the validation split.

    Attributes:
        temperature: ``T``; above 1 the model was over-confident.
        ece_before, ece_after: Expected calibration error (15 bins) on the validation split before
            and after. The split is also what ``T`` was fitted on, so ``ece_after`` is optimistic;
            docs/benchmarks.md has figures on held-out test images.
        before, after: The reliability diagrams' data.
        images: Validation images it was fitted on.
    """

    temperature: float
    ece_before: float
    ece_after: float
    before: Reliability
    after: Reliability
    images: int

    def describe(self) -> str:
        return (f"temperature {self.temperature:.3f} fitted on {self.images} validation images: expected "
                f"calibration error {self.ece_before:.4f} → {self.ece_after:.4f}")

    def to_dict(self) -> dict[str, object]:
        return {"temperature": self.temperature, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "images": self.images, "before": self.before.to_dict(), "after": self.after.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        def diagram(part: object) -> Reliability:
            assert isinstance(part, dict)
            return Reliability(tuple(math.nan if v is None else float(v) for v in part["confidence"]),
                               tuple(math.nan if v is None else float(v) for v in part["accuracy"]),
                               tuple(int(n) for n in part["counts"]))

        return cls(temperature=float(data["temperature"]), ece_before=float(data["ece_before"]),  # type: ignore[arg-type]
                   ece_after=float(data["ece_after"]), before=diagram(data["before"]),  # type: ignore[arg-type]
                   after=diagram(data["after"]), images=int(data["images"]))  # type: ignore[call-overload]


def reliability(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = BINS) -> Reliability:
    """Bin single-label predictions by their top probability; accuracy and confidence per bin."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    mean_confidence, mean_accuracy, counts = [], [], []
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        counts.append(n)
        mean_confidence.append(float(confidence[members].mean()) if n else math.nan)
        mean_accuracy.append(float(right[members].mean()) if n else math.nan)
    return Reliability(tuple(mean_confidence), tuple(mean_accuracy), tuple(counts))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)``: what the model outputs once ``T`` is folded into it."""
    logits = np.log(np.asarray(probabilities, dtype=np.float64) + _EPSILON) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _nll(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = scale(probabilities, temperature).astype(np.float64)
    return float(-np.mean(np.log(scaled[np.arange(len(labels)), labels] + _EPSILON)))


def _fittable(probabilities: np.ndarray, labels: np.ndarray) -> bool:
    """Whether a temperature can be fitted: enough images, and not every one of them right."""
    return len(labels) >= MIN_IMAGES and not np.all(np.asarray(probabilities).argmax(axis=1) == labels)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] with the lowest negative log-likelihood (golden-section search on log T).

    When every prediction is right the likelihood only grows as ``T`` shrinks, which would make the
    model as over-confident as the bound allows on the strength of a few easy images; and on
    fewer than ``MIN_IMAGES`` images one temperature is a guess (6 images gave T = 0.1 and a worse
    calibration error). The temperature is then left at 1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ConfigError("Calibration needs validation images; there are none.")
    if not _fittable(probabilities, labels):
        return 1.0
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(probabilities, labels, math.exp(a)), _nll(probabilities, labels, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(probabilities, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(probabilities, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def calibrated_loss(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The negative log-likelihood of the labels after :func:`fit_temperature`'s temperature;
    ``None`` where no temperature can be fitted (fewer than ``MIN_IMAGES`` images, or every one
    right: the best temperature would be the search's bound and the loss about 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not _fittable(probabilities, labels):
        return None
    return _nll(probabilities, labels, fit_temperature(probabilities, labels))


def calibrate(probabilities: np.ndarray, labels: np.ndarray) -> tuple[Calibration, np.ndarray]:
    """Fit the temperature on validation outputs; returns it with the scaled probabilities."""
    temperature = fit_temperature(probabilities, labels)
    scaled = scale(probabilities, temperature)
    before, after = reliability(probabilities, labels), reliability(scaled, labels)
    return Calibration(temperature, before.expected_calibration_error, after.expected_calibration_error, before,
                       after, len(labels)), scaled


def fold_temperature(output_layer: keras.layers.Dense, temperature: float) -> None:
    """Divide the kernel and bias of the softmax layer by ``temperature`` (its outputs become calibrated)."""
    output_layer.kernel.assign(output_layer.kernel.numpy() / temperature)
    if output_layer.bias is not None:
        output_layer.bias.assign(output_layer.bias.numpy() / temperature)
