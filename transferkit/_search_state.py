"""keras-tuner's search folder: every file written whole, and read back with no trial lost or run twice.

keras-tuner 1.4.8 writes every file of a search folder (``oracle.json``, each
``trial_N/trial.json``, each tuner's ``<tuner id>.json``) through one function,
``keras_tuner.src.utils.save_json``, which opens the final name and writes into it: a process
killed mid-write leaves half a JSON file, and the next run cannot load the folder.
:func:`write_atomically` routes that function through :mod:`transferkit._atomic` (a temporary
name, fsynced, then renamed), after checking that keras-tuner's code is the code this was written
for (a hash of the source of each function relied on), so that a keras-tuner upgrade that changes
it stops with a clear error instead of writing files in place again.

A chief's save is two files, ``trial.json`` and then ``oracle.json``, and keras-tuner's reload
sends every trial that was running back to be run again, so a chief killed and started again would
still lose a trial or run one twice. :func:`recover`, called right after keras-tuner's reload,
puts the folder back in the state of one moment:

- a trial that was running stays its worker's: the worker reports it to the new chief when it ends
  (or, started again with the same ``KERASTUNER_TUNER_ID``, is handed the same trial and runs it
  again), instead of keras-tuner also handing it to the next worker that asks;
- a trial whose ``trial.json`` says it ended while ``oracle.json`` still has it running (killed
  between the two files) is ended as keras-tuner would have ended it;
- a trial whose ``trial.json`` was written but that ``oracle.json`` never recorded (killed while
  creating it, before any worker received it) is forgotten and created again.

Example:
    >>> write_atomically()  # then run keras-tuner; after it reloads a folder:
    >>> recover(tuner.oracle).describe(worker_timeout=120)
    'Resuming the search: trial(s) 3 (tuner1) were running when the last chief stopped: …'
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit._atomic import write_text_atomic
from transferkit._errors import ConfigError

# sha256 (first 16 hex digits) of inspect.getsource of each keras-tuner function relied on, as in keras-tuner 1.4.8:
# save_json is replaced; the others are why it is the only writer, and what recover() repairs after.
KERAS_TUNER_SOURCES = {
    "utils.save_json": "9208e859ea4c8e74",
    "Stateful.save": "8af01aaf7a25efa4",
    "Oracle.save": "f700c9dcd2014bbb",
    "Oracle._save_trial": "073ef15c684890fb",
    "BaseTuner.save": "88add36f0327f3f7",
    "Oracle.reload": "dc44a16a76415806",
    "Oracle.create_trial": "dc06affa91884b7f",
    "Oracle.end_trial": "fec9dadf2f940150",
}
_replaced: Any = None  # keras-tuner's own save_json, once write_atomically replaced it

_ENDED = ("COMPLETED", "FAILED", "INVALID")


def _digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def _undecorated(function: Any, name: str) -> Any:
    """The function ``keras_tuner.synchronized`` wrapped (it keeps no ``__wrapped__``)."""
    for cell in function.__closure__ or ():
        inner = cell.cell_contents
        if inspect.isfunction(inner) and inner.__name__ == name:
            return inner
    raise ConfigError(f"keras-tuner's Oracle.{name} is not the function transferkit was written for. Install "
                      "keras-tuner 1.4.8 (pip install 'keras-tuner==1.4.8').")


def keras_tuner_sources() -> dict[str, str]:
    """The digest of each function of :data:`KERAS_TUNER_SOURCES` in the keras-tuner installed."""
    from keras_tuner.src import utils
    from keras_tuner.src.engine import base_tuner, oracle, stateful

    functions = {
        "utils.save_json": _replaced or utils.save_json,
        "Stateful.save": stateful.Stateful.save,
        "Oracle.save": oracle.Oracle.save,
        "Oracle._save_trial": oracle.Oracle._save_trial,
        "BaseTuner.save": base_tuner.BaseTuner.save,
        "Oracle.reload": oracle.Oracle.reload,
        "Oracle.create_trial": _undecorated(oracle.Oracle.create_trial, "create_trial"),
        "Oracle.end_trial": _undecorated(oracle.Oracle.end_trial, "end_trial"),
    }
    return {name: _digest(function) for name, function in functions.items()}


def check_keras_tuner(expected: dict[str, str] | None = None) -> None:
    """Raise ``ConfigError`` unless keras-tuner's code is the code this module was written for.

    Args:
        expected: The digests to compare with (default: :data:`KERAS_TUNER_SOURCES`).
    """
    expected = KERAS_TUNER_SOURCES if expected is None else expected
    found = keras_tuner_sources()
    changed = sorted(name for name, digest in found.items() if expected.get(name) != digest)
    if changed:
        import keras_tuner

        raise ConfigError(f"transferkit writes keras-tuner's search files atomically and repairs a search folder after "
                          f"a killed chief, for keras-tuner 1.4.8; keras-tuner {keras_tuner.__version__} changed the "
                          f"code this relies on ({', '.join(changed)}). Install keras-tuner 1.4.8 "
                          "(pip install 'keras-tuner==1.4.8'), or a transferkit release made for this keras-tuner.")


def _save_json(path: Any, obj: Any) -> str:
    """keras-tuner's ``utils.save_json``, writing a local file through a temporary name."""
    text = json.dumps(obj)
    if "://" in str(path):  # gs://, hdfs://…: tf.io.gfile's own writer, as keras-tuner does
        from keras_tuner.src import backend

        with backend.io.File(path, "w") as f:
            f.write(text)
        return text
    write_text_atomic(os.fspath(path), text)
    return text


