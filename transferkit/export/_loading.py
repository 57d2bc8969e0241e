"""Loading an export back in its own runtime, to predict on images as the run does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import tensorflow as tf

from transferkit._errors import ConfigError, DataError
from transferkit._inference import prediction_input
from transferkit._metrics import Predictions
from transferkit._types import Color, PathLike
from transferkit.data._images import printable
from transferkit.data._kinds import Images
from transferkit.data._pipelines import PipelineSettings
from transferkit.export._hub import HubRunner
from transferkit.export._onnx import OnnxRunner
from transferkit.export._report import LABELS_FILE, REPORT_FILE, SUFFIXES, report_path
from transferkit.export._runner import Runner
from transferkit.export._saved_model import SavedModelRunner
from transferkit.export._tflite import TFLiteRunner

RUNNERS: dict[str, Callable[[Path], Runner]] = {
    "saved_model": SavedModelRunner,
    "hub": HubRunner,
    "tflite": TFLiteRunner,
    "onnx": OnnxRunner,
}
"""Each format's runner class, built from the export's path."""


@dataclass(frozen=True)
class ExportedModel:
    """An export loaded in its own runtime, predicting on image files as the run itself does.

    Made by :func:`load_exported`. Files are read by transferkit's loader with the run's image
    settings (the same pixels :meth:`FineTuner.predict` feeds the Keras model), then run through
    the export: a SavedModel's ``serving_default`` with ``tf.saved_model.load``, a TFLite file in
    LiteRT (one image at a time; uint8 pixels for an int8 file), an ONNX file in ONNX Runtime.

    Attributes:
        path: The export: a SavedModel folder, a ``.tflite`` or an ``.onnx`` file.
        format: ``"saved_model"``, ``"tflite"``, ``"onnx"`` or ``"hub"``.
        class_names: The name of each output, in order (``labels.txt``; an ONNX file's metadata).
        image_size: Side of the square input, in pixels.
        resize: How images are fitted to it: ``"pad"``, ``"stretch"`` or ``"crop"``.
        background: RGB colour of the padding and of transparent pixels.
        runtime: What runs the export.

    Example:
        >>> model = load_exported("deploy/flowers.onnx")
        >>> model.predict("photos/new").top(3)
    """

    path: str
    format: str
    class_names: tuple[str, ...]
    image_size: int
    resize: str
    background: Color
    runtime: str
    _run: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def predict(self, images: Images, *, batch_size: int = 32) -> Predictions:
        """Class probabilities for image files, a folder of images, arrays or a dataset.

        Args:
            images: What :meth:`FineTuner.predict` takes: a path (file or folder), a list of
                paths, an array ``(n, h, w, 3)`` or ``(h, w, 3)`` of raw 0–255 pixels, or a
                ``tf.data.Dataset`` of image batches.
            batch_size: Images per call of the runtime (a TFLite file runs them one by one).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}.")
        settings = PipelineSettings(image_size=self.image_size, resize=self.resize, background=self.background)
        prepared = prediction_input(images, settings=settings)
        if isinstance(prepared.images, tf.data.Dataset):
            batches: Iterable[Any] = (x[0] if isinstance(x, tuple) else x for x in prepared.images)
        else:
            batches = (prepared.images[i:i + batch_size] for i in range(0, len(prepared.images), batch_size))
        outputs = [self._run(np.asarray(batch, dtype=np.float32)) for batch in batches]
        if not outputs:
            raise DataError("There are no images to predict on.")
        return Predictions(np.concatenate(outputs), self.class_names, prepared.paths)


