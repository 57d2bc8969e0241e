"""Hyperparameter search with keras-tuner over the head and, optionally, the fine-tune depth.

Every trial is a :class:`~transferkit.FineTuner` run, so a trial trains exactly what
``transferkit train`` would. The trials share one :class:`~transferkit.FeatureCache`:
head-only trials extract the backbone's features once for the whole search and then train only
the head. Two-phase trials fine-tune the top blocks too; keras-tuner cannot compile and fit one
trial's model twice on its own (keras-tuner#629), hence the custom ``run_trial``.

The same :func:`search` runs as keras-tuner's distributed search when its environment variables
are set (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``): the chief
serves the oracle and runs no trial; each worker asks it for trials. What the chief and the workers
add to keras-tuner (serving the oracle, giving up on silent workers, heartbeats, deadlines, a chief
started again) is in :mod:`transferkit._distributed_search`; keras-tuner's files are written whole and
read back after a kill by :mod:`transferkit._search_state`. Workers extract the head features into a shared disk cache
once, under a lock, before their first trial.

Example:
    >>> result = search(data, "mobilenet", weights="imagenet", max_trials=20, directory="search/")
    >>> result.best_values
    {'units': 256, 'dropout': 0.3, 'learning_rate': 0.002}
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from transferkit._atomic import atomic_path, waiting_lock, write_text_atomic
from transferkit._distributed_search import (
    WORKER_TIMEOUT,
    ChiefLink,
    Distributed,
    SearchError,
    deadline_stub,
    require_keras_tuner,
    run_chief,
    run_worker,
    worker_heartbeat,
)
from transferkit._errors import ConfigError, TrainingDivergedError, check_choice
from transferkit._features import FeatureCache
from transferkit._finetuner import FineTuner
from transferkit._freezing import UnfreezeTop
from transferkit._heads import Head
from transferkit._model import backbone_of
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE
from transferkit._search_state import Recovery, recover, write_atomically
from transferkit._types import PathLike, Weights
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.data._loaders import ImageData

if TYPE_CHECKING:
    import keras_tuner

log = logging.getLogger("transferkit")
TUNERS = ("random", "bayesian", "hyperband")
MAX_TRIALS = 20
EPOCHS = 10
FINE_TUNE_EPOCHS = 3
TRIAL_FILE = "transferkit_trial.json"  # in each trial's folder: its seconds and the process that ran it
_LEGACY_TIMES = "trial_seconds.json"  # one file per project before searches ran in several processes


def search_space(*, fine_tune: bool = False) -> keras_tuner.HyperParameters:
    """The hyperparameters searched: head size, dropout, learning rate (and fine-tune depth and rate)."""
    kt = require_keras_tuner()
    hp = kt.HyperParameters()
    hp.Choice("units", [0, 64, 128, 256, 512])
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    if fine_tune:
        hp.Int("fine_tune_blocks", 1, 4)
        hp.Float("fine_tune_learning_rate", 1e-5, 1e-3, sampling="log")
    return hp


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """What every trial of one search shares: the backbone, its weights, the epochs and the seed."""

    backbone: BackboneSpec
    weights: Weights
    epochs: int
    fine_tune_epochs: int
    seed: int

    def tuner(self, values: dict[str, Any], *, cache: FeatureCache | bool, refit: bool | str = False,
              network: keras.Model | None = None) -> FineTuner:
        """The FineTuner a trial with these hyperparameter ``values`` trains.

        Trials never refit (``refit=False``): a trial is scored on its validation split. A trial
        that trains only the head puts it on ``network`` (a frozen backbone an earlier trial
        built), where one is given.
        """
        units = int(values.get("units", 0))
        head = Head(hidden_units=(units,) if units else (), dropout=float(values.get("dropout", 0.2)))
        # a trial trains the head whose learning rate, epochs and dropout it searches: never solved
        head_phase = dataclasses.replace(HEAD_PHASE, epochs=int(values.get("tuner/epochs", self.epochs)),
                                         learning_rate=float(values.get("learning_rate", HEAD_PHASE.learning_rate)),
                                         solve=False)
        fine = None
        if "fine_tune_blocks" in values and self.fine_tune_epochs:
            fine = dataclasses.replace(FINE_TUNE_PHASE, epochs=self.fine_tune_epochs,
                                       policy=UnfreezeTop(int(values["fine_tune_blocks"])),
                                       learning_rate=float(values["fine_tune_learning_rate"]))
        return FineTuner(self.backbone, weights=self.weights, head=head, head_phase=head_phase, fine_tune_phase=fine,
                         seed=self.seed, cache=cache, refit=refit, network=network if fine is None else None)


@dataclass(frozen=True)
class SharedFeatures:
    """What one process did about the head features of a search on a disk cache.

    Attributes:
        directory: The cache folder.
        extracted: ``(name, images)`` of each array this process extracted.
        loaded: ``(name, images)`` of each array it found there (extracted by another process, or an
            earlier run).
        waited: Seconds spent waiting for another process that was extracting them.
    """

    directory: Path
    extracted: tuple[tuple[str, int], ...]
    loaded: tuple[tuple[str, int], ...]
    waited: float

    def describe(self) -> str:
        def arrays(found: tuple[tuple[str, int], ...]) -> str:
            return " + ".join(f"{count} {name}" for name, count in found) + " images"

        if self.extracted:
            text = f"extracted the features of {arrays(self.extracted)} into {self.directory}"
            return text + (f" (loaded {arrays(self.loaded)})" if self.loaded else "")
        waited = f" after waiting {self.waited:.1f} s for the process extracting them" if self.waited >= 0.5 else ""
        return f"loaded the features of {arrays(self.loaded)} from {self.directory}{waited}, no extraction"


def share_head_features(settings: TrialSettings, data: ImageData, cache: FeatureCache) -> SharedFeatures | None:
    """Make sure the head features every trial trains on are in ``cache``'s folder: extract them
    unless there, holding a lock so that processes starting together extract them once.

    The first process to take the lock (``<training key>.lock`` in the cache folder) extracts the
    training and validation features; the others wait for it and then load them. ``None`` where
    there is nothing to share: an in-memory cache, images not from files, or augmented data (the
    head then trains on new images every epoch).
    """
    from transferkit._cache_plan import head_feature_sets

    if cache.directory is None or data.train_files is None:
        return None
    found = head_feature_sets(settings.backbone, weights=settings.weights, data=data, policy=HEAD_PHASE.policy,
                              refit=False)
    if found is None:
        return None
    extractor, sets = found
    cache.directory.mkdir(parents=True, exist_ok=True)
    extracted: list[tuple[str, int]] = []
    loaded: list[tuple[str, int]] = []
    with waiting_lock(cache.directory / f"{sets[0].key}.lock") as waited:
        for features in sets:
            stored = cache.compute(features.key, extractor, features.batches(), features.count)
            (loaded if stored.hit else extracted).append((features.name, features.count))
    return SharedFeatures(cache.directory, tuple(extracted), tuple(loaded), waited)


def trial_score(tuner: FineTuner, data: ImageData) -> float:
    """A trained trial's validation accuracy: from the evaluation its fit made on the cached
    validation features when there is one (calibration does not change the top class), else by
    running the model over the validation images."""
    run = tuner.result
    if run.held_out is not None and run.held_out.evaluation is not None and run.refit is None:
        return float(run.held_out.evaluation.accuracy)
    return float(tuner.evaluate(data).accuracy)


# --- keras-tuner's tuner classes ---------------------------------------------------------------------


def _tuner_class(kind: str) -> type:
    kt = require_keras_tuner()
    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband}[kind]

    class TransferTuner(base):  # type: ignore[misc, valid-type]
        """Runs each trial as a FineTuner (one or two phases) on shared cached features."""

        def __init__(self, *, data: ImageData, settings: TrialSettings, cache: FeatureCache,
                     distributed: Distributed | None, worker_timeout: float, **kwargs: Any) -> None:
            self.recovery = Recovery()  # what reload() repaired in a folder it read back
            super().__init__(**kwargs)
            self._data, self._settings, self._cache = data, settings, cache
            self._distributed, self._worker_timeout = distributed, worker_timeout
            self._network: keras.Model | None = None  # the frozen backbone head-only trials share
            self.ran: list[dict[str, Any]] = []  # the trials this process ran
            if distributed is not None and not distributed.chief:
                # keras-tuner's client waits an hour for a chief that is not there (keras-tuner#990)
                link = ChiefLink(distributed.tuner_id, distributed.address, worker_timeout)
                self.oracle.stub = deadline_stub(distributed.address, worker_timeout, link)

        def reload(self) -> None:
            super().reload()  # keras-tuner calls it when the folder holds this tuner's saved state
            if not self._is_worker():  # the oracle is the chief's (or a single process's)
                self.recovery = recover(self.oracle)

        def search(self, *fit_args: object, **fit_kwargs: object) -> None:
            if self._distributed is None or not self._distributed.chief:
                super().search(*fit_args, **fit_kwargs)
                return
            run_chief(self, self._distributed, self._worker_timeout, verbose=fit_kwargs.get("verbose", 1),
                      recovery=self.recovery)

        def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: object, **kwargs: object
                      ) -> dict[str, float]:
            start = time.perf_counter()
            with worker_heartbeat(self.oracle, trial.trial_id, self._distributed, self._worker_timeout):
                score = self._train(trial.hyperparameters.values)
            seconds = time.perf_counter() - start
            record = {"seconds": seconds, "tuner_id": self.tuner_id, "pid": os.getpid(), "host": socket.gethostname()}
            write_text_atomic(Path(self.get_trial_dir(trial.trial_id)) / TRIAL_FILE, json.dumps(record))
            values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
            self.ran.append({"trial": trial.trial_id, **values, "score": score, "seconds": seconds})
            return {"val_accuracy": score}

        def _train(self, values: dict[str, Any]) -> float:
            # a head-only trial's backbone stays frozen: it is built once for the whole search
            tuner = self._settings.tuner(values, cache=self._cache, network=self._network)
            head_only = tuner.settings.fine_tune_phase is None
            try:
                tuner.fit(self._data, verbose=0)
                score = trial_score(tuner, self._data)
            except TrainingDivergedError:  # too high a learning rate: a bad trial, not a failed search
                score = 0.0
            if head_only and self._network is None and tuner.model is not None:
                self._network = backbone_of(tuner.model)
            if not head_only:
                keras.backend.clear_session()  # each trial builds a new model: free the last one
            return score

    return TransferTuner


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        rows: One dict per finished trial: ``trial``, the hyperparameter values, ``score``, ``seconds``
            (and ``worker``, the tuner id that ran it, in a distributed search's chief). In a worker:
            the trials this process ran.
        best_values: Hyperparameter values of the best trial (in a worker: of its own trials; ``{}``
            when it ran none).
        best_score: Its validation accuracy (``nan`` in a worker that ran no trial).
        directory: keras-tuner's project folder (run the search again on it to resume).
        settings: What every trial shared (backbone, weights, epochs, seed).
        role: ``"single"`` (one process), or ``"chief"`` or ``"worker"`` in keras-tuner's distributed search.
        tuner_id: keras-tuner's id of this process (``None`` in a single process).
        features: What this process did about the shared head features (a worker, or a search on a
            disk cache); ``None`` otherwise.
    """

    rows: list[dict[str, Any]]
    best_values: dict[str, Any]
    best_score: float
    directory: Path
    settings: TrialSettings
    role: str = "single"
    tuner_id: str | None = None
    features: SharedFeatures | None = None

    def best_tuner(self, *, cache: FeatureCache | bool = True) -> FineTuner:
        """A new, untrained FineTuner with the best trial's configuration (call ``fit`` on it).

        Unlike the trials, it refits on all images where ``FineTuner``'s default ``refit="auto"`` does.
        """
        return self.settings.tuner(self.best_values, cache=cache, refit="auto")

    def write_csv(self, path: PathLike) -> Path:
        out = Path(path)
        columns = sorted({k for row in self.rows for k in row}, key=lambda c: (c != "trial", c))
        with atomic_path(out) as temporary, open(temporary, "x", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return out

    def table(self) -> str:
        names = [k for k in self.best_values if not k.startswith("tuner/")]
        header = ["trial", *names, "score", "seconds"]
        lines = ["  ".join(f"{h:>12}" for h in header)]
        for row in self.rows:
            cells = [row["trial"], *(row.get(n, "") for n in names), f"{row['score']:.4f}", f"{row['seconds']:.1f}"]
            lines.append("  ".join(f"{c if not isinstance(c, float) else f'{c:.4g}':>12}" for c in cells))
        return "\n".join(lines)


def _trial_order(trial_id: str) -> int:
    return int(trial_id) if trial_id.isdigit() else 0


def _all_trials(oracle: Any, project: Path, *, distributed: bool) -> list[dict[str, Any]]:
    """A row per completed trial of the oracle (the chief's or a single process's), with the seconds
    from the file the process that ran it wrote into the trial's folder."""
    legacy_file = project / _LEGACY_TIMES
    legacy = json.loads(legacy_file.read_text()) if legacy_file.is_file() else {}
    rows = []
    for trial in sorted(oracle.trials.values(), key=lambda t: _trial_order(t.trial_id)):
        if trial.status != "COMPLETED" or trial.score is None:
            continue
        try:
            record = json.loads((project / f"trial_{trial.trial_id}" / TRIAL_FILE).read_text())
        except (OSError, ValueError):
            record = {"seconds": legacy.get(trial.trial_id, math.nan)}
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        row = {"trial": trial.trial_id, **values, "score": float(trial.score),
               "seconds": float(record.get("seconds", math.nan))}
        if distributed:
            row["worker"] = str(record.get("tuner_id", "?"))
        rows.append(row)
    return rows


def search(
    data: ImageData,
    backbone: str | BackboneSpec,
    *,
    weights: Weights,
    max_trials: int = MAX_TRIALS,
    tuner: str = "random",
    epochs: int = EPOCHS,
    fine_tune: bool = False,
    fine_tune_epochs: int = FINE_TUNE_EPOCHS,
    directory: PathLike = "transferkit-search",
    overwrite: bool = False,
    seed: int = 0,
    cache: FeatureCache | None = None,
    worker_timeout: float = WORKER_TIMEOUT,
) -> SearchResult:
    """Search the head (and optionally the fine-tune depth and rate) with keras-tuner.

    With keras-tuner's environment variables set (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
    ``KERASTUNER_ORACLE_PORT``), this runs as one process of its distributed search, every process
    with the same arguments and a ``directory`` on a file system they share: the chief serves the
    oracle and returns the whole search when it is done; a worker runs trials until the oracle has
    none left and returns its own. Give the workers a ``cache`` with a shared folder: the first one
    extracts the head features there, the others wait for it and load them.

    Args:
        data: Training and validation data (the validation accuracy is the score).
        backbone: Registry name, Hub handle or spec, as for :class:`FineTuner`.
        weights: As for :class:`FineTuner`.
        max_trials: Trials to run (for ``"hyperband"``: the budget is set by ``epochs``).
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        epochs: Head-training epochs per trial (Hyperband's maximum).
        fine_tune: Also search ``fine_tune_blocks`` and ``fine_tune_learning_rate``
            (two-phase trials; slower, since fine-tuning cannot run on the final features).
        directory: keras-tuner's folder. With ``overwrite=False`` an interrupted search resumes: a
            trial running when it stopped runs again (or, in a distributed search, stays with its
            worker), and no trial is lost or run twice.
        cache: Share a feature cache (a new in-memory one by default).
        worker_timeout: Distributed search: the chief fails the trial of a worker it has not heard from
            for this many seconds (workers send a heartbeat during trials) and forgets the worker; a
            worker gives up on a chief that does not answer for this long.

    Raises:
        SearchError: No trial completed; or, in a worker, the chief did not answer.
    """
    kt = require_keras_tuner()
    check_choice("tuner", tuner, TUNERS)
    if not worker_timeout > 0:
        raise ConfigError(f"Expected worker_timeout to be a number of seconds above 0. Received: "
                          f"worker_timeout={worker_timeout!r}.")
    distributed = Distributed.from_environment()
    if distributed is not None and overwrite:
        raise ConfigError("overwrite=True deletes the search folder that the other processes of a distributed "
                          "search are using. Start a distributed search in a new directory instead.")
    spec = get_backbone(backbone)
    write_atomically()  # every file keras-tuner writes in the search folder: whole or not at all
    cls = _tuner_class(tuner)
    budget: dict[str, Any] = ({"max_epochs": epochs, "hyperband_iterations": 1} if tuner == "hyperband" else
                              {"max_trials": max_trials})
    if distributed is not None:  # the chief counts failures itself: see give_up_on_silent_workers
        budget["max_consecutive_failed_trials"] = None
    settings = TrialSettings(backbone=spec, weights=weights, epochs=epochs,
                             fine_tune_epochs=fine_tune_epochs if fine_tune else 0, seed=seed)
    cache = cache or FeatureCache()
    features = None
    if distributed is None or not distributed.chief:  # the chief needs no features to serve the oracle
        features = share_head_features(settings, data, cache)
    runner = cls(
        data=data, settings=settings, cache=cache, distributed=distributed, worker_timeout=worker_timeout,
        hyperparameters=search_space(fine_tune=fine_tune), objective=kt.Objective("val_accuracy", "max"),
        directory=str(directory), project_name=spec.name.replace(":", "_").replace("/", "_"),
        overwrite=overwrite, seed=seed, **budget,
    )
    project = Path(runner.project_dir)
    if distributed is not None and not distributed.chief:
        run_worker(runner, distributed, worker_timeout)
        return _worker_result(runner.ran, project, settings, distributed, features)
    if distributed is None and runner.recovery:
        log.warning("%s", runner.recovery.describe(worker_timeout=None))
    runner.search(verbose=0)
    rows = _all_trials(runner.oracle, project, distributed=distributed is not None)
    if not rows:
        failed = [t for t in runner.oracle.trials.values() if t.message]
        reason = f" The last error: {failed[-1].message.strip().splitlines()[-1]}" if failed else ""
        raise SearchError(f"No trial of the search in {project} completed.{reason}")
    best = runner.oracle.get_best_trials(1)[0]
    return SearchResult(rows=rows, best_values=dict(best.hyperparameters.values), best_score=float(best.score),
                        directory=project, settings=settings, role="single" if distributed is None else "chief",
                        tuner_id=None if distributed is None else distributed.tuner_id, features=features)


def _worker_result(rows: list[dict[str, Any]], project: Path, settings: TrialSettings, distributed: Distributed,
                   features: SharedFeatures | None) -> SearchResult:
    """A worker's result: the trials it ran (``rows``), the best of them its best."""
    best = max(rows, key=lambda row: row["score"], default=None)
    values = {k: v for k, v in best.items() if k not in ("trial", "score", "seconds")} if best else {}
    return SearchResult(rows=rows, best_values=values, best_score=best["score"] if best else math.nan,
                        directory=project, settings=settings, role="worker", tuner_id=distributed.tuner_id,
                        features=features)
