"""Checkpoints that let a killed :meth:`FineTuner.fit` carry on where it stopped.

A fit runs a fixed sequence of *stages*: the head phase, the fine-tune phase (one stage per
gradual-unfreezing step) and, when it refits, the same again on all images. The checkpoint
folder records, atomically and in this order:

* after every epoch of the stage running: the variables of what the stage fits (the head, the
  part above a feature cache, or the whole model — random-number states included), the
  optimizer's variables (its step count, so the learning-rate schedule carries on where it was),
  the history so far and the best-epoch keeper's state — ``stage-<i>-epoch.npz`` and
  ``state.json``;
* at the end of a stage: every variable of the model, the history and the best epoch kept —
  ``stage-<i>-done.npz``.

A fit given the same folder (and the same settings and data: ``state.json`` holds a fingerprint
of both) restores the stages that finished, resumes the one that was running at the epoch after
the last one recorded, and runs the rest. The training pipeline is moved on by the epochs
already run so the resumed epochs see the same shuffled order as an uninterrupted run.

Files are written under a temporary name and renamed, ``state.json`` last, so a kill at any
moment leaves the previous complete checkpoint.

In a multi-worker cluster only the chief's checkpoint counts: :func:`pack` puts its files (not the
feature cache, which every task extracts itself) into bytes that the chief broadcasts when a run
starts, and :func:`unpack` writes them into another task's folder, so that every task resumes from
the same epoch with the same variables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit._atomic import atomic_path, write_text_atomic
from transferkit._errors import ConfigError, DataError

log = logging.getLogger("transferkit")

STATE_FILE = "state.json"
FORMAT = 1


def _save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, *arrays)


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


def assign(variables: Sequence[keras.Variable], values: Sequence[np.ndarray], *, what: str, where: Path) -> None:
    """Assign ``values`` to ``variables`` in order, checking that they belong together."""
    if len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        raise DataError(f"The checkpoint {str(where)!r} does not fit this model's {what} ({len(values)} arrays "
                        f"stored, {len(variables)} variables). Start over with --restart (fit(..., restart=True)).")
    for variable, value in zip(variables, values):
        variable.assign(value)


@dataclass
class StageResume:
    """What the checkpoint holds of one stage.

    Attributes:
        index: The stage's place in the fit (0 = the first head phase).
        name: The phase it belongs to (``"head"``, ``"fine_tune"``).
        done: The stage finished; ``history`` and ``best`` are its final ones.
        epochs: Epochs of the stage completed.
        history: ``FineTuner.history`` as it was at that point.
        best: The best epoch kept (``BestEpoch.to_dict()``) when the stage finished.
        keeper: The best-epoch keeper's state during the stage.
        solved: ``HeadSolution.summary()`` of a stage whose head was solved.
    """

    index: int
    name: str
    done: bool
    epochs: int
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    keeper: dict[str, Any] = field(default_factory=dict)
    refit: bool = False
    solved: dict[str, Any] | None = None


class Checkpoint:
    """The checkpoint folder of one :meth:`FineTuner.fit`.

    Args:
        directory: The folder (created if needed).
        fingerprint: JSON-able description of the settings and data; a checkpoint written with
            another fingerprint is refused (start over with ``restart=True``).
        restart: Forget what the folder holds and start over.
    """

    def __init__(self, directory: Path, fingerprint: dict[str, Any], *, restart: bool = False) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        state_file = directory / STATE_FILE
        if restart:
            self.clear()
        self._stages: list[StageResume] = []
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{str(state_file)!r} cannot be read ({error}). Start over with --restart "
                                "(fit(..., restart=True)).") from None
            stored = state.get("fingerprint", {})
            if stored != fingerprint:
                changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
                raise ConfigError(
                    f"{str(directory)!r} holds the checkpoint of a run with other settings or data (different: "
                    f"{', '.join(changed)}). Run the same command as before to resume it, or start over with "
                    "--restart (fit(..., restart=True)).")
            try:
                self._stages = [StageResume(**stage) for stage in state.get("stages", [])]
            except TypeError:
                raise DataError(f"{str(state_file)!r} was written by another version of transferkit. Start over "
                                "with --restart (fit(..., restart=True)).") from None
        self.fingerprint = fingerprint
        self._next = 0

    def clear(self) -> None:
        """Remove the checkpoint's files (the feature cache in ``features/`` stays: its keys say what it holds).

        ``state.json`` goes first: a kill halfway leaves no state pointing at removed files.
        """
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        for path in self.directory.glob("stage-*.npz"):
            path.unlink()

    @staticmethod
    def peek(state_file: Path) -> str | None:
        """``"fine_tune epoch 3"``: the last epoch ``state_file`` records, or ``None``."""
        try:
            stages = json.loads(state_file.read_text()).get("stages", [])
        except (OSError, ValueError):
            return None
        if not stages:
            return None
        last = StageResume(**stages[-1])
        where = f"{last.name} epoch {last.epochs}" + (" (finished)" if last.done else "")
        return where + (" of the refit on all images" if last.refit else "")

    # ------------------------------------------------------------------ stages

    def next_stage(self, name: str, *, refit: bool) -> StageResume | None:
        """Start the next stage of the fit: what the checkpoint holds of it, or ``None``."""
        index = self._next
        self._next += 1
        if index >= len(self._stages):
            return None
        stage = self._stages[index]
        if stage.name != name or stage.refit != refit:
            raise DataError(f"The checkpoint in {str(self.directory)!r} recorded stage {index} as {stage.name!r}, "
                            f"but this fit runs {name!r} there. Start over with --restart (fit(..., restart=True)).")
        return stage

    @property
    def current(self) -> int:
        return self._next - 1

    def _path(self, index: int, kind: str) -> Path:
        return self.directory / f"stage-{index}-{kind}.npz"

    def record_epoch(self, stage: StageResume, arrays: Sequence[np.ndarray]) -> None:
        """Record a completed epoch of the running stage."""
        _save_arrays(self._path(stage.index, "epoch"), arrays)
        self._put(stage)

    def record_done(self, stage: StageResume, variables: Sequence[np.ndarray]) -> None:
        """Record a finished stage: every variable of the model."""
        _save_arrays(self._path(stage.index, "done"), variables)
        self._put(stage)
        self._path(stage.index, "epoch").unlink(missing_ok=True)

    def arrays(self, stage: StageResume) -> list[np.ndarray]:
        path = self._path(stage.index, "done" if stage.done else "epoch")
        try:
            return _load_arrays(path)
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"The checkpoint file {str(path)!r} cannot be read ({error}). Start over with --restart "
                            "(fit(..., restart=True)).") from None

    def _put(self, stage: StageResume) -> None:
        del self._stages[stage.index:]
        self._stages.append(stage)
        state = {"format": FORMAT, "fingerprint": self.fingerprint,
                 "stages": [vars(s) for s in self._stages]}
        write_text_atomic(self.directory / STATE_FILE, json.dumps(state, indent=1))


def pack(header: dict[str, Any], directory: Path | None = None) -> bytes:
    """``header`` (JSON-able) and the checkpoint files in ``directory`` (if any) as one byte string."""
    paths: list[Path] = []
    if directory is not None and (directory / STATE_FILE).is_file():
        # state.json last: unpacked last, as it is written last
        paths = [*sorted(directory.glob("stage-*.npz")), directory / STATE_FILE]
    contents = [path.read_bytes() for path in paths]
    index = {"header": header, "files": [[path.name, len(data)] for path, data in zip(paths, contents)]}
    return json.dumps(index).encode() + b"\n" + b"".join(contents)


def unpack(payload: bytes, directory: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Write the checkpoint files :func:`pack` put in ``payload`` into ``directory`` (replacing what it
    held) and return the header.

    ``state.json`` is stamped with ``fingerprint``, this task's own: the task that packed them
    checked them against its settings and data, and this task's copy of the data may sit at another
    path or carry other modification times.
    """
    first, rest = payload.split(b"\n", 1)
    index = json.loads(first)
    if index["files"]:
        directory.mkdir(parents=True, exist_ok=True)
        Checkpoint(directory, fingerprint, restart=True)  # clears it
    offset = 0
    for name, size in index["files"]:
        data, offset = rest[offset:offset + size], offset + size
        if name == STATE_FILE:
            state = json.loads(data)
            write_text_atomic(directory / name, json.dumps({**state, "fingerprint": fingerprint}, indent=1))
        else:
            with atomic_path(directory / name) as temporary:
                temporary.write_bytes(data)
    return dict(index["header"])


