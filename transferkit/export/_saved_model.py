"""The SavedModel export for TF Serving: pixels in (``serving_default``) or encoded files in
(``serving_bytes``, decoded in the graph), probabilities out; and its runner."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit._atomic import atomic_path
from transferkit._errors import DataError
from transferkit._run import TrainedRun
from transferkit.data._images import printable
from transferkit.data._pipelines import PipelineSettings
from transferkit.export._decode import decode_image_bytes
from transferkit.export._images import CheckImages
from transferkit.export._report import LABELS_FILE, ExportReport, labels_text, make_report
from transferkit.export._runner import first_line, quiet_tensorflow
from transferkit.export._verify import agreement, compare, keras_call, latency, max_diff
from transferkit.export._writing import ExportJob, finish_folder

log = logging.getLogger("transferkit")


class Serving(tf.Module):
    """The SavedModel's object: the signatures, the variables they read, and the labels asset."""

    def __init__(self, model: keras.Model, settings: PipelineSettings, *, labels: Path | None,
                 with_bytes: bool) -> None:
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


def save_serving(run: TrainedRun, folder: Path, *, with_bytes: bool) -> None:
    """Write ``run``'s model as a SavedModel in inference mode (the TFLite converter's input, without
    ``serving_bytes`` and labels; the full export with them)."""
    with tempfile.TemporaryDirectory() as scratch:
        labels = None
        if with_bytes:  # the full SavedModel carries its labels; the TFLite converter's input does not need them
            labels = Path(scratch) / LABELS_FILE
            labels.write_text(labels_text(run), encoding="utf-8")
        module = Serving(run.model, run.image_settings, labels=labels, with_bytes=with_bytes)
        tf.saved_model.save(module, str(folder), signatures=module.signatures())


def export_saved_model(job: ExportJob) -> ExportReport:
    """Write and verify a SavedModel: ``serving_default`` run by ``tf.saved_model.load`` and in a TF1
    session as TF Serving loads it (the worse of the two is reported), ``serving_bytes`` on files."""
    run, target, checks = job.run, job.target, job.checks
    keras_run = keras_call(run)
    with atomic_path(target) as folder:
        save_serving(run, folder, with_bytes=True)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        loaded = tf.saved_model.load(str(folder))
        default, from_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]

        def pixels_in(images: np.ndarray) -> np.ndarray:
            return np.asarray(default(images=tf.constant(images))["probabilities"])

        keras_outputs, outputs = compare(checks, keras_run, pixels_in)
        served = served_outputs(folder, checks)
        if np.all(np.isfinite(served)) and np.all(np.isfinite(outputs)):
            outputs = max((outputs, served), key=lambda found: max_diff(found, keras_outputs))
        comparison = job.comparison("saved_model", outputs, keras_outputs)
        bytes_outputs = np.concatenate([np.asarray(from_bytes(image_bytes=tf.constant(chunk))["probabilities"])
                                        for chunk in checks.encoded_batches()])
        # the check files read by transferkit's loader are the check images themselves
        bytes_reference = keras_outputs if checks.generated is None else keras_run(checks.generated[1])
        bytes_signature = {"images": len(bytes_outputs),
                           "agreement": agreement(run.head.task, bytes_outputs, bytes_reference),
                           "max_abs_diff": max_diff(bytes_outputs, bytes_reference)}
        side = run.image_settings.image_size
        tensors: dict[str, dict[str, Any]] = {
            "input": {"name": "images", "dtype": "float32", "shape": [None, side, side, 3],
                      "signature": "serving_default", "bytes_signature": "serving_bytes",
                      "bytes_input": {"name": "image_bytes", "dtype": "string", "shape": [None]}},
            "output": {"name": "probabilities", "dtype": "float32", "shape": [None, len(run.class_names)]},
        }
        report = make_report(run, target, checks, comparison, size=size, latency_ms=latency(pixels_in, checks.first),
                             runtime=f"tf.saved_model.load and a TF1 session, as TF Serving loads it (TensorFlow "
                                     f"{tf.__version__})", tensors=tensors, bytes_signature=bytes_signature,
                             files=(target,))
        job.refuse_if_wrong(comparison)
        finish_folder(job, folder, report)
    log.info("%s", report.describe())
    return report


def served_outputs(folder: Path, checks: CheckImages) -> np.ndarray:
    """``serving_default`` run as TF Serving runs it: the graph loaded into a session, which restores
    the variables by name (``tf.saved_model.load`` finds them through the object graph instead)."""
    graph = tf.Graph()
    # not `with session:`, which would make its graph the default: the check images are read eagerly
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default(), quiet_tensorflow():  # the TF1 loader logs a deprecation notice
            meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(folder))
        signature = meta.signature_def["serving_default"]
        given, taken = signature.inputs["images"].name, signature.outputs["probabilities"].name
        return np.concatenate([session.run(taken, {given: batch}) for batch in checks.batches()])
    except (tf.errors.OpError, KeyError) as error:
        raise DataError(f"The SavedModel export of this run cannot be run as TF Serving loads it: "
                        f"{first_line(error)}. "
                        f"Nothing was written. Please report this with the run's backbone "
                        f"(TensorFlow {tf.__version__}).") from error
    finally:
        session.close()


class SavedModelRunner:
    """A SavedModel's ``serving_default`` signature on float pixel batches (implements :class:`Runner`)."""

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

    def metadata(self) -> dict[str, str]:
        return {}
