"""Keeping the best validated weights, within a phase and across phases.

The last epoch of a phase is rarely its best, and fine-tuning can make a model worse: the weights a
:class:`~transferkit.FineTuner` ends with (and saves) are those of the epoch with the lowest
validation loss over all phases run so far. Without validation data the last weights are kept.
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
    """

    phase: str
    epoch: int
    val_loss: float

    def to_dict(self) -> dict[str, str | int | float]:
        return {"phase": self.phase, "epoch": self.epoch, "val_loss": self.val_loss}


@dataclass
class Snapshot:
    """The best epoch so far and the whole model's weights at its end."""

    best: BestEpoch
    weights: list[np.ndarray] = field(repr=False)


class BestWeights(keras.callbacks.Callback):
    """Remembers the weights of ``model`` at the epoch with the lowest ``val_loss``.

    It watches the model that ``fit`` runs (the whole model, or the part above a feature cache)
    but snapshots ``model``, the whole model, so that restoring covers every layer.

    Args:
        model: The whole model whose weights to keep.
        phase: Name of the phase being run.
        previous: The best of the earlier phases, which this phase has to beat.
    """

    def __init__(self, model: keras.Model, *, phase: str, previous: Snapshot | None) -> None:
        super().__init__()
        self._target = model
        self._phase = phase
        self._previous = previous
        self._own: Snapshot | None = None
        self._validated = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is None:
            return
        self._validated = True
        if math.isfinite(loss) and (self._own is None or loss < self._own.best.val_loss):
            self._own = Snapshot(BestEpoch(self._phase, epoch + 1, float(loss)), self._target.get_weights())

    def restore(self) -> Snapshot | None:
        """Put the best weights so far back into the model and return their snapshot.

        Returns ``None`` (and leaves the last weights) when this phase saw no validation loss.
        """
        own, previous = self._own, self._previous
        if not self._validated:
            return None
        if own is not None and (previous is None or own.best.val_loss < previous.best.val_loss):
            log.info("Phase %s: keeping the weights of epoch %d (validation loss %.4f).", self._phase,
                     own.best.epoch, own.best.val_loss)
            self._target.set_weights(own.weights)
            return own
        if previous is None:
            return None  # every validation loss of the only phase was not finite: nothing better to go back to
        phase_best = f"{own.best.val_loss:.4f}" if own is not None else "not finite"
        log.warning("Phase %s never beat the best validation loss of phase %s (%s against %.4f): keeping the "
                    "weights of epoch %d.", self._phase, previous.best.phase, phase_best, previous.best.val_loss,
                    previous.best.epoch)
        self._target.set_weights(previous.weights)
        return previous
