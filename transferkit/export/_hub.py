"""The TensorFlow Hub module export: the whole classifier for ``hub.load`` (images in [0, 1], the Hub
convention), and its runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._atomic import atomic_path
from transferkit.export._report import ExportReport, make_report
from transferkit.export._runner import version
from transferkit.export._verify import latency
from transferkit.export._writing import ExportJob, finish_folder

log = logging.getLogger("transferkit")


def export_hub(job: ExportJob) -> ExportReport:
    """Write the classifier as a TF2 Hub module and verify it with ``hub.load``."""
    from transferkit.hub import export_hub_module

    run, target, checks = job.run, job.target, job.checks
    with atomic_path(target) as folder:
        export_hub_module(run.model, folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        runner = HubRunner(folder)
        comparison = job.compare("hub", runner)
        side = run.image_settings.image_size
        tensors: dict[str, dict[str, Any]] = {
            "input": {"name": "images", "dtype": "float32", "shape": [None, side, side, 3], "range": [0.0, 1.0],
                      "signature": "__call__ (also serving_default)"},
            "output": {"name": "outputs", "dtype": "float32", "shape": [None, len(run.class_names)]},
        }
        report = make_report(run, target, checks, comparison, size=size, latency_ms=latency(runner, checks.first),
                             runtime=runner.runtime, tensors=tensors, files=(target,))
        job.refuse_if_wrong(comparison)
        finish_folder(job, folder, report)
    log.info("%s", report.describe())
    return report


class HubRunner:
    """A Hub module of a classifier, called on raw float pixel batches (scaled to [0, 1] for it;
    implements :class:`Runner`)."""

    def __init__(self, path: Path) -> None:
        import tensorflow_hub as hub

        self.module = hub.load(str(path))  # held: the call reads its variables
        self.runtime = f"hub.load (tensorflow_hub {version('tensorflow-hub')}, TensorFlow {tf.__version__})"
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

    def metadata(self) -> dict[str, str]:
        return {}
