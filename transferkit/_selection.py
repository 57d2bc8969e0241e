"""Keeping the best validated weights across phases (and, if asked, within a phase).

Fine-tuning can make a model worse: the weights a :class:`~transferkit.FineTuner` ends with (and
saves) are the best validated of the candidates seen so far. The candidates are the end of each
phase (``keep_best="phase"``, the default) or every epoch (``keep_best="epoch"``). Picking among
every epoch of a long phase on a small validation split picks noise: on held-out Fashion-MNIST
tasks (50 images per class, 10 of them validation) restoring the best of 30–100 head epochs lost
2–3 points of test accuracy against the phase's last epoch (docs/benchmarks.md). Without
validation data the last weights are kept.

"Best" is the highest validation accuracy, ties going to the lower validation loss, for
single-label classifiers; the lowest validation loss for multi-label and regression heads. Validation loss alone
picks badly across phases: fine-tuning makes a classifier more confident, which can raise the
loss on a small validation split while accuracy rises — on three held-out Fashion-MNIST tasks
(50 images per class) choosing by loss kept the head-phase weights twice and lost 3–6 points of
test accuracy, choosing by accuracy did not (docs/finetuner.md has the figures).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import keras
import numpy as np

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class BestEpoch:
    """Where the weights a FineTuner holds come from.

    Attributes:
        phase: ``"head"`` or ``"fine_tune"``.
        epoch: Epoch number, counted from 1 over all phases (as in the training curves).
        val_loss: Its validation loss.
        val_accuracy: Its validation accuracy (``None`` for a head without an accuracy metric).
    """

    phase: str
    epoch: int
    val_loss: float
    val_accuracy: float | None = None

    @property
    def score(self) -> tuple[float, ...]:
        """What "best" maximises: (accuracy, -loss), or (-loss,) without an accuracy."""
        if self.val_accuracy is None:
            return (-self.val_loss,)
        return (self.val_accuracy, -self.val_loss)

    def describe(self) -> str:
        accuracy = f"validation accuracy {self.val_accuracy:.4f}, " if self.val_accuracy is not None else ""
        return f"epoch {self.epoch} ({self.phase.replace('_', ' ')} phase; {accuracy}loss {self.val_loss:.4f})"

    def to_dict(self) -> dict[str, str | int | float | None]:
        return {"phase": self.phase, "epoch": self.epoch, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy}


@dataclass(frozen=True)
class Refit:
    """What :meth:`FineTuner.fit` trained again on the training and validation images together.

    Attributes:
        phases: The phases run again (``("head",)`` or ``("head", "fine_tune")``).
        epochs: Epochs of each, as many as the phase ran with validation.
        images: Images trained on.
    """

    phases: tuple[str, ...]
    epochs: tuple[int, ...]
    images: int

    def describe(self) -> str:
        done = ", then ".join(f"{p.replace('_', ' ')} phase {e} epochs" for p, e in zip(self.phases, self.epochs))
        return f"refitted on all {self.images} images (training + validation): {done}"

    def to_dict(self) -> dict[str, object]:
        return {"phases": list(self.phases), "epochs": list(self.epochs), "images": self.images}


@dataclass
class Snapshot:
    """The best epoch so far and the whole model's weights at its end."""

    best: BestEpoch
    weights: list[np.ndarray] = field(repr=False)


class BestWeights(keras.callbacks.Callback):
    """Remembers the weights of ``model`` at the best validated epoch of one phase.

    It watches the model that ``fit`` runs (the whole model, or the part above a feature cache)
    but snapshots ``model``, the whole model, so that restoring covers every layer.

    Args:
        model: The whole model whose weights to keep.
        phase: Name of the phase being run.
        previous: The best of the earlier phases, which this phase has to beat.
        by_accuracy: Rank epochs by validation accuracy first (single-label heads). Otherwise by
            validation loss alone: a multi-label head's "accuracy" is per label, which rewards
            predicting no tags at all when tags are rare.
        every_epoch: Every epoch is a candidate; otherwise only the phase's last epoch is.
    """

    def __init__(self, model: keras.Model, *, phase: str, previous: Snapshot | None, by_accuracy: bool,
                 every_epoch: bool = False) -> None:
        super().__init__()
        self._every_epoch = every_epoch
        self._last: BestEpoch | None = None
        self._by_accuracy = by_accuracy
        self._target = model
        self._phase = phase
        self._previous = previous
        self._own: Snapshot | None = None
        self._validated = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        # a label-smoothing phase logs its smoothed loss as val_loss; phases compare unsmoothed losses
        loss = logs.get("val_plain_loss", logs.get("val_loss"))
        if loss is None:
            return
        self._validated = True
        accuracy = logs.get("val_accuracy") if self._by_accuracy else None
        if not math.isfinite(loss) or (accuracy is not None and not math.isfinite(accuracy)):
            self._last = None  # a last epoch that diverged is no candidate
            return
        candidate = BestEpoch(self._phase, epoch + 1, float(loss), None if accuracy is None else float(accuracy))
        if not self._every_epoch:
            self._last = candidate  # the snapshot is taken once, when the phase ends
        elif self._own is None or candidate.score > self._own.best.score:
            self._own = Snapshot(candidate, self._target.get_weights())

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if not self._every_epoch and self._last is not None:
            self._own = Snapshot(self._last, self._target.get_weights())

    def restore(self) -> Snapshot | None:
        """Put the best weights so far back into the model and return their snapshot.

        Returns ``None`` (and leaves the last weights) when this phase saw no validation loss.
        """
        own, previous = self._own, self._previous
        if not self._validated:
            return None
        if own is not None and (previous is None or own.best.score > previous.best.score):
            log.info("Phase %s: keeping the weights of %s.", self._phase, own.best.describe())
            self._target.set_weights(own.weights)
            return own
        if previous is None:
            return None  # every validation loss of the only phase was not finite: nothing better to go back to
        tie = own is not None and own.best.score == previous.best.score
        (log.info if tie else log.warning)(
            "Phase %s never beat the best validated epoch of phase %s (its best: %s): keeping the weights of %s.",
            self._phase, previous.best.phase, own.best.describe() if own is not None else "no finite loss",
            previous.best.describe())
        self._target.set_weights(previous.weights)
        return previous
