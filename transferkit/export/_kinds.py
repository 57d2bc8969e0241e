"""The kinds of export: formats, TFLite quantizations, and how reports and errors name each."""

from __future__ import annotations

FORMATS = ("saved_model", "tflite", "onnx", "hub")
"""What :func:`~transferkit.export.export_run` writes: a TensorFlow SavedModel folder for serving, a
TFLite (LiteRT) file, an ONNX file, or a TensorFlow Hub module folder (the whole classifier, for
``hub.load``)."""

QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int8-mixed")
"""TFLite weight and activation types: float32, float16 weights, int8 weights (dynamic range),
int8 weights and activations with uint8 input and output (full integer), or int8 with the few
small layers that int8 hurts most kept in float32 and float32 input and output (``"int8-mixed"``)."""

INTEGER_QUANTIZATIONS = ("int8", "int8-mixed")
"""The quantizations with int8 activations, which need calibration images."""

ENFORCED_QUANTIZATIONS = ("none", "float16")
"""The quantizations held to the agreement tolerance; the others lose some agreement by design and
are reported only."""


def is_float32(format: str, quantize: str) -> bool:
    """Whether the export computes in float32 like the Keras model (every format but a quantized TFLite file)."""
    return format != "tflite" or quantize == "none"


def kind_name(format: str, quantize: str) -> str:
    """How reports and errors name an export: ``SavedModel``, ``ONNX``, ``TFLite (int8)`` …"""
    return {"saved_model": "SavedModel", "onnx": "ONNX", "hub": "Hub module"}.get(format, f"TFLite ({quantize})")