class EpochRecorder(keras.callbacks.Callback):
    """Records each completed epoch of a stage into the checkpoint (runs after the keeper)."""

    def __init__(self, checkpoint: Checkpoint, stage: StageResume, trained: keras.Model, keeper: Any, guard: Any,
                 base_history: dict[str, list[float]], other_history: dict[str, dict[str, list[float]]]) -> None:
        super().__init__()
        self._checkpoint, self._stage, self._trained, self._keeper = checkpoint, stage, trained, keeper
        self._guard = guard
        self._history = {k: list(v) for k, v in base_history.items()}
        self._other = other_history

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._guard is not None and self._guard.diverged is not None:
            return  # only good epochs are resumed from (the guard put the last good weights back)
        for key, value in (logs or {}).items():
            self._history.setdefault(key, []).append(float(value))
        optimizer = self._trained.optimizer
        keeper_state, keeper_weights = self._keeper.state() if self._keeper is not None else ({}, [])
        trained = [keras.ops.convert_to_numpy(v) for v in self._trained.variables]
        slots = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
        self._stage.epochs += 1
        self._stage.history = {**self._other, self._stage.name: self._history}
        self._stage.keeper = {**keeper_state, "sizes": [len(trained), len(slots), len(keeper_weights)]}
        self._checkpoint.record_epoch(self._stage, [*trained, *slots, *keeper_weights])


