"""Export a saved run for serving or for devices, and prove that the export computes what the run does.

:func:`export_run` writes a TensorFlow SavedModel (for TF Serving), a TFLite / LiteRT file (for
phones and small devices) or an ONNX file (for ONNX Runtime), then runs the written file in its
own runtime on check images and compares it with the Keras model: top-1 agreement, the largest
probability difference, the accuracy of each when the images have labels, the file size and the
latency at batch 1. The figures go to ``export_report.json`` (inside a SavedModel folder;
``<stem>.export_report.json`` beside a ``.tflite`` file, ``<stem>.onnx.export_report.json``
beside an ``.onnx`` file: :func:`report_path`). A float export
(SavedModel, ONNX, TFLite ``"none"`` or ``"float16"``) that disagrees with the Keras model beyond
:data:`AGREEMENT_TOLERANCE` / :data:`FLOAT32_TOLERANCE` is refused and nothing is written: every
file goes through a temporary name and is renamed only after the check passed.

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

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import io
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import tensorflow as tf

from transferkit._atomic import atomic_path, atomic_paths
from transferkit._errors import ConfigError, DataError, MissingDependencyError, check_choice
from transferkit._finetuner import FineTuner
from transferkit._inference import prediction_input
from transferkit._metrics import Predictions
from transferkit._types import Color, PathLike
from transferkit.data._kinds import Images
from transferkit.data._images import RESIZE_MODES, WHITE, printable
from transferkit.data._pipelines import PipelineSettings, file_pipeline
from transferkit.data._sources import ImageFiles, scan_folder

log = logging.getLogger("transferkit")

FORMATS = ("saved_model", "tflite", "onnx", "hub")
"""What :func:`export_run` writes: a TensorFlow SavedModel folder for serving, a TFLite (LiteRT)
file, an ONNX file, or a TensorFlow Hub module folder (the whole classifier, for ``hub.load``)."""

QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int8-mixed")
"""TFLite weight and activation types: float32, float16 weights, int8 weights (dynamic range),
int8 weights and activations with uint8 input and output (full integer), or int8 with the few
small layers that int8 hurts most kept in float32 and float32 input and output (``"int8-mixed"``)."""

INTEGER_QUANTIZATIONS = ("int8", "int8-mixed")
"""The quantizations with int8 activations, which need calibration images."""

MIXED_ERROR_LIMIT = 2.0
"""``"int8-mixed"`` keeps a layer in float32 when its int8 output's root-mean-square error on the
calibration images exceeds this many quantization steps (and its weights are small, see
:data:`MIXED_WEIGHT_SHARE`); a well-quantized layer's error is about 0.3 step (rounding alone)."""

MIXED_WEIGHT_SHARE = 0.02
"""``"int8-mixed"`` keeps a layer in float32 only if its weights are at most this share of the
model's, so that the file stays about as small as full-integer int8."""

AGREEMENT_TOLERANCE = 0.99
"""A float export must pick the Keras model's top class on at least this share of check images."""

FLOAT32_TOLERANCE = 1e-3
"""A float32 export (SavedModel, TFLite ``"none"``) must give every probability within this of Keras'."""

RANDOM_CHECK_IMAGES = 256
"""Images of random pixels to verify on when no check folder is given (no labels, so no accuracy)."""

LATENCY_RUNS = 20
"""Forward passes at batch 1 whose median is the reported latency (after three warm-up passes)."""

REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}  # the single-file formats
_ONNX_INSTALL = 'pip install "transferkit[onnx]"'

