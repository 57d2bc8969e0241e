"""The export report (``export_report.json``): what was written, where, and how closely it matches the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit._run import TrainedRun
from transferkit._types import PathLike
from transferkit.data._pipelines import PipelineSettings
from transferkit.export._images import FOLDER, SAMPLES, CheckImages
from transferkit.export._kinds import is_float32, kind_name
from transferkit.export._verify import AGREEMENT_TOLERANCE, FLOAT32_TOLERANCE, Comparison, keras_latency

REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}  # the single-file formats


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_run` wrote and how closely the written file matches the Keras model.

    Attributes:
        path: The export: a SavedModel or Hub folder, a ``.tflite`` or an ``.onnx`` file.
        format: ``"saved_model"``, ``"tflite"``, ``"onnx"`` or ``"hub"``.
        quantize: One of :data:`QUANTIZATIONS` (TFLite); ``"none"`` otherwise.
        size_bytes: Size of the export on disk (a SavedModel: every file in its folder, without
            ``labels.txt`` and the report).
        checked_on: The check folder; ``"samples kept with the run (N validation images)"``; or,
            for a run saved without samples, ``"N generated images (random pixels)"``.
        check_source: Where the check images came from: ``"folder"``, ``"samples"`` or ``"generated"``.
        images: How many images the export was compared on.
        agreement: Share of images on which the export's top class is the Keras model's
            (multi-label: share of image × class decisions at 0.5 that agree; regression: ``None``).
        tie_margin: Images whose Keras top-1 margin (top-1 minus top-2 probability; multi-label:
            distance from 0.5) is at most this are near ties, which rounding alone can turn over
            (see :data:`TIE_MARGINS`); ``None`` for regression.
        ties_excluded: How many images (multi-label: decisions) were near ties, left out of the
            agreement rule.
        decisive_agreement: Top-1 agreement on the other images: what :data:`AGREEMENT_TOLERANCE`
            holds a float export to.
        max_abs_diff: Largest absolute difference of any output (probability) between the two.
        accuracy: The export's accuracy on the check folder (single-label models with labels), else ``None``.
        keras_accuracy: The Keras model's accuracy on the same images.
        latency_ms: Median milliseconds per forward pass of the export at batch 1, in this process,
            on this machine (:data:`LATENCY_RUNS` runs).
        keras_latency_ms: The same for the Keras model (a compiled ``tf.function`` call).
        runtime: What ran the export (``tf.saved_model.load``, ``ai_edge_litert …``, ``onnxruntime …``).
        input: Name, dtype and shape of the input; for int8 also its quantization ``scale`` and
            ``zero_point`` (1 and 0: raw pixels, one to one).
        output: Name, dtype and shape of the output; for int8 its ``scale`` and ``zero_point``
            (probability = scale × (value − zero_point)).
        image_settings: How images must be fitted to the input, as the run's training images were:
            ``image_size``, ``resize`` and ``background`` (what :func:`load_exported` reads).
        bytes_signature: For a SavedModel, how ``serving_bytes`` on the image files compares with
            the Keras model on the same files read by transferkit's loader (``images``,
            ``agreement``, ``max_abs_diff``); ``None`` otherwise.
        calibration: For int8, the folder and number of images the quantization ranges came from.
        enforced: Whether the tolerances were enforced (float exports); quantized ones are reported only.
        files: Every file or folder written.
    """

    path: str
    format: str
    quantize: str
    size_bytes: int
    checked_on: str
    check_source: str
    images: int
    agreement: float | None
    tie_margin: float | None
    ties_excluded: int | None
    decisive_agreement: float | None
    max_abs_diff: float
    accuracy: float | None
    keras_accuracy: float | None
    latency_ms: float
    keras_latency_ms: float
    runtime: str
    input: dict[str, Any]
    output: dict[str, Any]
    image_settings: dict[str, Any]
    bytes_signature: dict[str, Any] | None
    calibration: dict[str, Any] | None
    enforced: bool
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (what ``export_report.json`` holds), with the tolerances
        it was held to (``None``: a quantized export, reported only)."""
        tolerance = {"agreement": AGREEMENT_TOLERANCE,
                     "max_abs_diff": FLOAT32_TOLERANCE if is_float32(self.format, self.quantize) else None}
        return {**asdict(self), "files": list(self.files), "tolerance": tolerance if self.enforced else None}

    def describe(self) -> str:
        """One line: what was written, how big, on which images it was checked, how closely it agrees
        (and how many near ties were left out), how fast."""
        kind = kind_name(self.format, self.quantize)
        agrees = (f"top-1 agreement {self.agreement:.1%}" if self.agreement is not None else "outputs compared")
        ties = ""
        if self.ties_excluded and self.decisive_agreement is not None:
            ties = (f", {self.decisive_agreement:.1%} leaving out {self.ties_excluded} near ties (Keras top-1 "
                    f"margin at most {self.tie_margin:.2g})")
        elif self.ties_excluded:
            ties = f", all of them near ties (Keras top-1 margin at most {self.tie_margin:.2g})"
        elif self.ties_excluded == 0:
            ties = ", no near ties"
        accuracy = (f", accuracy {self.accuracy:.3f} vs Keras {self.keras_accuracy:.3f}"
                    if self.accuracy is not None and self.keras_accuracy is not None else "")
        return (f"{kind} {self.path} ({_size(self.size_bytes)}): {agrees} with the Keras model on "
                f"{images_phrase(self.check_source, self.checked_on, self.images)}{ties}; max probability "
                f"difference {self.max_abs_diff:.2g}{accuracy}; {self.latency_ms:.2f} ms/image at batch 1 "
                f"(Keras {self.keras_latency_ms:.2f} ms)")


def images_phrase(source: str, checked_on: str, images: int) -> str:
    """The check images as a sentence names them: ``"18 images from 'photos'"``, ``"32 validation
    images kept with the run"``, ``"256 generated images (random pixels)"``."""
    if source == FOLDER:
        return f"{images} images from {checked_on!r}"
    if source == SAMPLES:
        return f"{images} validation images kept with the run"
    return checked_on


