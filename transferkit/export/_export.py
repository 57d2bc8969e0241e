"""``export_run``: check the options, take the trained run, pick the check images, hand over to the format."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from transferkit._errors import ConfigError, check_choice
from transferkit._finetuner import FineTuner
from transferkit._run import TrainedRun
from transferkit._types import PathLike
from transferkit.export._hub import export_hub
from transferkit.export._images import check_images, read_calibration_images
from transferkit.export._kinds import FORMATS, INTEGER_QUANTIZATIONS, QUANTIZATIONS
from transferkit.export._onnx import export_onnx, onnx_modules
from transferkit.export._report import ExportReport
from transferkit.export._saved_model import export_saved_model
from transferkit.export._tflite import export_tflite
from transferkit.export._writing import ExportJob, check_target, created_parents

EXPORTERS: dict[str, Callable[[ExportJob], ExportReport]] = {
    "saved_model": export_saved_model,
    "hub": export_hub,
    "tflite": export_tflite,
    "onnx": export_onnx,
}
"""Each format's exporter: writes the export, verifies it and returns its report."""


def export_run(
    run: FineTuner | TrainedRun | PathLike,
    out: PathLike,
    *,
    format: str = "saved_model",
    quantize: str = "none",
    check: PathLike | None = None,
    calibration: PathLike | None = None,
    calibration_images: int = 300,
) -> ExportReport:
    """Export the model of a trained run and verify the written file against the Keras model.

    Args:
        run: A run folder written by :meth:`FineTuner.save` (or ``transferkit train``), a trained
            :class:`~transferkit.FineTuner`, or its ``result``.
        out: The export to write. ``format="saved_model"``: a folder (created; an existing
            SavedModel there is replaced, any other folder is refused). ``format="tflite"``: a
            file ending in ``.tflite``; ``format="onnx"``: a file ending in ``.onnx``.
            ``labels.txt`` (one class name a line, in output order) and the report are written
            beside a file (``<stem>.export_report.json``; ``<stem>.onnx.export_report.json`` for
            ONNX) or inside a SavedModel or Hub folder (``export_report.json``; a SavedModel also
            has ``labels.txt`` as the asset ``assets/labels.txt``). :func:`report_path` gives the
            report's path. ``format="hub"``: a folder, as for a SavedModel.
        format: ``"saved_model"`` (signatures ``serving_default``: float32 pixels
            ``[batch, size, size, 3]``; ``serving_bytes``: encoded JPEG/PNG/… bytes ``[batch]``;
            both return ``{"probabilities": …}``), ``"tflite"`` (built-in ops only) or
            ``"onnx"`` (converted by Keras' ``model.export(format="onnx")``, i.e. tf2onnx, and
            run with ONNX Runtime; input ``images``, output ``probabilities``; the class names
            and image settings are also in the file's metadata; needs ``pip install
            "transferkit[onnx]"``) or ``"hub"`` (a TF2 Hub module of the whole classifier:
            ``hub.load(path)(images)`` with float32 images in [0, 1], the Hub convention, returns
            the probabilities; checked with ``hub.load``).
        quantize: TFLite only. ``"none"`` (float32), ``"float16"`` (half-size weights),
            ``"dynamic"`` (int8 weights, float activations), ``"int8"`` (int8 weights and
            activations; uint8 raw-pixel input and uint8 probabilities out; needs calibration
            images; runs on integer-only accelerators) or ``"int8-mixed"`` (int8 weights and
            activations except the small layers whose int8 error on the calibration images is
            largest, which stay float32; float32 pixels in and probabilities out; for CPUs and
            GPUs, not integer-only accelerators; needs calibration images).
        check: A class folder with the run's classes to verify on (and to calibrate int8 when
            ``calibration`` is not given). Without it the export is verified on the validation
            images kept with the run (``samples.npz``), which proves agreement on images like
            yours but gives no accuracy; a run saved without them is verified on
            :data:`RANDOM_CHECK_IMAGES` random-pixel images. Near ties are left out of the
            agreement rule either way (:data:`TIE_MARGINS`).
        calibration: A class folder whose images set the int8 quantization ranges (images like
            the training data; class names need not match). Only for ``quantize="int8"`` or
            ``"int8-mixed"``.
        calibration_images: At most this many calibration images, drawn evenly from each class
            (seeded).

    Returns:
        The :class:`ExportReport`, also written as JSON.

    Raises:
        ConfigError: an unknown format or quantization, ``quantize`` with a SavedModel or ONNX,
            int8 without calibration images, an ``out`` that cannot be written, a model TFLite
            cannot convert with built-in ops, or one that tf2onnx cannot convert into a graph
            ONNX Runtime runs.
        MissingDependencyError: ``format="onnx"`` without tf2onnx, onnx or onnxruntime.
        DataError: ``run`` is not a saved run; the check folder's classes differ from the
            model's; a float export disagrees with the Keras model beyond the tolerances (nothing
            is written).
        NotFittedError: ``run`` is a FineTuner without a model.

    Example:
        >>> report = export_run("runs/flowers", "serving/flowers/1", check="photos/test")
        >>> report.agreement, report.max_abs_diff
        (1.0, 2.9e-08)
    """
    check_choice("format", format, FORMATS)
    check_choice("quantize", quantize, QUANTIZATIONS)
    if format != "tflite" and quantize != "none":
        kept = {"saved_model": "a SavedModel", "hub": "a Hub module"}.get(format, "an ONNX file")
        raise ConfigError(f"quantize applies to format='tflite' only; {kept} keeps float32 "
                          f"weights. Received: format={format!r}, quantize={quantize!r}. Use format='tflite' or "
                          "drop quantize.")
    if not isinstance(calibration_images, int) or isinstance(calibration_images, bool) or calibration_images < 1:
        raise ConfigError(f"Expected calibration_images to be a positive integer. "
                          f"Received: calibration_images={calibration_images!r}.")
    if calibration is not None and quantize not in INTEGER_QUANTIZATIONS:
        raise ConfigError(f"calibration images are used by quantize='int8' or 'int8-mixed' only. Received: "
                          f"quantize={quantize!r}, calibration={str(calibration)!r}. Drop calibration, or use "
                          "quantize='int8'.")
    calibration_folder = calibration if calibration is not None else check
    if quantize in INTEGER_QUANTIZATIONS and calibration_folder is None:
        raise ConfigError(f"quantize={quantize!r} needs calibration images to set the quantization ranges, and a run "
                          "folder holds none: pass check=FOLDER or calibration=FOLDER (class sub-folders of "
                          "images like the training data), or use quantize='dynamic', which needs none.")
    target = Path(out)
    check_target(target, format)
    if format == "onnx":
        onnx_modules("Exporting to ONNX", "tf2onnx", "onnx", "onnxruntime")

    trained = trained_run(run)
    checks = check_images(trained, check)
    calibration_set = (read_calibration_images(calibration_folder, trained.image_settings, calibration_images)
                       if quantize in INTEGER_QUANTIZATIONS and calibration_folder is not None else None)
    job = ExportJob(run=trained, target=target, checks=checks, quantize=quantize, calibration=calibration_set)
    with created_parents(target):
        return EXPORTERS[format](job)


def trained_run(run: FineTuner | TrainedRun | PathLike) -> TrainedRun:
    """The trained result to export: ``run`` itself, a FineTuner's ``result``, or a run folder read back."""
    if isinstance(run, TrainedRun):
        return run
    if isinstance(run, FineTuner):
        return run.result
    if not isinstance(run, (str, os.PathLike)):
        raise ConfigError(f"Expected run to be a run folder, a FineTuner or a TrainedRun. Received: run={run!r} "
                          f"({type(run).__name__}).")
    with warnings.catch_warnings():
        # a saved run's optimizer state is irrelevant to an export
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return TrainedRun.load(run)
