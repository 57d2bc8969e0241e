"""The learning-rate finder: one short run with an exponentially growing learning rate.

The learning rate goes from ``start`` to ``end`` over ``steps`` batches while the training loss
is recorded, smoothed with an exponential moving average (bias-corrected) so that batch noise does
not hide the trend; the sweep stops early once the smoothed loss exceeds ``stop_factor`` times the
best seen (it has diverged). The suggestion is the middle of the valley, the stretch over which the
loss falls most steadily: a rate where the model learns fast and is still far from diverging. fastai's
``lr_find`` ("valley" suggestion) is the reference for the method.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import tensorflow as tf

from transferkit._errors import ConfigError, DataError
from transferkit._freezing import FreezeState
from transferkit.data._loaders import ImageData


@dataclass(frozen=True)
class LearningRateSweep:
    """What :meth:`FineTuner.find_lr` measured.

    Attributes:
        learning_rates: The learning rate of each step.
        losses: The smoothed training loss after each step.
        suggestion: The suggested learning rate (middle of the longest falling stretch).
        phase: The phase the sweep was run for (``"head"`` or ``"fine_tune"``).
    """

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    suggestion: float
    phase: str

    def to_dict(self) -> dict[str, object]:
        return {"phase": self.phase, "suggestion": self.suggestion, "learning_rates": list(self.learning_rates),
                "losses": list(self.losses)}


def longest_fall(losses: list[float]) -> tuple[int, int]:
    """``(first, last)`` step of the valley: where the loss falls most steadily.

    Noise makes the loss of a sweep go up and down from step to step, so the longest strictly
    falling subsequence is found first (its steps need not be adjacent); the valley is the stretch
    of that many steps that ends where the subsequence ends. Counting steps rather than taking the
    subsequence's first step keeps a few lucky dips on the flat start of the curve from stretching
    the valley back to rates at which nothing is learnt yet.
    """
    n = len(losses)
    length = [1] * n  # length of the longest falling subsequence that ends at each step
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
        if length[i] > length[end]:
            end = i
    return end - length[end] + 1, end


def sweep_batches(train: tf.data.Dataset, data: ImageData | None) -> tf.data.Dataset:
    """The batches a sweep trains on: for ImageData, a shuffled copy of its unaugmented training split
    with a shuffle of its own, so that the training pipeline's order is not moved on by the sweep."""
    if data is None or data.train_ordered is None:
        return train
    settings = data.settings
    return (data.train_ordered.unbatch().shuffle(max(1, data.num_train), seed=settings.seed)
            .batch(settings.batch_size).prefetch(tf.data.AUTOTUNE))


def _batches(dataset: tf.data.Dataset) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
    while True:  # as many passes as the sweep needs
        empty = True
        for batch in dataset:
            empty = False
            yield batch
        if empty:
            raise DataError("The training data is empty: there is nothing to sweep the learning rate on.")


def sweep(model: keras.Model, dataset: tf.data.Dataset, *, start: float, end: float, steps: int, beta: float,
          stop_factor: float) -> tuple[list[float], list[float]]:
    """Train ``model`` (compiled) one batch per learning rate; returns the rates and smoothed losses.

    The caller restores the weights afterwards: the sweep leaves them wherever the last step did.
    """
    rates, smoothed = [], []
    average, best = 0.0, math.inf
    ratio = (end / start) ** (1.0 / max(1, steps - 1))
    batches = _batches(dataset)
    for step in range(steps):
        rate = start * ratio**step
        model.optimizer.learning_rate = rate
        images, labels = next(batches)
        logs = model.train_on_batch(images, labels, return_dict=True)
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            break
        average = beta * average + (1 - beta) * loss
        value = average / (1 - beta ** (step + 1))
        rates.append(rate)
        smoothed.append(value)
        best = min(best, value)
        if value > stop_factor * best:
            break
    return rates, smoothed


def suggest(rates: list[float], losses: list[float]) -> float:
    """The learning rate in the middle of the longest falling stretch of ``losses``."""
    if len(losses) < 2:
        raise ConfigError("The sweep ended after fewer than two steps (the loss diverged at once): start it "
                          "from a lower learning rate.")
    first, last = longest_fall(losses)
    return float(rates[first + (last - first) // 2])


def sweep_values(rates: list[float], losses: list[float], *, phase: str) -> LearningRateSweep:
    """The result of a sweep, with its suggestion."""
    return LearningRateSweep(tuple(float(r) for r in rates), tuple(float(v) for v in losses),
                             suggest(rates, losses), phase)


def constant_rate_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """A fresh optimizer of the same kind whose learning rate is a plain variable the sweep can set."""
    config = optimizer.get_config()
    config["learning_rate"] = 1e-7
    return type(optimizer).from_config(config)


@contextlib.contextmanager
def preserved(model: keras.Model) -> Iterator[None]:
    """Put ``model`` back as it was when the block ends: every variable (random-number states
    included), the trainable flags and the compiled state — a sweep trains it, then leaves no trace."""
    variables = [v.numpy() for v in model.variables]
    flags = FreezeState.of(model)
    compiled = model.get_compile_config() if getattr(model, "compiled", False) else None
    try:
        yield
    finally:
        for variable, value in zip(model.variables, variables):
            variable.assign(value)
        flags.restore()
        if compiled is not None:
            model.compile_from_config(compiled)