def make_report(run: TrainedRun, target: Path, checks: CheckImages, comparison: Comparison, *, size: int,
                latency_ms: float, runtime: str, tensors: dict[str, dict[str, Any]],
                bytes_signature: dict[str, Any] | None = None, calibration: dict[str, Any] | None = None,
                files: tuple[Path, ...]) -> ExportReport:
    """The report of an export of ``run`` at ``target``, from its comparison with the Keras model."""
    return ExportReport(
        path=str(target), format=comparison.format, quantize=comparison.quantize, size_bytes=int(size),
        checked_on=checks.description, check_source=checks.source, images=checks.count,
        agreement=comparison.agreement, tie_margin=comparison.tie_margin, ties_excluded=comparison.ties,
        decisive_agreement=comparison.decisive_agreement, max_abs_diff=comparison.max_abs_diff,
        accuracy=comparison.accuracy(comparison.outputs), keras_accuracy=comparison.accuracy(comparison.reference),
        latency_ms=latency_ms, keras_latency_ms=keras_latency(run, checks.first), runtime=runtime,
        input=tensors["input"], output=tensors["output"], image_settings=image_settings(run.image_settings),
        bytes_signature=bytes_signature, calibration=calibration, enforced=comparison.enforced,
        files=tuple(str(f) for f in files),
    )


def image_settings(settings: PipelineSettings) -> dict[str, Any]:
    """How images are fitted to the input, as JSON values (the report's ``image_settings``)."""
    return {"image_size": settings.image_size, "resize": settings.resize,
            "background": [int(c) for c in settings.background]}


def labels_text(run: TrainedRun) -> str:
    """``labels.txt``: one class name a line, in output order."""
    return "".join(f"{name}\n" for name in run.class_names)


def tflite_report_path(path: PathLike) -> Path:
    """Where :func:`export_run` writes the report of the TFLite file ``path``: ``<stem>.export_report.json``
    beside it, so that several variants can share a folder."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{REPORT_FILE}")


def report_path(path: PathLike) -> Path:
    """Where :func:`export_run` writes the report of the export ``path``: ``export_report.json``
    inside a SavedModel folder, ``<stem>.export_report.json`` beside a ``.tflite`` file and
    ``<stem>.onnx.export_report.json`` beside an ``.onnx`` file (so that ``model.tflite`` and
    ``model.onnx`` can share a folder)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == SUFFIXES["onnx"]:
        return path.with_name(f"{path.stem}.onnx.{REPORT_FILE}")
    return tflite_report_path(path) if suffix == SUFFIXES["tflite"] else path / REPORT_FILE


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"