def restore_epoch(checkpoint: Checkpoint, stage: StageResume, trained: keras.Model, keeper: Any) -> None:
    """Put the variables, optimizer state and keeper state recorded after ``stage``'s last epoch back."""
    arrays = checkpoint.arrays(stage)
    n_trained, n_slots, n_keeper = stage.keeper["sizes"]
    assign(trained.variables, arrays[:n_trained], what="variables", where=checkpoint.directory)
    optimizer = trained.optimizer
    if not optimizer.built:
        optimizer.build(trained.trainable_variables)
    assign(optimizer.variables, arrays[n_trained:n_trained + n_slots], what="optimizer",
           where=checkpoint.directory)
    if keeper is not None:
        keeper.load_state(stage.keeper, arrays[n_trained + n_slots:n_trained + n_slots + n_keeper])


def skip_epochs(dataset: tf.data.Dataset, epochs: int) -> None:
    """Move a reshuffling pipeline on by ``epochs`` epochs of ``Model.fit``.

    Each iterator of a pipeline that reshuffles every iteration gets the next order of its seed.
    ``Model.fit`` (Keras 3) opens two iterators per epoch over a dataset of known length (one at
    the start, one prepared at the end); over a dataset of unknown length one in the first epoch
    (which finds the length) and two in each later one. Opening the same number here makes the
    resumed epochs see the orders an uninterrupted run would, when this stage was the first to
    iterate the pipeline (see docs/reliability.md).
    """
    if epochs <= 0:
        return
    opened = 2 * epochs if int(dataset.cardinality()) >= 0 else 2 * epochs - 1
    for _ in range(opened):
        iter(dataset)
