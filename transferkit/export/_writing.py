"""Writing an export so that it is either verified and complete, or absent.

Every file goes through a hidden temporary name in the target folder and is renamed only after
the export passed verification (a SavedModel folder as a whole); the previous export at the same
path stays until then. Parent folders created for the export are removed again when it is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit._atomic import atomic_paths
from transferkit._errors import ConfigError
from transferkit._run import TrainedRun
from transferkit.export._images import CalibrationImages, CheckImages
from transferkit.export._report import (
    LABELS_FILE,
    REPORT_FILE,
    SUFFIXES,
    ExportReport,
    images_phrase,
    labels_text,
    make_report,
    report_path,
)
from transferkit.export._runner import Runner
from transferkit.export._verify import Comparison, compare, keras_call, latency, refuse_if_wrong

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class ExportJob:
    """One export to make: every format's exporter takes this and returns the report.

    Attributes:
        run: The trained run whose model is exported.
        target: Where the export goes.
        checks: The images it is verified on.
        quantize: The TFLite quantization (``"none"`` for the other formats).
        calibration: The int8 calibration images, if the quantization needs them.
    """

    run: TrainedRun
    target: Path
    checks: CheckImages
    quantize: str = "none"
    calibration: CalibrationImages | None = None

    def compare(self, format: str, outputs: Callable[[Any], Any]) -> Comparison:
        """``outputs`` (a runner) beside the Keras model on the check images."""
        reference, found = compare(self.checks, keras_call(self.run), outputs)
        return self.comparison(format, found, reference)

    def comparison(self, format: str, outputs: Any, reference: Any) -> Comparison:
        return Comparison(format=format, quantize=self.quantize, task=self.run.head.task, outputs=outputs,
                          reference=reference, labels=self.checks.labels)

    def refuse_if_wrong(self, comparison: Comparison) -> None:
        checks = self.checks
        refuse_if_wrong(comparison, where=images_phrase(checks.source, checks.description, checks.count),
                        path=str(self.target))


def write_file_export(job: ExportJob, model: bytes, open_runner: Callable[[Path], Runner], *, format: str,
                      calibration: dict[str, Any] | None = None, runtime: str = "",
                      input_extra: dict[str, Any] | None = None) -> ExportReport:
    """Write a single-file export (TFLite, ONNX) under temporary names, run it in its runtime against
    the Keras model, and rename it, its labels and its report into place only if it passes."""
    target = job.target
    labels, report_file = target.parent / LABELS_FILE, report_path(target)
    with atomic_paths(target, labels, report_file) as (model_tmp, labels_tmp, report_tmp):
        model_tmp.write_bytes(model)
        runner = open_runner(model_tmp)
        comparison = job.compare(format, runner)
        tensors = {"input": {**runner.details("input"), **(input_extra or {})}, "output": runner.details("output")}
        report = make_report(job.run, target, job.checks, comparison, size=len(model),
                             latency_ms=latency(runner, job.checks.first), runtime=runner.runtime + runtime,
                             tensors=tensors, calibration=calibration, files=(target, labels, report_file))
        del runner  # let go of the file before it is renamed (Windows cannot rename an open file)
        job.refuse_if_wrong(comparison)
        labels_tmp.write_text(labels_text(job.run), encoding="utf-8")
        write_report(report_tmp, report)
    log.info("%s", report.describe())
    return report


def finish_folder(job: ExportJob, folder: Path, report: ExportReport) -> None:
    """Put ``labels.txt`` and the report into a verified export folder (before it is renamed into place)."""
    (folder / LABELS_FILE).write_text(labels_text(job.run), encoding="utf-8")
    write_report(folder / REPORT_FILE, report)


def write_report(path: Path, report: ExportReport) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def check_target(target: Path, format: str) -> None:
    """Refuse an ``out`` that does not fit ``format``, or that would replace something other than an export."""
    if format in SUFFIXES:
        suffix = SUFFIXES[format]
        if target.suffix.lower() != suffix:
            raise ConfigError(f"Expected out to be a file ending in {suffix} for format={format!r}. "
                              f"Received: out={str(target)!r}. For example: out='deploy/model{suffix}'.")
        if target.is_dir():
            raise ConfigError(f"out={str(target)!r} is a folder; give the path of the {suffix} file to write.")
        return
    if target.exists() and not target.is_dir():
        raise ConfigError(f"out={str(target)!r} is a file; a SavedModel is a folder. Choose a folder path.")
    if target.is_dir() and not (target / "saved_model.pb").is_file() and any(target.iterdir()):
        raise ConfigError(f"out={str(target)!r} is a folder that holds something other than a SavedModel; "
                          "it would be replaced. Choose a new or empty folder.")


@contextlib.contextmanager
def created_parents(target: Path) -> Iterator[None]:
    """Create ``target``'s missing parent folders, and remove them again (if still empty) when the block fails."""
    missing = [p for p in reversed(target.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in reversed(missing):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
