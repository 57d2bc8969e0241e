"""The TFLite (LiteRT) export in five quantizations, ``"int8-mixed"`` included, and its runner."""

from __future__ import annotations

import csv
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._errors import ConfigError
from transferkit._run import TrainedRun
from transferkit.export._images import CalibrationImages
from transferkit.export._kinds import INTEGER_QUANTIZATIONS
from transferkit.export._report import ExportReport
from transferkit.export._runner import first_line, quiet_tensorflow
from transferkit.export._saved_model import save_serving
from transferkit.export._writing import ExportJob, write_file_export

MIXED_ERROR_LIMIT = 2.0
"""``"int8-mixed"`` keeps a layer in float32 when its int8 output's root-mean-square error on the
calibration images exceeds this many quantization steps (and its weights are small, see
:data:`MIXED_WEIGHT_SHARE`); a well-quantized layer's error is about 0.3 step (rounding alone)."""

MIXED_WEIGHT_SHARE = 0.02
"""``"int8-mixed"`` keeps a layer in float32 only if its weights are at most this share of the
model's, so that the file stays about as small as full-integer int8."""

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")
MIXED_DEBUG_IMAGES = 64  # calibration images on which "int8-mixed" measures each layer's error


def export_tflite(job: ExportJob) -> ExportReport:
    """Convert, write and verify a TFLite file (run at batch 1, as a phone runs it)."""
    model, kept = convert(job.run, job.quantize, job.calibration)
    calibration = job.calibration.describe() if job.calibration is not None else None
    if calibration is not None and job.quantize == "int8-mixed":
        calibration["float32_layers"] = [name.split(";")[0] for name in kept]  # the fused op's first name
    return write_file_export(job, model, TFLiteRunner, format="tflite", calibration=calibration)


def convert(run: TrainedRun, quantize: str, calibration: CalibrationImages | None) -> tuple[bytes, list[str]]:
    """The TFLite file's bytes, and the layers an ``"int8-mixed"`` conversion kept in float32."""
    with tempfile.TemporaryDirectory() as scratch:
        # From a SavedModel of the inference-mode function: the converter then sees training=False,
        # and freezes the variables it tracks
        save_serving(run, Path(scratch), with_bytes=False)

        def converter() -> Any:
            made = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["serving_default"])
            made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Select-TF ("flex") ops
            if quantize != "none":
                made.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                made.target_spec.supported_types = [tf.float16]
            elif quantize in INTEGER_QUANTIZATIONS:
                if calibration is None:
                    raise ConfigError(f"quantize={quantize!r} needs calibration images.")
                made.representative_dataset = calibration.batches
                if quantize == "int8":  # "int8-mixed" keeps float32 input and output, as the debugger writes it
                    made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    made.inference_input_type = tf.uint8
                    made.inference_output_type = tf.uint8
            return made

        try:
            if quantize == "int8-mixed":
                if calibration is None:
                    raise ConfigError(f"quantize={quantize!r} needs calibration images.")
                return convert_mixed(converter, calibration)
            return bytes(converter().convert()), []
        except ConfigError:
            raise
        except Exception as error:  # the converter raises many types; each means "cannot convert this model"
            hint = " Try quantize='dynamic' or 'float16'." if quantize in INTEGER_QUANTIZATIONS else ""
            raise ConfigError(f"TFLite cannot convert this model with built-in ops only (quantize={quantize!r}): "
                              f"{first_line(error)}.{hint}") from error


def convert_mixed(converter: Callable[[], Any], calibration: CalibrationImages) -> tuple[bytes, list[str]]:
    """int8 everywhere except the layers whose int8 output is furthest from float32 on the
    calibration images (TFLite's quantization debugger measures each layer with float32 inputs)
    among the convolutions and dense layers, if their weights are few; those run in float32 between
    dequantize and quantize ops."""
    debug_images = calibration.images[:MIXED_DEBUG_IMAGES]

    def debug_dataset() -> Iterator[list[np.ndarray]]:
        for image in debug_images:
            yield [image[None].astype(np.float32)]

    with quiet_tensorflow(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=debug_dataset)
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
        buffer.seek(0)
        full_integer = bytes(debugger.get_nondebug_quantized_model())
        weights = weight_counts(full_integer)
        total = sum(weights.values()) or 1
        kept = []
        for row in csv.DictReader(buffer):
            error = float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])
            name = row["tensor_name"]
            weighted = row["op_name"] in WEIGHTED_OPS
            if weighted and error > MIXED_ERROR_LIMIT and weights.get(name, total) <= MIXED_WEIGHT_SHARE * total:
                kept.append(name)
        if not kept:
            return full_integer, []
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept)
        selective = tf.lite.experimental.QuantizationDebugger(
            converter=converter(), debug_dataset=lambda: iter(()), debug_options=options)
        return bytes(selective.get_nondebug_quantized_model()), kept


def operators(model: bytes | Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The operators of a TFLite model (``op_name``, ``inputs``, ``outputs``: tensor indices) and its
    tensors by index (``name``, ``dtype``, ``shape`` …), as TensorFlow's interpreter lists them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: only its listing of operators is used
        interpreter = (tf.lite.Interpreter(model_content=model) if isinstance(model, bytes)
                       else tf.lite.Interpreter(model_path=str(model)))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    # the one interpreter that lists operators does so only through this method
    return list(interpreter._get_ops_details()), tensors


def weight_counts(model: bytes) -> dict[str, int]:
    """For each operator output of a TFLite model, how many constant values (weights, biases) its
    operator reads."""
    ops, tensors = operators(model)
    counts: dict[str, int] = {}
    for op in ops:
        inputs = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        constant = sum(int(np.prod(t["shape"])) for t in inputs[1:])
        for i in op["outputs"]:
            if i in tensors:
                counts[tensors[i]["name"]] = constant
    return counts


def interpreter(path: Path) -> tuple[Any, str]:
    """A TFLite interpreter for ``path`` from LiteRT (``ai-edge-litert``), else TensorFlow's deprecated
    one, and what it is (the report's ``runtime``)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)), f"ai_edge_litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice: LiteRT is the replacement
            found = tf.lite.Interpreter(model_path=str(path))
        return found, (f"tf.lite.Interpreter (TensorFlow {tf.__version__}; "
                       "pip install ai-edge-litert to run it with LiteRT)")


class TFLiteRunner:
    """Batch-1 calls of a TFLite model with raw float pixels in and probabilities out, quantized or
    not (implements :class:`Runner`)."""

    def __init__(self, path: Path) -> None:
        self.interpreter, self.runtime = interpreter(path)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def one(self, image: np.ndarray) -> np.ndarray:
        """The outputs for a batch of one image (the input's batch size)."""
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
        if len(images) == 1:  # the latency's call: nothing to gather
            return self.one(images)
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

    def metadata(self) -> dict[str, str]:
        return {}