def export_format(path: PathLike) -> str | None:
    """The format of the export at ``path`` — ``"saved_model"`` (a folder with ``saved_model.pb``),
    ``"hub"`` (such a folder whose export report says so), ``"tflite"`` or ``"onnx"`` (a file with
    that suffix) — or ``None`` for anything else (a run folder, a missing path, …)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            return None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads((path / REPORT_FILE).read_text(encoding="utf-8")).get("format") == "hub":
                return "hub"
        return "saved_model"
    if path.is_file():
        return next((format for format, suffix in SUFFIXES.items() if path.suffix.lower() == suffix), None)
    return None


def load_exported(path: PathLike, *, resize: str | None = None, background: Color | None = None) -> ExportedModel:
    """Load a file written by :func:`export_run` in its own runtime, to predict with it.

    The class names come from ``labels.txt`` (beside a file, inside a SavedModel folder; an ONNX
    file also carries them in its metadata); the image size from the export's input; the resize
    mode and background from the ONNX file's metadata, else from the export report
    (``<stem>.export_report.json`` beside a file, ``export_report.json`` inside a SavedModel).
    Keep those files with the export.

    Args:
        path: A SavedModel folder, a Hub module folder, a ``.tflite`` file or an ``.onnx`` file.
        resize: Only for an export that does not record its image settings (an export report
            lost, or written by an older transferkit): the run's ``resize`` (``transferkit.json``).
        background: Likewise, the run's ``background`` ``(r, g, b)``.

    Raises:
        DataError: ``path`` is not an export, or its labels or image settings are missing or do
            not fit it.
        ConfigError: ``resize`` / ``background`` differ from what the export records.
        MissingDependencyError: an ONNX file without ``onnxruntime``.

    Example:
        >>> predictions = load_exported("deploy/flowers_int8.tflite").predict("photos/new")
        >>> predictions.labels
    """
    source = Path(path)
    format = export_format(source)
    if format is None:
        shown = printable(str(source))
        if not source.exists():
            raise DataError(f"Export {shown!r} does not exist. Check the path.")
        hint = (" It is a run folder: use FineTuner.load(path).predict(…)." if (source / "transferkit.json").is_file()
                else "")
        raise DataError(f"{shown!r} is not an export: expected a SavedModel folder (with saved_model.pb), a .tflite "
                        f"or an .onnx file written by transferkit.export.export_run.{hint}")
    runner = RUNNERS[format](source)
    embedded = runner.metadata()
    shape_in, shape_out = runner.details("input")["shape"], runner.details("output")["shape"]
    if len(shape_in) != 4 or shape_in[1] is None or shape_in[1] != shape_in[2] or shape_in[3] != 3:
        raise DataError(f"{printable(str(source))!r} takes input of shape {shape_in}, not square RGB images "
                        "[batch, size, size, 3]: it was not written by transferkit.export.export_run.")
    side = int(shape_in[1])
    settings = _recorded_settings(source, embedded, side, resize=resize, background=background)
    names = _exported_labels(source, format, embedded)
    if shape_out and shape_out[-1] is not None and len(names) != shape_out[-1]:
        raise DataError(f"The labels of {printable(str(source))!r} name {len(names)} classes, but it gives "
                        f"{shape_out[-1]} outputs: labels.txt belongs to another export (several runs exported "
                        "into one folder share one labels.txt). Export each run into a folder of its own.")
    return ExportedModel(path=str(source), format=format, class_names=names, image_size=side,
                         resize=settings.resize, background=settings.background, runtime=runner.runtime,
                         _run=runner)


def _recorded_settings(source: Path, embedded: dict[str, str], side: int, *, resize: str | None,
                       background: Color | None) -> PipelineSettings:
    """The export's resize mode and background: from its ONNX metadata or its report, else the arguments."""
    recorded: dict[str, Any] | None = None
    if "resize" in embedded and "background" in embedded:
        recorded = {"image_size": int(embedded.get("image_size", side)), "resize": embedded["resize"],
                    "background": json.loads(embedded["background"])}
    else:
        report = report_path(source)
        if report.is_file():
            recorded = json.loads(report.read_text(encoding="utf-8")).get("image_settings")
    shown = printable(str(source))
    if recorded is None:
        if resize is None or background is None:
            raise DataError(f"{shown!r} does not record how images are fitted to its input (no image_settings in "
                            f"{printable(str(report_path(source)))!r}). Pass resize= and background= as the run "
                            "used them (its transferkit.json), or export the run again.")
        return PipelineSettings(image_size=side, resize=resize, background=background)
    found = PipelineSettings(image_size=int(recorded["image_size"]), resize=str(recorded["resize"]),
                             background=cast(Color, tuple(recorded["background"])))
    if found.image_size != side:
        raise DataError(f"{shown!r} takes {side} px images, but its export report says {found.image_size}: the "
                        "report belongs to another export. Export the run again.")
    for name, given, kept in (("resize", resize, found.resize), ("background", background, found.background)):
        if given is not None and (tuple(given) if name == "background" else given) != kept:
            raise ConfigError(f"{shown!r} was exported from a run with {name}={kept!r}, and its images must be "
                              f"fitted the same way. Received: {name}={given!r}. Drop {name}.")
    return found


def _exported_labels(source: Path, format: str, embedded: dict[str, str]) -> tuple[str, ...]:
    if "labels" in embedded:
        return tuple(embedded["labels"].splitlines())
    inside = format in ("saved_model", "hub")
    places = [source / LABELS_FILE, source / "assets" / LABELS_FILE] if inside else [source.parent / LABELS_FILE]
    for place in places:
        if place.is_file():
            return tuple(line for line in place.read_text(encoding="utf-8").splitlines() if line)
    raise DataError(f"There is no {LABELS_FILE} {'in' if inside else 'beside'} "
                    f"{printable(str(source))!r}: the class names are in the labels.txt that export_run wrote "
                    "with it. Copy it back, or export the run again.")
