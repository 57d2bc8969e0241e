"""Hyperparameter search with keras-tuner over the head and, optionally, the fine-tune depth.

Every trial is a :class:`~transferkit.FineTuner` run, so a trial trains exactly what
``transferkit train`` would. The trials share one :class:`~transferkit.FeatureCache`:
head-only trials extract the backbone's features once for the whole search and then train only
the head. Two-phase trials fine-tune the top blocks too; keras-tuner cannot compile and fit one
trial's model twice on its own (keras-tuner#629), hence the custom ``run_trial``.

Example:
    >>> result = search(data, "mobilenet", weights="imagenet", max_trials=20, directory="search/")
    >>> result.best_values
    {'units': 256, 'dropout': 0.3, 'learning_rate': 0.002}
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from transferkit._atomic import atomic_path, write_text_atomic
from transferkit._errors import MissingDependencyError, TrainingDivergedError, check_choice
from transferkit._features import FeatureCache
from transferkit._finetuner import FineTuner
from transferkit._freezing import UnfreezeTop
from transferkit._heads import Head
from transferkit._model import backbone_of
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE
from transferkit._types import PathLike, Weights
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.data._loaders import ImageData

if TYPE_CHECKING:
    import keras_tuner

TUNERS = ("random", "bayesian", "hyperband")
MAX_TRIALS = 20
EPOCHS = 10
FINE_TUNE_EPOCHS = 3


def _keras_tuner() -> Any:
    try:
        import keras_tuner
    except ImportError:
        raise MissingDependencyError("Search needs keras-tuner. Fix: pip install keras-tuner tensorboard") from None
    return keras_tuner


def search_space(*, fine_tune: bool = False) -> keras_tuner.HyperParameters:
    """The hyperparameters searched: head size, dropout, learning rate (and fine-tune depth and rate)."""
    kt = _keras_tuner()
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

    def tuner(self, values: dict[str, Any], *, cache: FeatureCache | bool, refit: bool | str = False) -> FineTuner:
        """The FineTuner a trial with these hyperparameter ``values`` trains.

        Trials never refit (``refit=False``): a trial is scored on its validation split.
        """
        units = int(values.get("units", 0))
        head = Head(hidden_units=(units,) if units else (), dropout=float(values.get("dropout", 0.2)))
        head_phase = dataclasses.replace(HEAD_PHASE, epochs=int(values.get("tuner/epochs", self.epochs)),
                                         learning_rate=float(values.get("learning_rate", HEAD_PHASE.learning_rate)))
        fine = None
        if "fine_tune_blocks" in values and self.fine_tune_epochs:
            fine = dataclasses.replace(FINE_TUNE_PHASE, epochs=self.fine_tune_epochs,
                                       policy=UnfreezeTop(int(values["fine_tune_blocks"])),
                                       learning_rate=float(values["fine_tune_learning_rate"]))
        return FineTuner(self.backbone, weights=self.weights, head=head, head_phase=head_phase, fine_tune_phase=fine,
                         seed=self.seed, cache=cache, refit=refit)


def _score(tuner: FineTuner, data: ImageData) -> float:
    """A trained trial's validation accuracy: from the evaluation its fit made on the cached
    validation features when there is one (calibration does not change the top class), else by
    running the model over the validation images."""
    held_out = tuner._held_out
    if held_out is not None and held_out[1] is not None and tuner.refitted is None:
        return float(held_out[1].accuracy)
    return float(tuner.evaluate(data).accuracy)


def _tuner_class(kind: str) -> type:
    kt = _keras_tuner()
    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband}[kind]

    class TransferTuner(base):  # type: ignore[misc, valid-type]
        """Runs each trial as a FineTuner (one or two phases) on shared cached features."""

        def __init__(self, *, data: ImageData, settings: TrialSettings, cache: FeatureCache, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._data, self._settings, self._cache = data, settings, cache
            self._network: keras.Model | None = None  # the frozen backbone head-only trials share
            self._times_file = Path(self.project_dir) / "trial_seconds.json"
            self.trial_seconds: dict[str, float] = (
                json.loads(self._times_file.read_text()) if self._times_file.is_file() else {})

        def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: object, **kwargs: object
                      ) -> dict[str, float]:
            start = time.perf_counter()
            tuner = self._settings.tuner(trial.hyperparameters.values, cache=self._cache)
            head_only = tuner.fine_tune_phase is None
            if head_only:  # its backbone stays frozen: build it once for the whole search
                tuner._network = self._network
            try:
                tuner.fit(self._data, verbose=0)
                score = _score(tuner, self._data)
            except TrainingDivergedError:  # too high a learning rate: a bad trial, not a failed search
                score = 0.0
            if head_only and self._network is None and tuner.model is not None:
                self._network = backbone_of(tuner.model)
            if not head_only:
                keras.backend.clear_session()  # each trial builds a new model: free the last one
            self.trial_seconds[trial.trial_id] = time.perf_counter() - start
            write_text_atomic(self._times_file, json.dumps(self.trial_seconds))
            return {"val_accuracy": score}

    return TransferTuner


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        rows: One dict per finished trial: ``trial``, the hyperparameter values, ``score``, ``seconds``.
        best_values: Hyperparameter values of the best trial.
        best_score: Its validation accuracy.
        directory: keras-tuner's project folder (run the search again on it to resume).
        settings: What every trial shared (backbone, weights, epochs, seed).
    """

    rows: list[dict[str, Any]]
    best_values: dict[str, Any]
    best_score: float
    directory: Path
    settings: TrialSettings

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
) -> SearchResult:
    """Search the head (and optionally the fine-tune depth and rate) with keras-tuner.

    Args:
        data: Training and validation data (the validation accuracy is the score).
        backbone: Registry name, Hub handle or spec, as for :class:`FineTuner`.
        weights: As for :class:`FineTuner`.
        max_trials: Trials to run (for ``"hyperband"``: the budget is set by ``epochs``).
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        epochs: Head-training epochs per trial (Hyperband's maximum).
        fine_tune: Also search ``fine_tune_blocks`` and ``fine_tune_learning_rate``
            (two-phase trials; slower, since fine-tuning cannot run on the final features).
        directory: keras-tuner's folder. With ``overwrite=False`` an interrupted search resumes.
        cache: Share a feature cache (a new in-memory one by default).
    """
    kt = _keras_tuner()
    check_choice("tuner", tuner, TUNERS)
    spec = get_backbone(backbone)
    cls = _tuner_class(tuner)
    budget = {"max_epochs": epochs, "hyperband_iterations": 1} if tuner == "hyperband" else {"max_trials": max_trials}
    settings = TrialSettings(backbone=spec, weights=weights, epochs=epochs,
                             fine_tune_epochs=fine_tune_epochs if fine_tune else 0, seed=seed)
    runner = cls(
        data=data, settings=settings, cache=cache or FeatureCache(),
        hyperparameters=search_space(fine_tune=fine_tune), objective=kt.Objective("val_accuracy", "max"),
        directory=str(directory), project_name=spec.name.replace(":", "_").replace("/", "_"),
        overwrite=overwrite, seed=seed, **budget,
    )
    runner.search(verbose=0)
    rows = []
    for trial in sorted(runner.oracle.trials.values(), key=lambda t: int(t.trial_id) if t.trial_id.isdigit() else 0):
        if trial.score is None:
            continue
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        rows.append({"trial": trial.trial_id, **values, "score": float(trial.score),
                     "seconds": float(runner.trial_seconds.get(trial.trial_id, float("nan")))})
    best = runner.oracle.get_best_trials(1)[0]
    return SearchResult(rows=rows, best_values=dict(best.hyperparameters.values), best_score=float(best.score),
                        directory=Path(runner.project_dir), settings=settings)
