"""After the phases: one pass over the validation images to calibrate on and to report.

Functions over explicit values — the trained run, the model's outputs and the labels — so that
``FineTuner.fit``, ``FineTuner.calibrate`` and a refit share them.
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import tensorflow as tf

from transferkit._calibration import Calibration, calibrate, fold_temperature
from transferkit._inference import labelled_batches, outputs_and_labels
from transferkit._metrics import Predictions
from transferkit._run import HeldOut, TrainedRun
from transferkit.data._images import load_image
from transferkit.data._kinds import TrainData, ValidationData
from transferkit.data._loaders import ImageData
from transferkit.data._pipelines import PipelineSettings

log = logging.getLogger("transferkit")


def fold(run: TrainedRun, calibration: Calibration) -> None:
    """Fold a fitted temperature into ``run``'s output layer (a second one multiplies the first)."""
    fold_temperature(run.output_layer(), calibration.temperature)
    if run.calibration is not None:  # scaled twice: the temperatures multiply
        calibration = dataclasses.replace(calibration, temperature=run.calibration.temperature
                                          * calibration.temperature)
    run.calibration = calibration
    log.info("Calibrated the probabilities: %s", calibration.describe())


def split_outputs(run: TrainedRun, data: ImageData, labels: np.ndarray,
                  cached: tuple[keras.Model, tf.data.Dataset] | None) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs for the validation split of the data just trained on: from the last
    phase's cached features (``cached``: the part above them and the features) when they are those
    images, else by running the network over the images."""
    if cached is not None:
        part, features = cached
        outputs, cached_labels = outputs_and_labels(part, features)
        if cached_labels.shape == labels.shape and np.array_equal(cached_labels, labels):
            return outputs, labels
    return outputs_and_labels(run.model, labelled_batches(data))


def after_training(run: TrainedRun, train: TrainData, validation: ValidationData | None, *, temperature_scaling: bool,
                   cached: tuple[keras.Model, tf.data.Dataset] | None) -> None:
    """Calibrate ``run`` on the validation images (if asked) and keep its validation results for the report."""
    examples = None
    if validation is not None:
        outputs, labels = outputs_and_labels(run.model, labelled_batches(validation))
    elif isinstance(train, ImageData) and train.validation_files is not None and len(train.validation_files):
        files = train.validation_files
        outputs, labels = split_outputs(run, train, files.labels, cached)
        examples = Predictions(outputs, run.class_names, files.paths)
    elif isinstance(train, ImageData) and train.validation is not None:
        outputs, labels = outputs_and_labels(run.model, labelled_batches(train))
    else:
        return  # no validation data: nothing to calibrate on or to report
    if temperature_scaling and run.head.task == "single_label":
        calibration, outputs = calibrate(outputs, labels)
        fold(run, calibration)
        if examples is not None:
            examples = dataclasses.replace(examples, probabilities=outputs)
    if validation is None:  # the report's data is train's validation split
        run.held_out = HeldOut(examples, run.evaluation(outputs, labels))


def validation_results(run: TrainedRun, data: ImageData) -> HeldOut:
    """Predictions for the validation files (for the report's grid) and the evaluation, in one pass."""
    files = data.validation_files
    if files is not None and len(files):
        examples = run.predict(list(files.paths))
        return HeldOut(examples, run.evaluation(examples.probabilities, files.labels))
    if data.validation is not None:  # arrays: no files to show
        return HeldOut(None, run.evaluate(data))
    return HeldOut(None, None)


def samples(data: TrainData, count: int, settings: PipelineSettings) -> np.ndarray | None:
    """Up to ``count`` validation images of ``data``, decoded as the model sees them (raw pixels at
    ``settings``' size, resize mode and background), to keep with the run: exports are checked on
    them. ``None`` without validation files (arrays, datasets)."""
    if not isinstance(data, ImageData) or data.validation_files is None or not len(data.validation_files):
        return None
    paths = list(data.validation_files.paths)[:count]
    return np.stack([load_image(path, image_size=settings.image_size, resize=settings.resize,
                                background=settings.background) for path in paths])
