"""The ONNX export, converted by Keras' ``model.export(format="onnx")`` (tf2onnx) and run in ONNX
Runtime; and its runner."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._errors import ConfigError, MissingDependencyError
from transferkit._run import TrainedRun
from transferkit.export._report import ExportReport, image_settings, labels_text
from transferkit.export._runner import first_line, quiet_tensorflow, version
from transferkit.export._writing import ExportJob, write_file_export

ONNX_METADATA = ("labels", "image_size", "resize", "background")
"""Keys :func:`export_run` writes into an ONNX file's ``metadata_props``: the class names (one a
line, as ``labels.txt``), the input side in pixels, the resize mode and the background as JSON
``[r, g, b]``. ONNX Runtime shows them as ``session.get_modelmeta().custom_metadata_map``."""

ONNX_INSTALL = 'pip install "transferkit[onnx]"'


def export_onnx(job: ExportJob) -> ExportReport:
    """Convert, write and verify an ONNX file (run in ONNX Runtime on the CPU)."""
    model, opset = convert_onnx(job.run)
    return write_file_export(job, model, OnnxRunner, format="onnx", input_extra={"opset": opset},
                             runtime=f"; converted by Keras {version('keras')} model.export with "
                                     f"tf2onnx {version('tf2onnx')}")


def onnx_modules(purpose: str, *names: str) -> list[Any]:
    """Import the ONNX packages ``names``, or raise one line that says how to install them."""
    found, missing = [], []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"{purpose} needs {' and '.join(missing)}, which "
                                     f"{'is' if len(missing) == 1 else 'are'} not installed. Fix: {ONNX_INSTALL}")
    return found


@contextlib.contextmanager
def _quiet_onnx_conversion() -> Iterator[None]:
    """tf2onnx logs each step of a conversion, and each op it cannot convert (which the export then
    refuses, naming them); Keras' patch of it for NumPy 2 warns about ``np.object``."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), quiet_tensorflow():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def convert_onnx(run: TrainedRun) -> tuple[bytes, int]:
    """The run's model as ONNX bytes, and their opset: Keras' ``model.export(format="onnx")`` of an
    inference-mode wrapper, with the input named ``images``, the output ``probabilities``, the batch
    axis ``batch`` and the labels and image settings in the metadata."""
    import keras
    import onnx

    size = run.image_settings.image_size
    # model.export calls the model without training=False (keras#19108): random layers would stay
    # in the graph, and ONNX Runtime refuses their ops. The wrapper fixes inference mode.
    pixels = keras.Input((size, size, 3), name="images")
    inference = keras.Model(pixels, run.model(pixels, training=False), name="transferkit_export")
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    with tempfile.TemporaryDirectory() as scratch, _quiet_onnx_conversion():
        converted = Path(scratch) / "model.onnx"
        try:
            inference.export(str(converted), format="onnx", input_signature=signature, verbose=False)
        except Exception as error:  # tf2onnx raises many types; each means "cannot convert this model"
            raise ConfigError(f"tf2onnx cannot convert this model to ONNX: {first_line(error)}.") from error
        proto = onnx.load(str(converted))
    graph = proto.graph
    extra = [value.name for value in graph.input if value.name != "images"]
    if extra:
        # keras.layers.Normalization (EfficientNet's first layer) keeps its mean and variance as
        # constant tensors, which tf2onnx turns into graph inputs instead of weights; so do the
        # position embeddings of KerasHub's ViT
        raise ConfigError(f"tf2onnx converted this model into a graph that needs inputs besides the images: "
                          f"{', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}: constants it did not freeze "
                          "(keras.layers.Normalization, the first layer of keras.applications' EfficientNet and "
                          "ConvNeXt, and the position embeddings of KerasHub's ViT do this). "
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
    onnx.helper.set_model_props(proto, onnx_metadata(run))
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


def onnx_metadata(run: TrainedRun) -> dict[str, str]:
    """What an ONNX export carries in its ``metadata_props`` (:data:`ONNX_METADATA`)."""
    image = image_settings(run.image_settings)
    values = (labels_text(run), str(image["image_size"]), image["resize"], json.dumps(image["background"]))
    return dict(zip(ONNX_METADATA, values))


class OnnxRunner:
    """An ONNX model in ONNX Runtime (CPU): raw float pixels in, probabilities out (implements :class:`Runner`)."""

    def __init__(self, model: bytes | Path) -> None:
        (onnxruntime,) = onnx_modules("Running an ONNX file", "onnxruntime")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: it warns about unused initializers, …
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime.InferenceSession(source, sess_options=options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types: a graph it cannot run
            raise ConfigError(f"ONNX Runtime cannot load this ONNX model: {first_line(error)}.") from error
        self.input, self.output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        given = {self.input.name: np.asarray(images, dtype=np.float32)}
        return np.asarray(self.session.run([self.output.name], given)[0], dtype=np.float32)

    def details(self, key: str) -> dict[str, Any]:
        info = self.input if key == "input" else self.output
        return {"name": info.name, "dtype": "float32" if info.type == "tensor(float)" else info.type,
                "shape": [d if isinstance(d, int) else None for d in info.shape]}

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)
