"""Export a trained run for serving or for devices, and prove that the export computes what the run does.

:func:`export_run` writes a TensorFlow SavedModel (for TF Serving), a TFLite / LiteRT file (for
phones and small devices), an ONNX file (for ONNX Runtime) or a TensorFlow Hub module, then runs
the written file in its own runtime on check images and compares it with the Keras model: top-1
agreement, the largest probability difference, the accuracy of each when the images have labels,
the file size and the latency at batch 1. The figures go to ``export_report.json`` (inside a
SavedModel folder; ``<stem>.export_report.json`` beside a ``.tflite`` file,
``<stem>.onnx.export_report.json`` beside an ``.onnx`` file: :func:`report_path`). A float export
(SavedModel, Hub module, ONNX, TFLite ``"none"`` or ``"float16"``) that disagrees with the Keras
model beyond :data:`AGREEMENT_TOLERANCE` / :data:`FLOAT32_TOLERANCE` is refused and nothing is
written: every file goes through a temporary name and is renamed only after the check passed.

The check images are the ``check`` folder if given, else the validation images kept with the run,
else (runs saved without them) generated random-pixel images. Near ties, whose top class the
format's rounding alone can turn over, are left out of the agreement rule (:data:`TIE_MARGINS`).

:func:`load_exported` loads such a file back in its own runtime, with its class names and the
run's image settings, and predicts on image files as :meth:`FineTuner.predict` does.

The exported graphs run the model in inference mode (``training=False``), whatever layers it
holds. Inputs are raw RGB pixels, 0–255, at the run's image size: the backbone's preprocessing is
inside the model. A SavedModel also takes encoded image files (``serving_bytes``), decoded and
fitted to the input in the graph by :func:`decode_image_bytes`. See ``docs/export.md``.

Example:
    >>> from transferkit.export import export_run, load_exported
    >>> report = export_run("runs/flowers", "deploy/flowers_int8.tflite", format="tflite",
    ...                     quantize="int8", check="photos/test")
    >>> print(report.describe())
    >>> load_exported("deploy/flowers_int8.tflite").predict("photos/new").labels
"""

from transferkit._public import publish as _publish
from transferkit.export._decode import decode_image_bytes
from transferkit.export._export import export_run
from transferkit.export._images import RANDOM_CHECK_IMAGES
from transferkit.export._kinds import FORMATS, QUANTIZATIONS
from transferkit.export._loading import ExportedModel, export_format, load_exported
from transferkit.export._onnx import ONNX_METADATA
from transferkit.export._report import ExportReport, report_path, tflite_report_path
from transferkit.export._verify import AGREEMENT_TOLERANCE, FLOAT32_TOLERANCE, LATENCY_RUNS, TIE_MARGINS

__all__ = [
    "AGREEMENT_TOLERANCE",
    "FLOAT32_TOLERANCE",
    "FORMATS",
    "LATENCY_RUNS",
    "ONNX_METADATA",
    "QUANTIZATIONS",
    "RANDOM_CHECK_IMAGES",
    "TIE_MARGINS",
    "ExportReport",
    "ExportedModel",
    "decode_image_bytes",
    "export_format",
    "export_run",
    "load_exported",
    "report_path",
    "tflite_report_path",
]

_publish(__name__, globals(), __all__)