def write_atomically() -> None:
    """Make keras-tuner write every file of a search folder atomically. Idempotent.

    Raises:
        ConfigError: keras-tuner's code is not the code this was written for (:func:`check_keras_tuner`).
    """
    global _replaced
    if _replaced is not None:
        return
    check_keras_tuner()
    from keras_tuner.src import utils

    _replaced, utils.save_json = utils.save_json, _save_json


# --- reading a folder back --------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` found in a search folder that keras-tuner reloaded.

    Attributes:
        running: ``(tuner id, trial id)`` of each trial that was running: kept for that worker.
        ended: Trials that had ended (their ``trial.json`` says so) but were not yet recorded as
            ended in ``oracle.json``: now recorded.
        forgotten: Trials created but never recorded in ``oracle.json``: removed, created again.
    """

    running: tuple[tuple[str, str], ...] = ()
    ended: tuple[str, ...] = ()
    forgotten: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.running or self.ended or self.forgotten)

    def describe(self, *, worker_timeout: float | None) -> str:
        """One line for the user; ``worker_timeout`` is the chief's (``None`` in a single process)."""
        parts = []
        if self.running:
            trials = ", ".join(f"{trial} ({tuner_id})" for tuner_id, trial in self.running)
            if worker_timeout is None:
                parts.append(f"trial(s) {trials} were running when the search stopped: they run again")
            else:
                parts.append(f"trial(s) {trials} were running when the last chief stopped: each stays with its worker, "
                             "which reports it when done (or runs it again if restarted with the same "
                             f"KERASTUNER_TUNER_ID); a worker not heard from within {worker_timeout:g} s has its "
                             "trial failed")
        if self.ended:
            parts.append(f"trial(s) {', '.join(self.ended)} had ended: recorded")
        if self.forgotten:
            parts.append(f"trial(s) {', '.join(self.forgotten)} had been created but not handed out: created again")
        return "Resuming the search: " + "; ".join(parts)


def recover(oracle: Any) -> Recovery:
    """Repair what keras-tuner's reload of ``oracle`` (``Oracle.reload``) leaves wrong after a kill.

    Call right after the reload, with the oracle not yet serving. See the module's docstring for
    the three repairs. Returns what was repaired.
    """
    saved = json.loads(Path(oracle._get_oracle_fname()).read_text(encoding="utf-8"))
    in_flight: dict[str, str] = dict(saved.get("ongoing_trials", {}))
    known = {*oracle.start_order, *oracle.end_order, *oracle._retry_queue, *in_flight.values()}
    forgotten = []
    for trial_id, trial in sorted(oracle.trials.items()):
        if trial_id not in known and trial.status == "RUNNING":
            # created and saved, then killed before oracle.json recorded it: no worker received it
            del oracle.trials[trial_id]
            folder = Path(oracle._project_dir) / f"trial_{trial_id}"
            (folder / "trial.json").unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()
            forgotten.append(trial_id)

    running, ended = [], []
    verbose, oracle.verbose = oracle.verbose, 0  # replaying an end prints nothing
    try:
        for tuner_id, trial_id in in_flight.items():
            if trial_id in oracle._retry_queue:  # keras-tuner's reload queued it to run again
                oracle._retry_queue.remove(trial_id)
            trial = oracle.trials[trial_id]
            if trial.status in _ENDED:
                # keras-tuner's end_trial saves oracle.json before it drops the trial from the running ones,
                # so an ended trial can be listed there: ended, unless oracle.json never recorded its end
                if trial_id not in oracle.end_order and trial_id not in oracle._retry_queue:
                    oracle.ongoing_trials[tuner_id] = trial  # as end_trial left it: trial.json written, oracle.json not
                    oracle.end_trial(trial)
                    ended.append(trial_id)
            else:
                oracle.ongoing_trials[tuner_id] = trial
                # keras-tuner notes a trial's start for its display after saving oracle.json: its end needs it
                oracle._display.trial_start.setdefault(trial_id, datetime.datetime.now())
                oracle._display.trial_number.setdefault(trial_id, len(oracle.trials))
                oracle.tuner_ids.add(tuner_id)
                running.append((tuner_id, trial_id))
    finally:
        oracle.verbose = verbose
    if running or ended or forgotten:
        oracle.save()
    return Recovery(tuple(running), tuple(ended), tuple(forgotten))


def already_ended(oracle: Any, trial_id: str, status: str) -> bool:
    """Whether a worker's report that ``trial_id`` ended with ``status`` repeats one the oracle has.

    A worker repeats its report when the chief died before answering it, and the chief that
    answers has already recorded it (from the folder). A report that changes the outcome (a
    trial the watchdog failed, reported completed by a worker that was only slow) is not a repeat.
    """
    trial = oracle.trials.get(trial_id)
    if trial is None or any(t.trial_id == trial_id for t in oracle.ongoing_trials.values()):
        return False
    return bool(trial.status == "COMPLETED" or trial.status == status or trial_id in oracle._retry_queue)


def search_is_over(oracle: Any) -> bool:
    """Whether a reloaded search with a trial budget has no trial left to hand out or wait for."""
    return bool(oracle.max_trials and len(oracle.trials) >= oracle.max_trials and not oracle.ongoing_trials
                and not oracle._retry_queue)
