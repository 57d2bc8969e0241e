"""Keeping the best validated weights across phases (and, if asked, within a phase).

Fine-tuning can make a model worse: the weights a :class:`~transferkit.FineTuner` ends with (and
saves) are the best validated of the candidates seen so far. The candidates are the end of each
phase (``keep_best="phase"``, the default) or every epoch (``keep_best="epoch"``). Picking among
every epoch of a long phase on a small validation split picks noise: on held-out Fashion-MNIST
tasks (50 images per class, 10 of them validation) restoring the best of 30–100 head epochs lost
2–3 points of test accuracy against the phase's last epoch (docs/benchmarks.md). Without
validation data the last weights are kept.

Within a phase (``keep_best="epoch"``), "best" is the highest validation accuracy, ties going to
the lower validation loss, for single-label classifiers; the lowest validation loss for
multi-label and regression heads. Between phase ends of a single-label classifier, with at least
``MIN_IMAGES`` validation images and not all of them right, the phase with the lower
**calibrated** validation loss wins:
the negative log-likelihood after the temperature that suits that phase's outputs best (the one
temperature scaling would fold in). The plain loss picks badly across phases: fine-tuning makes a
classifier more confident, which can raise the loss on a small validation split while accuracy
rises — on three held-out Fashion-MNIST tasks (50 images per class) choosing by it kept the
head-phase weights twice and lost 3–6 points of test accuracy. Scaling each phase's outputs to
their best temperature first takes that over-confidence out of the comparison, and the calibrated
loss uses every image's probability, where accuracy on a split of 27 images moves in steps of
4 %. Where the two disagreed on the benchmarks' tasks, the calibrated loss chose the phase that
scored better on the test images (docs/benchmarks.md, "Which phase to keep").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

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
        calibrated_loss: Its validation loss after temperature scaling, which ranks phase ends
            (``None`` where it was not measured: fewer than 20 validation images, every one of
            them right, not a single-label head, ``keep_best="epoch"``, or a run or checkpoint
            written before phase ends were ranked this way).
    """

    phase: str
    epoch: int
    val_loss: float
    val_accuracy: float | None = None
    calibrated_loss: float | None = None

    @property
    def score(self) -> tuple[float, ...]:
        """What "best" maximises: (accuracy, -loss), or (-loss,) without an accuracy."""
        if self.val_accuracy is None:
            return (-self.val_loss,)
        return (self.val_accuracy, -self.val_loss)

    def beats(self, other: BestEpoch) -> bool:
        """Whether this phase end is better than ``other``, an earlier phase's: by calibrated loss
        where both have one, else by :attr:`score`."""
        if self.calibrated_loss is not None and other.calibrated_loss is not None:
            return self.calibrated_loss < other.calibrated_loss
        return self.score > other.score

    def describe(self) -> str:
        accuracy = f"validation accuracy {self.val_accuracy:.4f}, " if self.val_accuracy is not None else ""
        calibrated = f", calibrated loss {self.calibrated_loss:.4f}" if self.calibrated_loss is not None else ""
        return (f"epoch {self.epoch} ({self.phase.replace('_', ' ')} phase; {accuracy}loss {self.val_loss:.4f}"
                f"{calibrated})")

    def to_dict(self) -> dict[str, str | int | float | None]:
        return {"phase": self.phase, "epoch": self.epoch, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy, "calibrated_loss": self.calibrated_loss}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BestEpoch:
        """Read :meth:`to_dict`'s output; keys it does not know (from a later version) are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Refit:
        return cls(phases=tuple(data["phases"]), epochs=tuple(int(e) for e in data["epochs"]),
                   images=int(data["images"]))


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
        self.guard: DivergenceGuard | None = None

    def state(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        """What a checkpoint needs to carry this keeper on in another process: settings and weights."""
        own = self._own
        return ({"last": self._last.to_dict() if self._last is not None else None, "validated": self._validated,
                 "own": own.best.to_dict() if own is not None else None},
                list(own.weights) if own is not None else [])

    def load_state(self, state: dict[str, Any], weights: list[np.ndarray]) -> None:
        """Take up the state :meth:`state` returned."""
        self._last = BestEpoch.from_dict(state["last"]) if state.get("last") else None
        self._validated = bool(state.get("validated"))
        self._own = Snapshot(BestEpoch.from_dict(state["own"]), list(weights)) if state.get("own") else None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        # a label-smoothing phase logs its smoothed loss as val_loss; phases compare unsmoothed losses
        loss = logs.get("val_plain_loss", logs.get("val_loss"))
        if loss is None:
            return
        self._validated = True
        accuracy = logs.get("val_accuracy") if self._by_accuracy else None
        number = epoch + 1
        if self.guard is not None and self.guard.diverged is not None:
            # the guard put the weights of the last good epoch back: they are what was validated
            if self.guard.good_epoch is None:
                self._last = None  # back at the phase's start: not a result of this phase
                return
            if not math.isfinite(loss):
                return  # the validation loss diverged: the last candidate is the good epoch put back
            number = self.guard.good_epoch
        if not math.isfinite(loss) or (accuracy is not None and not math.isfinite(accuracy)):
            self._last = None  # a last epoch that diverged is no candidate
            return
        candidate = BestEpoch(self._phase, number, float(loss), None if accuracy is None else float(accuracy))
        if not self._every_epoch:
            self._last = candidate  # the snapshot is taken once, when the phase ends
        elif self._own is None or candidate.score > self._own.best.score:
            self._own = Snapshot(candidate, self._target.get_weights())

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if not self._every_epoch and self._last is not None:
            self._own = Snapshot(self._last, self._target.get_weights())

    def rate(self, calibrated_loss: float | None) -> None:
        """Give this phase's candidate its calibrated validation loss (measured on the weights the
        phase ended with, after it), which ranks it against the earlier phases."""
        if self._own is not None and not self._every_epoch:
            self._own = Snapshot(dataclasses.replace(self._own.best, calibrated_loss=calibrated_loss),
                                 self._own.weights)

    def restore(self) -> Snapshot | None:
        """Put the best weights so far back into the model and return their snapshot.

        Returns ``None`` (and leaves the last weights) when this phase saw no validation loss.
        """
        own, previous = self._own, self._previous
        if not self._validated:
            return None
        if own is not None and (previous is None or own.best.beats(previous.best)):
            log.info("Phase %s: keeping the weights of %s.", self._phase, own.best.describe())
            self._target.set_weights(own.weights)
            return own
        if previous is None:
            return None  # every validation loss of the only phase was not finite: nothing better to go back to
        # a phase that validated as well as the earlier one, or better on accuracy alone, is no failure
        close = own is not None and (own.best.score >= previous.best.score)
        (log.info if close else log.warning)(
            "Phase %s never beat the best validated epoch of phase %s (its best: %s): keeping the weights of %s.",
            self._phase, previous.best.phase, own.best.describe() if own is not None else "no finite loss",
            previous.best.describe())
        self._target.set_weights(previous.weights)
        return previous


@dataclass(frozen=True)
class Divergence:
    """Where a phase's training loss stopped being finite."""

    phase: str
    epoch: int
    step: int | None  # None: the training loss was finite, the validation loss of the epoch was not
    loss: float
    good_epoch: int | None

    def where(self) -> str:
        if self.step is None:
            return f"epoch {self.epoch} (validation loss {self.loss})"
        return f"epoch {self.epoch}, step {self.step} (training loss {self.loss})"

    def describe(self) -> str:
        kept = f"the weights of epoch {self.good_epoch}" if self.good_epoch else "the weights it started from"
        return (f"Phase {self.phase} diverged at {self.where()}: stopped it and kept {kept}. A learning rate too "
                "high is the usual cause: try one about 10x lower.")


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a phase at the first non-finite training loss and puts the last good weights back.

    The good weights are those at the end of the last epoch whose training and validation losses
    were finite (or at the phase's start). A batch's loss is measured before its update, so an
    epoch is only trusted once its validation loss (measured after) is finite too; without
    validation data, once its training loss is.
    """

    def __init__(self, phase: str) -> None:
        super().__init__()
        self._phase = phase
        self._good: list[np.ndarray] | None = None
        self._epoch = 0
        self.good_epoch: int | None = None
        self.diverged: Divergence | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._good = self.model.get_weights()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if self.diverged is not None or loss is None or math.isfinite(float(loss)):
            return
        self.diverged = Divergence(self._phase, self._epoch + 1, batch + 1, float(loss), self.good_epoch)
        self.model.stop_training = True
        if self._good is not None:
            self.model.set_weights(self._good)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.diverged is not None:
            return
        validation = (logs or {}).get("val_loss")
        if validation is not None and not math.isfinite(float(validation)):
            self.diverged = Divergence(self._phase, epoch + 1, None, float(validation), self.good_epoch)
            self.model.stop_training = True
            if self._good is not None:
                self.model.set_weights(self._good)
            return
        self._good = self.model.get_weights()
        self.good_epoch = epoch + 1