_BATCH = 32  # images per forward pass when comparing outputs
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")
_MIXED_DEBUG_IMAGES = 64  # calibration images on which "int8-mixed" measures each layer's error
_SEED = 0  # the random check images and the calibration sample are the same on every run


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_run` wrote and how closely the written file matches the Keras model.

    Attributes:
        path: The export: a SavedModel or Hub folder, a ``.tflite`` or an ``.onnx`` file.
        format: ``"saved_model"``, ``"tflite"``, ``"onnx"`` or ``"hub"``.
        quantize: One of :data:`QUANTIZATIONS` (TFLite); ``"none"`` otherwise.
        size_bytes: Size of the export on disk (a SavedModel: every file in its folder, without
            ``labels.txt`` and the report).
        checked_on: The check folder, or ``"random pixels"`` when none was given.
        images: How many images the export was compared on.
        agreement: Share of images on which the export's top class is the Keras model's
            (multi-label: share of image × class decisions at 0.5 that agree; regression: ``None``).
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
    images: int
    agreement: float | None
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
                     "max_abs_diff": FLOAT32_TOLERANCE if _is_float32(self.format, self.quantize) else None}
        return {**asdict(self), "files": list(self.files), "tolerance": tolerance if self.enforced else None}

    def describe(self) -> str:
        """One line: what was written, how big, how closely it agrees, how fast."""
        kind = _kind(self.format, self.quantize)
        where = "random-pixel images" if self.checked_on == "random pixels" else f"images from {self.checked_on}"
        agrees = (f"top-1 agreement {self.agreement:.1%}" if self.agreement is not None else "outputs compared")
        accuracy = (f", accuracy {self.accuracy:.3f} vs Keras {self.keras_accuracy:.3f}"
                    if self.accuracy is not None and self.keras_accuracy is not None else "")
        return (f"{kind} {self.path} ({_size(self.size_bytes)}): {agrees} with the Keras model on {self.images} "
                f"{where}, max probability difference {self.max_abs_diff:.2g}{accuracy}; "
                f"{self.latency_ms:.2f} ms/image at batch 1 (Keras {self.keras_latency_ms:.2f} ms)")


def export_run(
    run_dir: PathLike,
    out: PathLike,
    *,
    format: str = "saved_model",
    quantize: str = "none",
    check: PathLike | None = None,
    calibration: PathLike | None = None,
    calibration_images: int = 300,
) -> ExportReport:
    """Export the model of a saved run and verify the written file against the Keras model.

    Args:
        run_dir: A folder written by :meth:`FineTuner.save` (or ``transferkit train``).
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
            ``calibration`` is not given). Without it the export is verified on
            :data:`RANDOM_CHECK_IMAGES` random-pixel images, which proves agreement but says
            nothing about accuracy.
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
        DataError: ``run_dir`` is not a saved run; the check folder's classes differ from the
            model's; a float export disagrees with the Keras model beyond the tolerances (nothing
            is written).

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
    _check_target(target, format)
    if format == "onnx":
        _onnx_modules("Exporting to ONNX", "tf2onnx", "onnx", "onnxruntime")

    tuner = _load(run_dir)
    settings = tuner._image_settings()
    checks = _check_images(tuner, check, settings)
    calibration_set = (_calibration_images(calibration_folder, settings, calibration_images)
                       if quantize in INTEGER_QUANTIZATIONS and calibration_folder is not None else None)

    with _created_parents(target):
        if format == "saved_model":
            return _export_saved_model(tuner, target, checks, settings)
        if format == "hub":
            return _export_hub(tuner, target, checks, settings)
        if format == "onnx":
            return _export_onnx(tuner, target, checks, settings)
        return _export_tflite(tuner, target, quantize, checks, calibration_set)


# ---------------------------------------------------------------------------------------------- decoding


def decode_image_bytes(data: tf.Tensor, *, image_size: int, resize: str = "pad",
                       background: Color = WHITE) -> tf.Tensor:
    """Decode one encoded image (a scalar string tensor) into float32 pixels ``[size, size, 3]``, in TF ops.

    The graph version of :func:`transferkit.data.load_image`, as the ``serving_bytes`` signature
    runs it, step by step: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale as Pillow's draft mode
    does it (accurate integer DCT); its EXIF orientation is applied; PNG, GIF (first frame), BMP
    and WebP are decoded whole; grayscale becomes RGB and an alpha channel is composited onto
    ``background``; an image still at least twice ``image_size`` by a whole factor is shrunk by
    that factor (box average); then ``"pad"`` (keep the aspect ratio, fill the borders with
    ``background``), ``"stretch"`` or ``"crop"`` (centre square) with an antialiased bilinear
    filter, rounded to whole pixel values.

    What remains different from the loader: Pillow resamples in fixed point, one axis at a time,
    so pixel values differ by a level or two (see docs/export.md for measured figures); EXIF
    orientation is read from JPEGs only; a PNG transparency chunk without an alpha channel
    (``tRNS``) is ignored; 16-bit PNGs are scaled to 8 bits by TensorFlow's rule.

    Example:
        >>> pixels = decode_image_bytes(tf.io.read_file("cat.jpg"), image_size=224)
    """
    check_choice("resize", resize, RESIZE_MODES)
    fill = tf.constant([float(c) for c in background], tf.float32)
    side = 2 * image_size  # the loader decodes large images at no less than twice the input size

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(data)
        scale = tf.minimum(shape[0] // side, shape[1] // side)
        ratio = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
        decoders = [functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
                    for r in (1, 2, 4, 8)]
        image = tf.cast(tf.switch_case(ratio, decoders), tf.float32)
        return _orient(_reduce(image, side), _exif_orientation(data))

    def other() -> tf.Tensor:
        image = tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False), tf.float32)
        channels = tf.shape(image)[-1]
        color = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
        alpha = tf.cond(channels % 2 == 0, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1]))
        return _reduce(tf.round(color * alpha + fill * (1.0 - alpha)), side)

    image = tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other), [None, None, 3])
    return _fit(image, image_size, resize, fill)


def _reduce(image: tf.Tensor, side: int) -> tf.Tensor:
    """``Image.reduce``: shrink by the whole factor that keeps both sides at least ``side`` (box average,
    partial boxes at the right and bottom edges), if that factor is 2 or more."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    factor = tf.minimum(height, width) // side

    def box() -> tf.Tensor:
        padding = [[0, (-height) % factor], [0, (-width) % factor], [0, 0]]

        def sums(x: tf.Tensor) -> tf.Tensor:
            x = tf.pad(x, padding)
            size = tf.shape(x)
            return tf.reduce_sum(tf.reshape(x, [size[0] // factor, factor, size[1] // factor, factor, size[2]]),
                                 axis=[1, 3])

        return tf.floor(sums(image) / sums(tf.ones_like(image[..., :1])) + 0.5)

    return tf.cond(factor >= 2, box, lambda: image)


_EXIF_WINDOW = 65536  # an EXIF block is one JPEG APP1 segment: at most 64 KiB, near the start of the file
_EXIF_ENTRIES = 64  # IFD0 entries looked at for the orientation tag (cameras write a dozen or so)


def _exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1–8) of a JPEG, or 1 when it has none or the EXIF block cannot be read.

    Reads the TIFF header after ``Exif\0\0`` into a fixed, zero-padded window, so that a truncated
    or corrupt block gives 1 instead of an error, as Pillow's loader treats it.
    """
    parts = tf.strings.split(tf.strings.substr(data, 0, _EXIF_WINDOW), sep="Exif\x00\x00", maxsplit=1)
    tiff = tf.concat([parts, [""]], axis=0)[1]
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(tiff, 0, _EXIF_WINDOW), tf.uint8), tf.int64)
    raw = tf.pad(raw, [[0, _EXIF_WINDOW - tf.shape(raw)[0]]])
    little = tf.logical_and(tf.equal(raw[0], 0x49), tf.equal(raw[1], 0x49))  # "II": Intel byte order

    def number(position: tf.Tensor, size: int) -> tf.Tensor:
        position = tf.clip_by_value(position, 0, _EXIF_WINDOW - size)
        digits = [tf.gather(raw, position + i) for i in range(size)]
        value_little = tf.add_n([d * 256 ** i for i, d in enumerate(digits)])
        value_big = tf.add_n([d * 256 ** (size - 1 - i) for i, d in enumerate(digits)])
        return tf.where(little, value_little, value_big)

    valid_header = tf.equal(number(tf.constant(2, tf.int64), 2), 42)
    directory = number(tf.constant(4, tf.int64), 4)
    count = number(directory, 2)
    entries = directory + 2 + 12 * tf.range(_EXIF_ENTRIES, dtype=tf.int64)
    found = (tf.range(_EXIF_ENTRIES, dtype=tf.int64) < count) & tf.equal(number(entries, 2), 0x0112)
    found &= (entries + 12 <= _EXIF_WINDOW) & valid_header
    orientation = tf.reduce_max(tf.where(found, number(entries + 8, 2), 0))
    return tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn stored pixels upright as ``PIL.ImageOps.exif_transpose`` does for EXIF orientations 1–8."""
    turns = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    return tf.switch_case(tf.cast(orientation - 1, tf.int32), turns)


def _fit(image: tf.Tensor, size: int, resize: str, fill: tf.Tensor) -> tf.Tensor:
    """``image`` fitted to ``size × size`` as :func:`transferkit.data.resize_image` does it."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    if resize == "stretch":
        out = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    elif resize == "crop":
        # ImageOps.fit: the centred square of side min(height, width), which may start half a pixel in
        side = tf.minimum(height, width)
        scale = tf.cast(size / side, tf.float32)
        top, left = tf.cast((height - side) / 2, tf.float32), tf.cast((width - side) / 2, tf.float32)
        out = tf.raw_ops.ScaleAndTranslate(
            images=image[None], size=tf.constant([size, size]), scale=tf.stack([scale, scale]),
            translation=tf.stack([-top * scale, -left * scale]), kernel_type="triangle", antialias=True)[0]
    else:
        scale = size / tf.maximum(height, width)
        # Python's round() and tf.round both round halves to even, so the sizes match the loader's
        new_height = tf.cast(tf.maximum(tf.round(height * scale), 1.0), tf.int32)
        new_width = tf.cast(tf.maximum(tf.round(width * scale), 1.0), tf.int32)
        resized = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear", antialias=True)
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
        top, left = (size - new_height) // 2, (size - new_width) // 2
        padding = tf.stack([tf.stack([top, size - new_height - top]), tf.stack([left, size - new_width - left]),
                            tf.zeros([2], tf.int32)])
        out = tf.pad(resized - fill, padding) + fill
    return tf.ensure_shape(tf.clip_by_value(tf.round(out), 0.0, 255.0), [size, size, 3])


# ---------------------------------------------------------------------------------------------- SavedModel


class _Serving(tf.Module):
    """The SavedModel's object: the signatures, the variables they read, and the labels asset."""

    def __init__(self, model: Any, settings: PipelineSettings, *, labels: Path | None, with_bytes: bool) -> None:
        super().__init__(name="transferkit_export")
        size = settings.image_size

        def probabilities(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": model(images, training=False)}

        pixels = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
        self.serving_default = tf.function(probabilities, autograph=False, input_signature=[pixels])
        functions = [self.serving_default]
        if with_bytes:
            def decode(data: tf.Tensor) -> tf.Tensor:
                return decode_image_bytes(data, image_size=size, resize=settings.resize,
                                          background=settings.background)

            def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
                images = tf.map_fn(decode, image_bytes,
                                   fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
                return probabilities(images)

            self.serving_bytes = tf.function(
                from_bytes, autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
            functions.append(self.serving_bytes)
        # Loaders that restore variables by name from the graph (TF Serving's C++ loader, the TFLite
        # converter) find only the tf.Variables tracked on the saved object, and a Keras 3 model is
        # not tracked as a child: track the variables the signatures read (as keras.export does).
        seen: dict[int, tf.Variable] = {}
        for function in functions:
            for variable in function.get_concrete_function().variables:
                seen.setdefault(id(variable), variable)
        self.model_variables = list(seen.values())
        if labels is not None:
            self.labels = tf.saved_model.Asset(str(labels))

    def signatures(self) -> dict[str, Any]:
        found = {"serving_default": self.serving_default}
        if hasattr(self, "serving_bytes"):
            found["serving_bytes"] = self.serving_bytes
        return found


def _save(tuner: FineTuner, folder: Path, settings: PipelineSettings, *, with_bytes: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        labels = None
        if with_bytes:  # the full SavedModel carries its labels; the TFLite converter's input does not need them
            labels = Path(scratch) / LABELS_FILE
            labels.write_text(_labels_text(tuner), encoding="utf-8")
        module = _Serving(tuner._require_model(), settings, labels=labels, with_bytes=with_bytes)
        tf.saved_model.save(module, str(folder), signatures=module.signatures())


def _export_saved_model(tuner: FineTuner, target: Path, checks: _Checks, settings: PipelineSettings
                        ) -> ExportReport:
    keras = _keras_call(tuner)
    with atomic_path(target) as folder:
        _save(tuner, folder, settings, with_bytes=True)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        loaded = tf.saved_model.load(str(folder))
        default, from_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]

        def run(images: np.ndarray) -> np.ndarray:
            return np.asarray(default(images=tf.constant(images))["probabilities"])

        keras_outputs, outputs = _compare(checks, keras, run)
        served = _served_outputs(folder, checks)
        if np.all(np.isfinite(served)) and np.all(np.isfinite(outputs)):
            outputs = max((outputs, served), key=lambda found: _max_diff(found, keras_outputs))
        bytes_outputs = np.concatenate([np.asarray(from_bytes(image_bytes=tf.constant(chunk))["probabilities"])
                                        for chunk in checks.encoded_batches()])
        # the check files read by transferkit's loader are the check images themselves
        bytes_reference = keras_outputs if checks.generated is None else keras(checks.generated[1])
        bytes_signature = {"images": len(bytes_outputs),
                           "agreement": _agreement(tuner, bytes_outputs, bytes_reference),
                           "max_abs_diff": _max_diff(bytes_outputs, bytes_reference)}
        side = settings.image_size
        tensors: dict[str, dict[str, Any]] = {
            "input": {"name": "images", "dtype": "float32", "shape": [None, side, side, 3],
                      "signature": "serving_default", "bytes_signature": "serving_bytes",
                      "bytes_input": {"name": "image_bytes", "dtype": "string", "shape": [None]}},
            "output": {"name": "probabilities", "dtype": "float32", "shape": [None, len(_classes(tuner))]},
        }
        report = _report(tuner, target, "saved_model", "none", size, checks, outputs, keras_outputs,
                         latency_ms=_latency(run, checks.first),
                         runtime=f"tf.saved_model.load and a TF1 session, as TF Serving loads it (TensorFlow "
                                 f"{tf.__version__})", tensors=tensors, bytes_signature=bytes_signature,
                         calibration=None, files=(target,))
        _enforce(report, outputs)
        (folder / LABELS_FILE).write_text(_labels_text(tuner), encoding="utf-8")
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("%s", report.describe())
    return report


def _export_hub(tuner: FineTuner, target: Path, checks: _Checks, settings: PipelineSettings) -> ExportReport:
    """The whole classifier as a TF2 Hub module (images in [0, 1], the Hub convention), checked with
    ``hub.load``."""
    import tensorflow_hub as hub

    from transferkit.hub import export_hub_module

    keras = _keras_call(tuner)
    with atomic_path(target) as folder:
        export_hub_module(tuner._require_model(), folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        runner = _HubRunner(folder, hub.load(str(folder)))
        keras_outputs, outputs = _compare(checks, keras, runner)
        side = settings.image_size
        tensors: dict[str, dict[str, Any]] = {
            "input": {"name": "images", "dtype": "float32", "shape": [None, side, side, 3], "range": [0.0, 1.0],
                      "signature": "__call__ (also serving_default)"},
            "output": {"name": "outputs", "dtype": "float32", "shape": [None, len(_classes(tuner))]},
        }
        report = _report(tuner, target, "hub", "none", size, checks, outputs, keras_outputs,
                         latency_ms=_latency(runner, checks.first), runtime=runner.runtime, tensors=tensors,
                         bytes_signature=None, calibration=None, files=(target,))
        _enforce(report, outputs)
        (folder / LABELS_FILE).write_text(_labels_text(tuner), encoding="utf-8")
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("%s", report.describe())
    return report


class _HubRunner:
    """A Hub module of a classifier, called on raw float pixel batches (scaled to [0, 1] for it)."""

    def __init__(self, path: Path, module: Any = None) -> None:
        if module is None:
            import tensorflow_hub as hub

            module = hub.load(str(path))
        self.module = module  # held: the call reads its variables
        self.runtime = f"hub.load (tensorflow_hub {_version('tensorflow-hub')}, TensorFlow {tf.__version__})"
        function = self.module.signatures.get("serving_default")
        self.output_spec = next(iter(function.structured_outputs.values())) if function is not None else None
        self.input_spec = (next(iter(function.structured_input_signature[1].values()))
                           if function is not None else None)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.module(tf.constant(images / 255.0, dtype=tf.float32)), dtype=np.float32)

    def details(self, key: str) -> dict[str, Any]:
        spec = self.input_spec if key == "input" else self.output_spec
        if spec is None:
            return {"name": key, "dtype": "float32", "shape": []}
        return {"name": "images" if key == "input" else "outputs", "dtype": spec.dtype.name,
                "shape": list(spec.shape.as_list())}


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _served_outputs(folder: Path, checks: _Checks) -> np.ndarray:
    """``serving_default`` run as TF Serving runs it: the graph loaded into a session, which restores
    the variables by name (``tf.saved_model.load`` finds them through the object graph instead)."""
    graph = tf.Graph()
    # not `with session:`, which would make its graph the default: the check images are read eagerly
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default(), _quiet_tensorflow():  # the TF1 loader logs a deprecation notice
            meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(folder))
        signature = meta.signature_def["serving_default"]
        given, taken = signature.inputs["images"].name, signature.outputs["probabilities"].name
        return np.concatenate([session.run(taken, {given: batch}) for batch in checks.batches()])
    except (tf.errors.OpError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"The SavedModel export of this run cannot be run as TF Serving loads it: {first}. "
                        f"Nothing was written. Please report this with the run's backbone "
                        f"(TensorFlow {tf.__version__}).") from error
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------- TFLite


def _convert(tuner: FineTuner, settings: PipelineSettings, quantize: str, calibration_set: _Calibration | None
             ) -> tuple[bytes, list[str]]:
    """The TFLite file's bytes, and the layers an ``"int8-mixed"`` conversion kept in float32."""
    with tempfile.TemporaryDirectory() as scratch:
        # From a SavedModel of the inference-mode function: the converter then sees training=False,
        # and freezes the variables it tracks
        _save(tuner, Path(scratch), settings, with_bytes=False)

        def converter() -> Any:
            made = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["serving_default"])
            made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Select-TF ("flex") ops
            if quantize != "none":
                made.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                made.target_spec.supported_types = [tf.float16]
            elif quantize in INTEGER_QUANTIZATIONS:
                if calibration_set is None:
                    raise ConfigError(f"quantize={quantize!r} needs calibration images.")
                made.representative_dataset = calibration_set.batches
                if quantize == "int8":  # "int8-mixed" keeps float32 input and output, as the debugger writes it
                    made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    made.inference_input_type = tf.uint8
                    made.inference_output_type = tf.uint8
            return made

        try:
            if quantize == "int8-mixed":
                assert calibration_set is not None
                return _convert_mixed(converter, calibration_set)
            return bytes(converter().convert()), []
        except ConfigError:
            raise
        except Exception as error:  # the converter raises many types; each means "cannot convert this model"
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            hint = " Try quantize='dynamic' or 'float16'." if quantize in INTEGER_QUANTIZATIONS else ""
            raise ConfigError(f"TFLite cannot convert this model with built-in ops only (quantize={quantize!r}): "
                              f"{first}.{hint}") from error


def _convert_mixed(converter: Callable[[], Any], calibration_set: _Calibration) -> tuple[bytes, list[str]]:
    """int8 everywhere except the layers whose int8 output is furthest from float32 on the
    calibration images (TFLite's quantization debugger measures each layer with float32 inputs)
    among the convolutions and dense layers, if their weights are few; those run in float32 between dequantize and
    quantize ops."""
    debug_images = calibration_set.images[:_MIXED_DEBUG_IMAGES]

    def debug_dataset() -> Iterator[list[np.ndarray]]:
        for image in debug_images:
            yield [image[None].astype(np.float32)]

    with _quiet_tensorflow(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=debug_dataset)
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
        buffer.seek(0)
        full_integer = bytes(debugger.get_nondebug_quantized_model())
        weights = _weight_counts(full_integer)
        total = sum(weights.values()) or 1
        kept = []
        for row in csv.DictReader(buffer):
            error = float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])
            name = row["tensor_name"]
            weighted = row["op_name"] in _WEIGHTED_OPS
            if weighted and error > MIXED_ERROR_LIMIT and weights.get(name, total) <= MIXED_WEIGHT_SHARE * total:
                kept.append(name)
        if not kept:
            return full_integer, []
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept)
        selective = tf.lite.experimental.QuantizationDebugger(
            converter=converter(), debug_dataset=lambda: iter(()), debug_options=options)
        return bytes(selective.get_nondebug_quantized_model()), kept


def _weight_counts(model: bytes) -> dict[str, int]:
    """For each operator output of a TFLite model, how many constant values (weights, biases) its
    operator reads."""
    interpreter = tf.lite.Interpreter(model_content=model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        inputs = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        constant = sum(int(np.prod(t["shape"])) for t in inputs[1:])
        for i in op["outputs"]:
            if i in tensors:
                counts[tensors[i]["name"]] = constant
    return counts


def _interpreter(path: Path) -> tuple[Any, str]:
    """A TFLite interpreter for ``path`` from LiteRT (``ai-edge-litert``), else TensorFlow's deprecated one."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)), f"ai_edge_litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice: LiteRT is the replacement
            interpreter = tf.lite.Interpreter(model_path=str(path))
        return interpreter, (f"tf.lite.Interpreter (TensorFlow {tf.__version__}; "
                             "pip install ai-edge-litert to run it with LiteRT)")


class _TFLiteRunner:
    """Batch-1 calls of a TFLite model with raw float pixels in and probabilities out (quantized or not)."""

    def __init__(self, path: Path) -> None:
        self.interpreter, self.runtime = _interpreter(path)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def one(self, image: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            value = np.clip(np.round(image / scale + zero), info.min, info.max).astype(dtype)
        else:
            value = image.astype(dtype)
        self.interpreter.set_tensor(self.input["index"], value)
        self.interpreter.invoke()
        result = self.interpreter.get_tensor(self.output["index"])
        if np.issubdtype(result.dtype, np.integer):
            scale, zero = self.output["quantization"]
            return ((result.astype(np.float32) - zero) * scale).astype(np.float32)
        return np.asarray(result, dtype=np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.one(images[i:i + 1]) for i in range(len(images))])

    def details(self, key: str) -> dict[str, Any]:
        info = self.input if key == "input" else self.output
        signature = self.interpreter.get_signature_list().get("serving_default", {})
        names = signature.get("inputs" if key == "input" else "outputs", [])
        found: dict[str, Any] = {"name": names[0] if len(names) == 1 else str(info["name"]),
                                 "signature": "serving_default", "tensor": str(info["name"]),
                                 "dtype": np.dtype(info["dtype"]).name,
                                 "shape": [None if d < 0 else int(d) for d in info["shape_signature"]]}
        scale, zero = info["quantization"]
        if scale:
            found.update(scale=float(scale), zero_point=int(zero))
        return found


def _export_tflite(tuner: FineTuner, target: Path, quantize: str, checks: _Checks,
                   calibration_set: _Calibration | None) -> ExportReport:
    model, kept = _convert(tuner, tuner._image_settings(), quantize, calibration_set)
    calibration = calibration_set.describe() if calibration_set is not None else None
    if calibration is not None and quantize == "int8-mixed":
        calibration["float32_layers"] = [name.split(";")[0] for name in kept]  # the fused op's first name
    return _export_file(tuner, target, model, checks, _TFLiteRunner, format="tflite", quantize=quantize,
                        calibration=calibration)


def _export_file(tuner: FineTuner, target: Path, model: bytes, checks: _Checks, runner_type: Any, *, format: str,
                 quantize: str = "none", calibration: dict[str, Any] | None = None, runtime: str = "",
                 opset: int | None = None) -> ExportReport:
    """Write a single-file export (TFLite, ONNX) under temporary names, run it in its runtime against
    the Keras model, and rename it, its labels and its report into place only if it passes."""
    labels, report_file = target.parent / LABELS_FILE, report_path(target)
    with atomic_paths(target, labels, report_file) as (model_tmp, labels_tmp, report_tmp):
        model_tmp.write_bytes(model)
        runner = runner_type(model_tmp)
        keras_outputs, outputs = _compare(checks, _keras_call(tuner), runner)
        given = runner.details("input")
        tensors = {"input": given if opset is None else {**given, "opset": opset},
                   "output": runner.details("output")}
        report = _report(tuner, target, format, quantize, len(model), checks, outputs, keras_outputs,
                         latency_ms=_latency(getattr(runner, "one", runner), checks.first),
                         runtime=runner.runtime + runtime, tensors=tensors, bytes_signature=None,
                         calibration=calibration, files=(target, labels, report_file))
        del runner  # let go of the file before it is renamed (Windows cannot rename an open file)
        _enforce(report, outputs)
        labels_tmp.write_text(_labels_text(tuner), encoding="utf-8")
        report_tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("%s", report.describe())
    return report


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
    if suffix == _SUFFIXES["onnx"]:
        return path.with_name(f"{path.stem}.onnx.{REPORT_FILE}")
    return tflite_report_path(path) if suffix == _SUFFIXES["tflite"] else path / REPORT_FILE


# ---------------------------------------------------------------------------------------------- ONNX

ONNX_METADATA = ("labels", "image_size", "resize", "background")
"""Keys :func:`export_run` writes into an ONNX file's ``metadata_props``: the class names (one a
line, as ``labels.txt``), the input side in pixels, the resize mode and the background as JSON
``[r, g, b]``. ONNX Runtime shows them as ``session.get_modelmeta().custom_metadata_map``."""


def _onnx_modules(purpose: str, *names: str) -> list[Any]:
    """Import the ONNX packages ``names``, or raise one line that says how to install them."""
    found, missing = [], []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"{purpose} needs {' and '.join(missing)}, which "
                                     f"{'is' if len(missing) == 1 else 'are'} not installed. Fix: {_ONNX_INSTALL}")
    return found


@contextlib.contextmanager
def _quiet_onnx_conversion() -> Iterator[None]:
    """tf2onnx logs each step of a conversion, and each op it cannot convert (which the export then
    refuses, naming them); Keras' patch of it for NumPy 2 warns about ``np.object``."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), _quiet_tensorflow():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _convert_onnx(tuner: FineTuner, settings: PipelineSettings) -> tuple[bytes, int]:
    """The run's model as ONNX bytes, and their opset: Keras' ``model.export(format="onnx")`` of an
    inference-mode wrapper, with the input named ``images``, the output ``probabilities``, the batch
    axis ``batch`` and the labels and image settings in the metadata."""
    import keras
    import onnx

    size = settings.image_size
    model = tuner._require_model()
    # model.export calls the model without training=False (keras#19108): random layers would stay
    # in the graph, and ONNX Runtime refuses their ops. The wrapper fixes inference mode.
    pixels = keras.Input((size, size, 3), name="images")
    inference = keras.Model(pixels, model(pixels, training=False), name="transferkit_export")
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    with tempfile.TemporaryDirectory() as scratch, _quiet_onnx_conversion():
        converted = Path(scratch) / "model.onnx"
        try:
            inference.export(str(converted), format="onnx", input_signature=signature, verbose=False)
        except Exception as error:  # tf2onnx raises many types; each means "cannot convert this model"
            raise ConfigError(f"tf2onnx cannot convert this model to ONNX: {_first_line(error)}.") from error
        proto = onnx.load(str(converted))
    graph = proto.graph
    extra = [value.name for value in graph.input if value.name != "images"]
    if extra:
        # keras.layers.Normalization (EfficientNet's first layer) keeps its mean and variance as
        # constant tensors, which tf2onnx turns into graph inputs instead of weights
        raise ConfigError(f"tf2onnx converted this model into a graph that needs inputs besides the images: "
                          f"{', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}: constants it did not freeze "
                          "(keras.layers.Normalization, the first layer of EfficientNet and ConvNeXt, does this). "
                          "Export it as format='saved_model' or 'tflite' instead.")
    unknown = sorted({node.op_type for node in graph.node if not onnx.defs.has(node.op_type, node.domain)})
    if unknown:
        why = (" (TensorFlow's GELU computes Erfc, which tf2onnx cannot convert: onnx/tensorflow-onnx#2347)"
               if "Erfc" in unknown else "")
        raise ConfigError(f"tf2onnx left TensorFlow operations it cannot convert in the ONNX graph: "
                          f"{', '.join(unknown)}{why}. Export it as format='saved_model' or 'tflite' instead.")
    _rename(graph, graph.output[0].name, "probabilities")
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.helper.set_model_props(proto, _onnx_metadata(tuner, settings))
    proto.doc_string = "transferkit export: raw RGB pixels 0-255 in (images), probabilities out"
    onnx.checker.check_model(proto)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), int(opset)


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename the tensor ``old`` of an ONNX graph wherever it is produced, used or declared."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for value in (*graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _onnx_metadata(tuner: FineTuner, settings: PipelineSettings) -> dict[str, str]:
    image = _image_settings(settings)
    values = (_labels_text(tuner), str(image["image_size"]), image["resize"], json.dumps(image["background"]))
    return dict(zip(ONNX_METADATA, values))


class _OnnxRunner:
    """An ONNX model in ONNX Runtime (CPU): raw float pixels in, probabilities out."""

    def __init__(self, model: bytes | Path) -> None:
        (onnxruntime,) = _onnx_modules("Running an ONNX file", "onnxruntime")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: it warns about unused initializers, …
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime.InferenceSession(source, sess_options=options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types: a graph it cannot run
            raise ConfigError(f"ONNX Runtime cannot load this ONNX model: {_first_line(error)}.") from error
        self.input, self.output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        given = {self.input.name: np.asarray(images, dtype=np.float32)}
        return np.asarray(self.session.run([self.output.name], given)[0], dtype=np.float32)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def details(self, key: str) -> dict[str, Any]:
        info = self.input if key == "input" else self.output
        return {"name": info.name, "dtype": "float32" if info.type == "tensor(float)" else info.type,
                "shape": [d if isinstance(d, int) else None for d in info.shape]}


def _export_onnx(tuner: FineTuner, target: Path, checks: _Checks, settings: PipelineSettings) -> ExportReport:
    model, opset = _convert_onnx(tuner, settings)
    return _export_file(tuner, target, model, checks, _OnnxRunner, format="onnx", opset=opset,
                        runtime=f"; converted by Keras {_version('keras')} model.export with "
                                f"tf2onnx {_version('tf2onnx')}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- check images


@dataclass(frozen=True)
class _Checks:
    """The images an export is verified on, as raw float32 pixel batches at the model's size (read
    afresh on each pass, so that a large check folder never sits in memory), with labels if known,
    and encoded files for the bytes signature."""

    description: str
    count: int
    labels: np.ndarray | None
    source: Callable[[], Iterable[np.ndarray]]
    files: tuple[str, ...] | None = None
    generated: tuple[tuple[bytes, ...], np.ndarray] | None = None  # encoded images and the loader's pixels

    def batches(self) -> Iterator[np.ndarray]:
        for batch in self.source():
            yield np.asarray(batch, dtype=np.float32)

    @functools.cached_property
    def first(self) -> np.ndarray:
        """The first image, as a batch of one (for the latency)."""
        return next(self.batches())[:1]

    def encoded_batches(self) -> Iterator[list[bytes]]:
        if self.files is None:
            encoded = list(self.generated[0]) if self.generated is not None else []
            for i in range(0, len(encoded), _BATCH):
                yield encoded[i:i + _BATCH]
            return
        for i in range(0, len(self.files), _BATCH):
            yield [Path(p).read_bytes() for p in self.files[i:i + _BATCH]]


@dataclass(frozen=True)
class _Calibration:
    """The images that set the int8 ranges (uint8, as the loader gives them)."""

    images: np.ndarray
    folder: str

    def batches(self) -> Iterator[list[np.ndarray]]:
        # A black and a white frame pin the observed input range to exactly 0..255, so that the
        # uint8 input takes raw pixels one to one (scale 1, zero point 0) whatever the photos hold.
        frame = np.zeros((1, *self.images.shape[1:]), np.float32)
        yield [frame]
        yield [frame + 255.0]
        for image in self.images:
            yield [image[None].astype(np.float32)]

    def describe(self) -> dict[str, Any]:
        return {"folder": self.folder, "images": len(self.images)}


def _load(run_dir: PathLike) -> FineTuner:
    with warnings.catch_warnings():
        # a saved run's optimizer state is irrelevant to an export
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return FineTuner.load(run_dir)


def _file_batches(files: ImageFiles, settings: PipelineSettings) -> tf.data.Dataset:
    """``(images, labels)`` batches of the files read exactly as evaluation reads them (transferkit's
    loader at the run's image size, resize mode and background), in file order."""
    return file_pipeline(files, PipelineSettings(image_size=settings.image_size, resize=settings.resize,
                                                 background=settings.background, batch_size=_BATCH), cache=False)


def _check_images(tuner: FineTuner, check: PathLike | None, settings: PipelineSettings) -> _Checks:
    if check is None:
        size = settings.image_size

        def random_pixels() -> Iterator[np.ndarray]:
            rng = np.random.default_rng(_SEED)
            for start in range(0, RANDOM_CHECK_IMAGES, _BATCH):
                count = min(_BATCH, RANDOM_CHECK_IMAGES - start)
                yield rng.integers(0, 256, (count, size, size, 3)).astype(np.float32)

        return _Checks("random pixels", RANDOM_CHECK_IMAGES, None, random_pixels,
                       generated=_generated_files(settings))
    files = scan_folder(check)
    classes = _classes(tuner)
    if files.class_names != classes:
        raise DataError(f"The classes in {printable(str(check))!r} {list(files.class_names)} differ from the "
                        f"model's {list(classes)}. A check folder needs DIR/<class>/<images> with the run's classes.")
    batches = _file_batches(files, settings)
    return _Checks(printable(str(check)), len(files), files.labels,
                   lambda: (images.numpy() for images, _ in batches), files=files.paths)


def _generated_files(settings: PipelineSettings, count: int = 16) -> tuple[tuple[bytes, ...], np.ndarray]:
    """Smooth random images of several shapes, as PNG and JPEG files, and the loader's pixels of them."""
    from PIL import Image

    from transferkit.data._images import load_image

    rng = np.random.default_rng(_SEED)
    size = settings.image_size
    encoded, pixels = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(count):
            height, width = (max(1, int(size * f)) for f in rng.uniform(0.6, 2.5, 2))
            coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
            path = Path(scratch) / (f"{i}.png" if i % 2 else f"{i}.jpg")
            coarse.resize((width, height), Image.Resampling.BICUBIC).save(path)
            encoded.append(path.read_bytes())
            pixels.append(load_image(path, image_size=size, resize=settings.resize, background=settings.background))
    return tuple(encoded), np.stack(pixels).astype(np.float32)


def _calibration_images(folder: PathLike, settings: PipelineSettings, limit: int) -> _Calibration:
    """Up to ``limit`` images of ``folder``, taken in turn from each class (seeded), read like the check images."""
    files = scan_folder(folder)
    rng = np.random.default_rng(_SEED)
    strata = files.labels.argmax(axis=1) if files.labels.ndim == 2 else files.labels
    queues = [list(rng.permutation(np.flatnonzero(strata == c))) for c in np.unique(strata)]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(int(queue.pop(0)))
    batches = _file_batches(files.subset(sorted(chosen)), settings)
    images = np.concatenate([np.asarray(x).astype(np.uint8) for x, _ in batches])
    return _Calibration(images, printable(str(folder)))


# ---------------------------------------------------------------------------------------------- comparing


def _classes(tuner: FineTuner) -> tuple[str, ...]:
    return tuner._require_classes()


def _labels_text(tuner: FineTuner) -> str:
    return "".join(f"{name}\n" for name in _classes(tuner))


def _task(tuner: FineTuner) -> str:
    return tuner._head().task


def _keras_call(tuner: FineTuner) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model on a batch, in inference mode, as float32 outputs."""
    model = tuner._require_model()
    return lambda images: np.asarray(model(images, training=False), dtype=np.float32)


def _compare(checks: _Checks, *runs: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """The outputs of each of ``runs`` over the check images, reading each batch once."""
    outputs: list[list[np.ndarray]] = [[] for _ in runs]
    for batch in checks.batches():
        for found, run in zip(outputs, runs):
            found.append(np.asarray(run(batch), dtype=np.float32))
    return [np.concatenate(found) for found in outputs]


def _agreement(tuner: FineTuner, outputs: np.ndarray, reference: np.ndarray) -> float | None:
    task = _task(tuner)
    if task == "single_label":
        return float(np.mean(outputs.argmax(axis=1) == reference.argmax(axis=1)))
    if task == "multi_label":
        return float(np.mean((outputs >= 0.5) == (reference >= 0.5)))
    return None  # regression: only the differences of the outputs say anything


def _max_diff(outputs: np.ndarray, reference: np.ndarray) -> float:
    if not np.all(np.isfinite(outputs)):
        return float("nan")
    return float(np.max(np.abs(outputs.astype(np.float64) - reference)))


def _accuracy(tuner: FineTuner, outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or _task(tuner) != "single_label":
        return None
    return float(np.mean(outputs.argmax(axis=1) == labels))


def _latency(run: Callable[[np.ndarray], Any], image: np.ndarray, *, runs: int = LATENCY_RUNS,
             warmup: int = 3) -> float:
    """Median milliseconds of ``run(image)`` over ``runs`` runs (:data:`LATENCY_RUNS`), after ``warmup`` runs."""
    for _ in range(warmup):
        run(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _keras_latency(tuner: FineTuner, image: np.ndarray) -> float:
    model = tuner._require_model()
    call = tf.function(lambda x: model(x, training=False))
    return _latency(lambda x: np.asarray(call(tf.constant(x))), image)


def _is_float32(format: str, quantize: str) -> bool:
    return format != "tflite" or quantize == "none"


def _kind(format: str, quantize: str) -> str:
    """How reports and errors name an export: ``SavedModel``, ``ONNX``, ``TFLite (int8)`` …"""
    return {"saved_model": "SavedModel", "onnx": "ONNX", "hub": "Hub module"}.get(format, f"TFLite ({quantize})")


def _image_settings(settings: PipelineSettings) -> dict[str, Any]:
    return {"image_size": settings.image_size, "resize": settings.resize,
            "background": [int(c) for c in settings.background]}


def _report(tuner: FineTuner, target: Path, format: str, quantize: str, size: int, checks: _Checks,
            outputs: np.ndarray, keras_outputs: np.ndarray, *, latency_ms: float, runtime: str,
            tensors: dict[str, dict[str, Any]], bytes_signature: dict[str, Any] | None,
            calibration: dict[str, Any] | None, files: tuple[Path, ...]) -> ExportReport:
    return ExportReport(
        path=str(target), format=format, quantize=quantize, size_bytes=int(size), checked_on=checks.description,
        images=checks.count, agreement=_agreement(tuner, outputs, keras_outputs),
        max_abs_diff=_max_diff(outputs, keras_outputs), accuracy=_accuracy(tuner, outputs, checks.labels),
        keras_accuracy=_accuracy(tuner, keras_outputs, checks.labels), latency_ms=latency_ms,
        keras_latency_ms=_keras_latency(tuner, checks.first), runtime=runtime, input=tensors["input"],
        output=tensors["output"], image_settings=_image_settings(tuner._image_settings()),
        bytes_signature=bytes_signature, calibration=calibration,
        enforced=format != "tflite" or quantize in ("none", "float16"), files=tuple(str(f) for f in files),
    )


def _enforce(report: ExportReport, outputs: np.ndarray) -> None:
    """Refuse an export whose outputs are not finite, or a float export that disagrees with Keras."""
    kind = _kind(report.format, report.quantize)
    where = (f"{report.images} random-pixel images" if report.checked_on == "random pixels"
             else f"{report.images} images from {report.checked_on!r}")
    problems, hint = [], ""
    if not np.all(np.isfinite(outputs)):
        problems.append("it gives non-finite outputs (NaN or infinity)")
    elif report.enforced:
        if report.agreement is not None and report.agreement < AGREEMENT_TOLERANCE:
            problems.append(f"its top class agrees with the Keras model's on {report.agreement:.1%} of {where} "
                            f"(at least {AGREEMENT_TOLERANCE:.0%} needed)")
            if report.images < 1 / (1 - AGREEMENT_TOLERANCE):
                hint = (f" With {report.images} images one near tie turned over costs {1 / report.images:.1%}: "
                        "check on a few hundred images.")
        if _is_float32(report.format, report.quantize) and report.max_abs_diff > FLOAT32_TOLERANCE:
            problems.append(f"its outputs differ from the Keras model's by up to {report.max_abs_diff:.3g} on "
                            f"{where} (at most {FLOAT32_TOLERANCE:g} allowed for float32)")
    if problems:
        raise DataError(f"The {kind} export of this run is wrong: {'; '.join(problems)}. Nothing was written to "
                        f"{report.path!r}.{hint} If it persists, please report it with the run's backbone "
                        f"(TensorFlow {tf.__version__}).")


# ---------------------------------------------------------------------------------------------- loading


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
        return next((format for format, suffix in _SUFFIXES.items() if path.suffix.lower() == suffix), None)
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
    runner: _SavedModelRunner | _TFLiteRunner | _OnnxRunner | _HubRunner
    if format == "saved_model":
        runner = _SavedModelRunner(source)
    elif format == "hub":
        runner = _HubRunner(source)
    elif format == "tflite":
        runner = _TFLiteRunner(source)
    else:
        runner = _OnnxRunner(source)
    embedded = runner.metadata if isinstance(runner, _OnnxRunner) else {}
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


class _SavedModelRunner:
    """A SavedModel's ``serving_default`` signature on float pixel batches."""

    def __init__(self, path: Path) -> None:
        self.loaded = tf.saved_model.load(str(path))  # held: the signature reads its variables
        function = self.loaded.signatures.get("serving_default")
        inputs = function.structured_input_signature[1] if function is not None else {}
        if function is None or len(inputs) != 1:
            raise DataError(f"{printable(str(path))!r} has no serving_default signature with one input: it was not "
                            "written by transferkit.export.export_run.")
        (self.input_name, self.input_spec), = inputs.items()
        outputs = function.structured_outputs
        self.output_name = "probabilities" if "probabilities" in outputs else next(iter(outputs))
        self.output_spec = outputs[self.output_name]
        self.function = function
        self.runtime = f"tf.saved_model.load (TensorFlow {tf.__version__})"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        found = self.function(**{self.input_name: tf.constant(images, dtype=tf.float32)})[self.output_name]
        return np.asarray(found, dtype=np.float32)

    def details(self, key: str) -> dict[str, Any]:
        spec = self.input_spec if key == "input" else self.output_spec
        return {"name": self.input_name if key == "input" else self.output_name, "dtype": spec.dtype.name,
                "shape": list(spec.shape.as_list())}


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


# ---------------------------------------------------------------------------------------------- files


def _check_target(target: Path, format: str) -> None:
    if format in _SUFFIXES:
        suffix = _SUFFIXES[format]
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
def _created_parents(target: Path) -> Iterator[None]:
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


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"


__all__ = [
    "AGREEMENT_TOLERANCE",
    "FLOAT32_TOLERANCE",
    "FORMATS",
    "LATENCY_RUNS",
    "ONNX_METADATA",
    "QUANTIZATIONS",
    "RANDOM_CHECK_IMAGES",
    "ExportReport",
    "ExportedModel",
    "decode_image_bytes",
    "export_format",
    "export_run",
    "load_exported",
    "report_path",
    "tflite_report_path",
]
