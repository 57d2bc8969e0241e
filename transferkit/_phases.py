"""Training phases: how long, how fast, what trains — and the two defaults of the recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from transferkit._defaults import (
    FINE_TUNE_EPOCHS,
    FINE_TUNE_LEARNING_RATE,
    FINE_TUNE_UNFREEZE_BLOCKS,
    HEAD_COPIES,
    HEAD_EPOCHS,
    HEAD_LEARNING_RATE,
)
from transferkit._errors import ConfigError, check_choice
from transferkit._freezing import FreezeAll, FreezePolicy, UnfreezeTop

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")
MIXES = ("mixup", "cutmix")


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
        label_smoothing: Train towards ``1 - s`` for the true class and ``s / classes`` for
            each class (classification heads; 0 disables). Validation losses logged during the
            phase are smoothed too; :meth:`FineTuner.evaluate` reports the plain loss.
        mix: ``"mixup"`` (blend pairs of images and their labels) or ``"cutmix"`` (paste a patch
            of one image into another, labels in proportion to the area) on each training batch,
            with Keras' ``MixUp``/``CutMix`` layers; ``None`` disables. Single-label heads only.
            A mixing phase runs the whole network every epoch (mixed images have no cached
            features), so it costs what an augmented phase costs.
        mix_strength: MixUp's ``alpha`` or CutMix's ``factor`` (Keras' defaults: 0.2 and 1.0
            when left at ``None``).
        lr_decay: Discriminative learning rates: the head and the backbone's top group train at
            ``learning_rate``, the block below at ``learning_rate * lr_decay``, the next at
            ``learning_rate * lr_decay**2``, down to the stem (fastai's ``slice(lo, hi)`` over
            layer groups, with ``lo = hi * lr_decay**(groups - 1)``). 1 (the default) trains
            every group at the same rate. Uses ``keras.optimizers.MultiOptimizer``.
        gradual: Gradual unfreezing (with ``UnfreezeTop(n)``): split the phase into ``n``
            stages that unfreeze the top 1, 2, …, ``n`` blocks in turn, the epochs shared out
            evenly (the last stages get the remainder). Each stage starts its own schedule.
        heads: Train this many copies of a linear head side by side (each with its own random
            initialisation and dropout masks, on the same batches) and keep their average. For a
            linear output layer the average of the weights is exactly the average of the logits,
            so the model keeps its one ``Dense`` layer: an ensemble at the cost of one head. It
            applies where the phase trains only the output layer on cached features (the head
            phase of a head without hidden layers, without a distribution strategy); elsewhere
            the phase trains one head and says so in the log. 1 trains one head.
        solve: Solve the head instead of training it: L2-regularised softmax regression on the
            cached features, its strength (scikit-learn's ``C``) chosen by 5-fold cross-validated
            log loss on the training images, solved by L-BFGS (the converged linear probe). It
            applies to a linear single-label head trained on cached features alone; the phase then
            runs one epoch at learning rate 0, so its history, the kept epoch and the checkpoint are
            those of any phase, and ``epochs`` and ``heads`` are not used. Elsewhere the phase
            trains and says so in the log. ``"auto"`` (the head phase's default) solves up to 2,000
            training images and trains above that (the solve's cost grows with the images, and an optimizer
            gets more steps per epoch from more of them).

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
    label_smoothing: float = 0.0
    mix: str | None = None
    mix_strength: float | None = None
    lr_decay: float = 1.0
    gradual: bool = False
    heads: int = 1
    solve: bool | str = False

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
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"Expected label_smoothing in [0, 1). Received: label_smoothing={self.label_smoothing!r}.")
        if self.mix is not None:
            check_choice("mix", self.mix, MIXES)
        strength = self.mix_strength
        if strength is not None and (not isinstance(strength, (int, float)) or strength <= 0):
            raise ConfigError(f"Expected mix_strength > 0 or None. Received: mix_strength={self.mix_strength!r}.")

        if not isinstance(self.lr_decay, (int, float)) or not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"Expected lr_decay in (0, 1]. Received: lr_decay={self.lr_decay!r}.")
        if not isinstance(self.heads, int) or isinstance(self.heads, bool) or self.heads < 1:
            raise ConfigError(f"Expected heads to be an integer >= 1. Received: heads={self.heads!r}.")
        if self.solve not in (True, False, "auto") or not isinstance(self.solve, (bool, str)):
            raise ConfigError(f'Expected solve to be True, False or "auto". Received: solve={self.solve!r}.')
        if self.solve and self.mix is not None:
            raise ConfigError(f"solve=True solves the head on cached features, which mixed images "
                              f"(mix={self.mix!r}) do not have. Use one or the other.")
        if self.gradual and not isinstance(self.policy, UnfreezeTop):
            raise ConfigError(f"gradual=True opens one more block per stage, which needs policy=UnfreezeTop(n). "
                              f"Received: policy={self.policy!r}.")

    def stages(self) -> list[Phase]:
        """The phases a gradual phase runs one after the other (itself when not gradual)."""
        if not self.gradual or not isinstance(self.policy, UnfreezeTop) or self.policy.blocks <= 1:
            return [dataclasses.replace(self, gradual=False)]
        count = min(self.policy.blocks, max(self.epochs, 1))
        base, extra = divmod(self.epochs, count)
        blocks = [round(self.policy.blocks * (i + 1) / count) for i in range(count)]
        return [dataclasses.replace(self, gradual=False, policy=dataclasses.replace(self.policy, blocks=b),
                                    epochs=base + (1 if i >= count - extra else 0))
                for i, b in enumerate(blocks)]

    @property
    def dense_labels(self) -> bool:
        """Whether the phase trains on one-hot (possibly soft) labels instead of class indices."""
        return bool(self.label_smoothing) or self.mix is not None

    def mixer(self, seed: int | None = None) -> keras.layers.Layer | None:
        """The Keras MixUp or CutMix layer of this phase (``None`` without mixing)."""
        if self.mix is None:
            return None
        if self.mix == "mixup":
            return keras.layers.MixUp(alpha=0.2 if self.mix_strength is None else self.mix_strength, seed=seed)
        return keras.layers.CutMix(factor=1.0 if self.mix_strength is None else self.mix_strength, seed=seed)

    def learning_rate_schedule(self, steps_per_epoch: int, *, scale: float = 1.0
                               ) -> float | keras.optimizers.schedules.LearningRateSchedule:
        """The learning rate (constant) or schedule (cosine) for a phase of this many steps per epoch,
        times ``scale``."""
        peak = float(self.learning_rate) * scale
        rate: float | keras.optimizers.schedules.LearningRateSchedule = peak
        if self.schedule == "cosine":
            total = max(1, self.epochs * steps_per_epoch)
            # a phase shorter than its warm-up still gets half of its steps for decay
            warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), total // 2)
            rate = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=0.0 if warmup else peak,
                decay_steps=max(1, total - warmup),
                warmup_target=peak if warmup else None,
                warmup_steps=warmup,
            )
        return rate

    def make_optimizer(self, steps_per_epoch: int, *, scale: float = 1.0) -> keras.optimizers.Optimizer:
        """A fresh optimizer with this phase's learning-rate schedule (times ``scale``)."""
        rate = self.learning_rate_schedule(steps_per_epoch, scale=scale)
        if self.optimizer == "adamw":
            return keras.optimizers.AdamW(learning_rate=rate, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=rate, momentum=0.9)
        return keras.optimizers.Adam(learning_rate=rate)

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"},
                "policy": repr(self.policy)}


# Measured on held-out tasks (docs/benchmarks.md): a linear head on cached features needs a few
# hundred steps to converge, which 5 epochs of a few hundred images are not; five copies averaged
# are steadier than one. Up to SOLVE_MAX_IMAGES training images the head is solved instead (the
# converged probe, its penalty cross-validated): ahead of the copies, as whole commands, on three
# of the suite's four datasets; the epochs and copies serve the larger sets.
HEAD_PHASE = Phase(epochs=HEAD_EPOCHS, learning_rate=HEAD_LEARNING_RATE, policy=FreezeAll(), heads=HEAD_COPIES,
                   solve="auto")
FINE_TUNE_PHASE = Phase(epochs=FINE_TUNE_EPOCHS, learning_rate=FINE_TUNE_LEARNING_RATE,
                        policy=UnfreezeTop(FINE_TUNE_UNFREEZE_BLOCKS), schedule="cosine", warmup_epochs=1)


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Batches in one pass over ``dataset`` (counted once when tf.data cannot tell)."""
    count = int(dataset.cardinality())
    if count > 0:
        return count
    return sum(1 for _ in dataset)
