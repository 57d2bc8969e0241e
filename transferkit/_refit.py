"""The refit: after the phases, train again from the pretrained weights on every image.

Holding a fifth of a few hundred images out for validation costs the most where images are
fewest; once the phases have said how long to train and which phase to keep, a refit trains a
fresh model for those epochs on the training and validation images together. Its validation
figures, kept epoch and temperature are those of the validated model (measured on images it had
not seen).
"""

from __future__ import annotations

import dataclasses
import logging

from transferkit._binding import Bound, bind, build_run
from transferkit._calibration import fold_temperature
from transferkit._errors import ConfigError, TrainingDivergedError
from transferkit._held_out import validation_results
from transferkit._phases import Phase
from transferkit._run import TrainedRun
from transferkit._selection import Refit
from transferkit._settings import REFIT_MAX_IMAGES, Settings
from transferkit._stage import FitContext, run_phase
from transferkit._types import Verbose
from transferkit.data._kinds import TrainData, ValidationData
from transferkit.data._loaders import ImageData, all_images

log = logging.getLogger("transferkit")


def refit_data(settings: Settings, train: TrainData, validation: ValidationData | None, *, fresh: bool
               ) -> ImageData | None:
    """The training and validation images as one training set, when :meth:`FineTuner.fit` refits.

    ``fresh``: the fit starts from the pretrained weights (a fit that continues a trained or
    loaded model does not refit).
    """
    if settings.refit is False:
        return None
    usable = (isinstance(train, ImageData) and validation is None and train.train_files is not None
              and train.validation_files is not None and len(train.validation_files) > 0)
    if not usable or not fresh:
        if settings.refit is True:
            reason = ("needs ImageData from files with a validation split (load_folder, load_csv or from_files)"
                      if usable is False else "starts again from the pretrained weights, and this FineTuner "
                      "already holds a trained (or loaded) model that fit() continues")
            raise ConfigError(f"refit=True trains again on the training and validation images together, which "
                              f"{reason}. Pass refit=False, or \"auto\" to refit only where it applies.")
        if not fresh:
            log.info("Not refitting: fit() continued a model that was already built, trained or loaded.")
        return None
    assert isinstance(train, ImageData)
    if settings.refit == "auto" and train.num_train + train.num_validation > REFIT_MAX_IMAGES:
        return None
    return all_images(train)


def refit_phases(validated: TrainedRun, settings: Settings) -> list[tuple[str, Phase]]:
    """The phases a refit runs: the head phase, and the fine-tune phase if it was kept, each for the
    epochs it ran with validation."""
    ran = {name: len(next(iter(h.values()), [])) for name, h in validated.history.items()}
    best = validated.best
    phases = [("head", dataclasses.replace(settings.head_phase, epochs=ran.get("head", 0), patience=None))]
    fine = settings.fine_tune_phase
    if fine is not None and ran.get("fine_tune") and (best is None or best.phase == "fine_tune"):
        phases.append(("fine_tune", dataclasses.replace(fine, epochs=ran["fine_tune"], patience=None)))
    return phases


def refit(validated: TrainedRun, data: ImageData, everything: ImageData, settings: Settings, fit: FitContext,
          verbose: Verbose) -> TrainedRun:
    """Train a fresh model on ``everything`` for the epochs of the phases ``validated`` kept.

    Returns the refitted run, carrying the validated run's history, kept epoch, validation results
    and temperature; or ``validated`` itself where the refit diverged. The user's callbacks do not
    run again: the refit has no validation data and its epochs would restart from the beginning in
    their logs.
    """
    phases = refit_phases(validated, settings)
    # measured before the model sees these images
    held_out = validated.held_out or validation_results(validated, data)
    log.info("Refitting on all %d images (training and validation): %s", len(everything.train_files or ()),
             ", then ".join(f"{name} phase {phase.epochs} epochs" for name, phase in phases))
    refitting = dataclasses.replace(fit, keep_best=False, refitting=True, cached_validation=None)
    run = build_run(settings, everything, head=validated.head)
    bound: Bound = bind(everything, None, settings, run)
    try:
        for name, phase in phases:
            run_phase(name, phase, run, bound, refitting, settings, (), verbose)
    except TrainingDivergedError as error:  # keep the validated model rather than lose the run
        log.warning("The refit diverged, so the model trained with validation is kept: %s", error)
        validated.held_out = held_out
        validated.divergences.extend(run.divergences)
        return validated
    if validated.calibration is not None:  # the refitted model is scaled by the temperature fitted before
        fold_temperature(run.output_layer(), validated.calibration.temperature)
    return dataclasses.replace(
        run, history=validated.history, best=validated.best, kept=None, held_out=held_out,
        calibration=validated.calibration, divergences=[*validated.divergences, *run.divergences],
        # a phase the refit did not run keeps its solution
        solutions={**{k: v for k, v in validated.solutions.items() if k not in dict(phases)}, **run.solutions},
        refit=Refit(phases=tuple(name for name, _ in phases), epochs=tuple(phase.epochs for _, phase in phases),
                    images=len(everything.train_files or ())))
