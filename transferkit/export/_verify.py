"""Comparing an export with the Keras model: agreement, differences, near ties, latency, and the refusal.

The rule for float exports: on the check images, the export must pick the Keras model's top class
(:data:`AGREEMENT_TOLERANCE`), and a float32 one must give the same probabilities
(:data:`FLOAT32_TOLERANCE`). Near ties are left out of the first rule (:data:`TIE_MARGINS`): where
two classes are within rounding of each other, the format's precision alone decides which one
comes out on top, and a flip there says nothing about the export.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._errors import DataError
from transferkit._run import TrainedRun
from transferkit.export._images import CheckImages
from transferkit.export._kinds import ENFORCED_QUANTIZATIONS, is_float32, kind_name

AGREEMENT_TOLERANCE = 0.99
"""A float export must pick the Keras model's top class on at least this share of the check images
that are not near ties (see :data:`TIE_MARGINS`)."""

FLOAT32_TOLERANCE = 1e-3
"""A float32 export (SavedModel, Hub module, ONNX, TFLite ``"none"``) must give every probability
within this of Keras'."""

TIE_MARGINS = {"none": 2 * FLOAT32_TOLERANCE, "float16": 0.05, "dynamic": 0.1, "int8": 0.2, "int8-mixed": 0.2}
"""For each ``quantize``, the largest Keras top-1 margin that the format's precision can turn over.

An image's top class can only change where the Keras model's margin (top-1 minus top-2
probability; multi-label: a probability's distance from 0.5) is less than twice the largest
difference between the two models' outputs. So an image is a *near tie*, left out of the
agreement rule, where its margin is at most twice the largest difference measured on the check
images — but never more than this bound, what the format's rounding can explain, so that a wrong
export (outputs in another order, changed weights: flips at margins of tenths) is still refused:

- float32 formats (``"none"``; SavedModel, Hub module and ONNX too): 2 × :data:`FLOAT32_TOLERANCE`.
  A flip at a larger margin needs a difference that :data:`FLOAT32_TOLERANCE` refuses anyway;
  float32 exports differ by about 1e-7, so practically no image is left out.
- ``"float16"``: 0.05. float16 keeps 11 significant bits, so each weight moves by up to
  2⁻¹¹ ≈ 4.9e-4 of itself, and through a deep network these errors add up: measured largest
  probability differences are 2.3e-4 on the tiny test network, 1.1e-3 for MobileNet v1 on stamps5
  photos, 3.0e-3 on random pixels and 1.4e-2 on the 500 training photos for MobileNet v1
  fine-tuned on Fashion-MNIST at 96 px. Twice that, 0.028, is the largest margin rounding turned
  over there; 0.05 leaves room for deeper networks and stays far below a wrong export's margins.
- ``"dynamic"``: 0.1; ``"int8"``, ``"int8-mixed"``: 0.2. int8 weights (and for int8 the
  activations, and outputs in steps of 1/256) move probabilities by 1e-2 to 2e-1 (0.21 for int8
  MobileNet v1 on stamps5). These kinds are reported, not refused; the bound only says which of
  their flips are near ties.
"""

LATENCY_RUNS = 20
"""Forward passes at batch 1 whose median is the reported latency (after three warm-up passes)."""


def agreement(task: str, outputs: np.ndarray, reference: np.ndarray, where: np.ndarray | None = None
              ) -> float | None:
    """Share of images whose top class is the same (multi-label: of image × class decisions at 0.5),
    among ``where`` if given; ``None`` for regression, or when ``where`` leaves nothing."""
    if task == "single_label":
        same = outputs.argmax(axis=1) == reference.argmax(axis=1)
    elif task == "multi_label":
        same = (outputs >= 0.5) == (reference >= 0.5)
    else:
        return None  # regression: only the differences of the outputs say anything
    if where is not None:
        same = same[where]
    return float(np.mean(same)) if same.size else None


