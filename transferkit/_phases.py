"""Training phases: how long, how fast, what trains — and the two defaults of the recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from transferkit._errors import ConfigError, check_choice
from transferkit._freezing import FreezeAll, FreezePolicy, UnfreezeTop

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One training phase: how long, how fast, and what trains.

    Attributes:
        epochs: Passes over the training data (0 skips the phase).
        learning_rate: Peak learning rate.
        policy: Which backbone layers train (:class:`~transferkit.FreezePolicy`).
        schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 0 after the warm-up).
        warmup_epochs: Linear warm-up from 0 to ``learning_rate`` (cosine schedule only),
            capped at half the phase.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum 0.9).
        weight_decay: Decoupled weight decay for ``"adamw"``.
        patience: Stop the phase after this many epochs without a better validation accuracy
            (validation loss for multi-label and regression heads); ``None`` runs every epoch.
            Needs validation data. Which weights are kept afterwards is the FineTuner's
            ``keep_best``.

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
    patience: int | None = None

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
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigError(f"Expected patience to be an integer >= 1 or None. Received: patience={self.patience!r}.")

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


# Measured on held-out tasks (docs/benchmarks.md): a linear head on cached features needs a few
# hundred steps to converge, which 5 epochs of a few hundred images are not.
HEAD_PHASE = Phase(epochs=50, learning_rate=1e-3, policy=FreezeAll())
FINE_TUNE_PHASE = Phase(epochs=10, learning_rate=1e-4, policy=UnfreezeTop(2), schedule="cosine", warmup_epochs=1)


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Batches in one pass over ``dataset`` (counted once when tf.data cannot tell)."""
    count = int(dataset.cardinality())
    if count > 0:
        return count
    return sum(1 for _ in dataset)