def max_diff(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference of any output; NaN when the outputs are not finite."""
    if not np.all(np.isfinite(outputs)):
        return float("nan")
    return float(np.max(np.abs(outputs.astype(np.float64) - reference)))


def margins(task: str, reference: np.ndarray) -> np.ndarray | None:
    """How far each decision of the Keras model is from turning over: top-1 minus top-2 probability
    per image (multi-label: each probability's distance from 0.5); ``None`` for regression."""
    if task == "multi_label":
        return np.abs(reference - 0.5)
    if task != "single_label":
        return None
    if reference.shape[1] < 2:
        return np.full(len(reference), np.inf)
    top = np.sort(reference, axis=1)
    return top[:, -1] - top[:, -2]


@dataclass(frozen=True)
class Comparison:
    """An export's outputs beside the Keras model's on the same check images.

    Attributes:
        format: The export's format.
        quantize: Its quantization (``"none"`` for every format but TFLite).
        task: The head's task (``"single_label"``, ``"multi_label"``, ``"regression"``).
        outputs: The export's outputs.
        reference: The Keras model's outputs.
        labels: The check images' labels, if known.
    """

    format: str
    quantize: str
    task: str
    outputs: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None

    @property
    def enforced(self) -> bool:
        """Whether the tolerances hold (float exports); quantized ones are reported only."""
        return self.quantize in ENFORCED_QUANTIZATIONS

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.outputs)))

    @property
    def agreement(self) -> float | None:
        return agreement(self.task, self.outputs, self.reference)

    @functools.cached_property
    def max_abs_diff(self) -> float:
        return max_diff(self.outputs, self.reference)

    @functools.cached_property
    def tie_margin(self) -> float | None:
        """Keras margins at or below this are near ties (see :data:`TIE_MARGINS`); ``None`` for regression."""
        if margins(self.task, self.reference) is None:
            return None
        measured = 2 * self.max_abs_diff if self.finite else np.inf
        return float(min(measured, TIE_MARGINS[self.quantize]))

    @functools.cached_property
    def _decisive(self) -> np.ndarray | None:
        """Which images (multi-label: decisions) are not near ties; ``None`` for regression."""
        found, tie = margins(self.task, self.reference), self.tie_margin
        return None if found is None or tie is None else found > tie

    @property
    def compared(self) -> int | None:
        """How many images (multi-label: decisions) the agreement rule compares: those not near ties."""
        decisive = self._decisive
        return None if decisive is None else int(np.count_nonzero(decisive))

    @property
    def ties(self) -> int | None:
        """How many images (multi-label: decisions) are near ties, left out of the agreement rule."""
        decisive = self._decisive
        return None if decisive is None else int(decisive.size - np.count_nonzero(decisive))

    @property
    def decisive_agreement(self) -> float | None:
        """Top-1 agreement on the images that are not near ties: what :data:`AGREEMENT_TOLERANCE` holds."""
        decisive = self._decisive
        return None if decisive is None else agreement(self.task, self.outputs, self.reference, decisive)

    def accuracy(self, outputs: np.ndarray) -> float | None:
        """Accuracy of ``outputs`` on the labelled check images (single-label), else ``None``."""
        if self.labels is None or self.task != "single_label":
            return None
        return float(np.mean(outputs.argmax(axis=1) == self.labels))

    def problems(self, where: str) -> list[str]:
        """What is wrong with the export, in words (``where`` names the check images); empty when it passes."""
        if not self.finite:
            return ["it gives non-finite outputs (NaN or infinity)"]
        found = []
        decisive = self.decisive_agreement
        if self.enforced and decisive is not None and decisive < AGREEMENT_TOLERANCE:
            compared = (f"the {self.compared} of {where} that are not near ties (Keras top-1 margin above "
                        f"{self.tie_margin:.2g})" if self.ties else where)
            found.append(f"its top class agrees with the Keras model's on {decisive:.1%} of {compared} "
                         f"(at least {AGREEMENT_TOLERANCE:.0%} needed)")
        if self.enforced and is_float32(self.format, self.quantize) and self.max_abs_diff > FLOAT32_TOLERANCE:
            found.append(f"its outputs differ from the Keras model's by up to {self.max_abs_diff:.3g} on {where} "
                         f"(at most {FLOAT32_TOLERANCE:g} allowed for float32)")
        return found


def refuse_if_wrong(comparison: Comparison, *, where: str, path: str) -> None:
    """Raise :class:`DataError` for an export whose outputs are not finite, or a float export that
    disagrees with the Keras model beyond the tolerances.

    Args:
        comparison: The export's outputs beside the Keras model's.
        where: The check images, as the message names them (``"18 images from 'photos'"``).
        path: The export's path, which was left untouched.
    """
    problems = comparison.problems(where)
    if not problems:
        return
    hint = ""
    compared, decisive = comparison.compared or 0, comparison.decisive_agreement
    flips = round((1 - decisive) * compared) if decisive is not None else 0
    if comparison.enforced and 0 < flips <= 2 and compared < 1 / (1 - AGREEMENT_TOLERANCE):
        # a flip or two on a small set may be bad luck rather than a wrong export: more images tell
        hint = (f" With {compared} images one flip costs {1 / compared:.1%}: check on a few hundred images "
                "(check=FOLDER, or transferkit export --check FOLDER).")
    raise DataError(f"The {kind_name(comparison.format, comparison.quantize)} export of this run is wrong: "
                    f"{'; '.join(problems)}. Nothing was written to {path!r}.{hint} If it persists, please report "
                    f"it with the run's backbone (TensorFlow {tf.__version__}).")


def compare(checks: CheckImages, *runs: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """The outputs of each of ``runs`` over the check images, reading each batch once."""
    outputs: list[list[np.ndarray]] = [[] for _ in runs]
    for batch in checks.batches():
        for found, run in zip(outputs, runs):
            found.append(np.asarray(run(batch), dtype=np.float32))
    return [np.concatenate(found) for found in outputs]


def keras_call(run: TrainedRun) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model on a batch, in inference mode, as float32 outputs."""
    model = run.model
    return lambda images: np.asarray(model(images, training=False), dtype=np.float32)


def latency(run: Callable[[np.ndarray], Any], image: np.ndarray, *, runs: int = LATENCY_RUNS,
            warmup: int = 3) -> float:
    """Median milliseconds of ``run(image)`` over ``runs`` runs (:data:`LATENCY_RUNS`), after ``warmup`` runs."""
    for _ in range(warmup):
        run(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def keras_latency(run: TrainedRun, image: np.ndarray) -> float:
    """:func:`latency` of the Keras model as a compiled ``tf.function`` call."""
    model = run.model
    call = tf.function(lambda x: model(x, training=False))
    return latency(lambda x: np.asarray(call(tf.constant(x))), image)
