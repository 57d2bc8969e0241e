"""ONNX exports of a tiny run, run in ONNX Runtime; graphs it cannot run are refused."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export_support import SIZE, check_pixels, keras_outputs, needs_onnx, onnx_export, trained_folders

import transferkit as tk
from transferkit.export import _verify, export_run, load_exported, report_path

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_folders(tmp_path_factory)


def test_onnx_export_runs_in_onnxruntime_as_the_report_says(folders):
    out, report = onnx_export(folders)
    import onnx
    import onnxruntime

    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.txt", "tiny.onnx", "tiny.onnx.export_report.json"]
    # model.onnx and model.tflite can share a folder without one report replacing the other
    assert report_path(out) == out.parent / "tiny.onnx.export_report.json" != report_path(out.with_suffix(".tflite"))
    assert report.size_bytes == out.stat().st_size

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # plain ONNX Runtime
    (given,), (taken,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape) == ("images", "tensor(float)", ["batch", SIZE, SIZE, 3])
    assert (taken.name, taken.shape) == ("probabilities", ["batch", 3])
    assert session.get_modelmeta().custom_metadata_map == {
        "labels": "blue\ngreen\nred\n", "image_size": str(SIZE), "resize": "pad", "background": "[255, 255, 255]"}
    assert not [n.op_type for n in onnx.load(str(out)).graph.node if "Random" in n.op_type]  # inference mode

    _, pixels = check_pixels(folders["check"])
    labels = tk.scan_folder(folders["check"]).labels
    expected = keras_outputs(folders["run"], pixels)
    outputs = session.run(["probabilities"], {"images": pixels})[0]
    assert report.agreement == 1.0 and (outputs.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert report.max_abs_diff == pytest.approx(float(np.abs(outputs - expected).max()), abs=1e-6)
    assert report.max_abs_diff < 1e-5 and report.enforced is True
    assert report.accuracy == report.keras_accuracy == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
    written = json.loads(report_path(out).read_text())
    assert written["format"] == "onnx" and written["quantize"] == "none" and written["bytes_signature"] is None
    assert written["tolerance"] == {"agreement": 0.99, "max_abs_diff": 1e-3}
    assert written["input"]["name"] == "images" and written["input"]["opset"] >= 13
    assert written["output"] == {"name": "probabilities", "dtype": "float32", "shape": [None, 3]}
    assert written["runtime"].startswith("onnxruntime ") and "tf2onnx" in written["runtime"]
    assert written["image_settings"] == {"image_size": SIZE, "resize": "pad", "background": [255, 255, 255]}
    assert "ONNX" in report.describe()
    print(f"\n{report.describe()}")


def test_onnx_exports_that_onnxruntime_cannot_run_or_that_disagree_write_nothing(folders, tmp_path, monkeypatch):
    """keras.layers.Normalization (EfficientNet's first layer) keeps its mean and variance as constant
    tensors, which tf2onnx leaves as graph inputs: the file would not run. It is refused, as is an
    export outside the tolerances."""
    needs_onnx()
    import keras

    run = tk.TrainedRun.load(folders["run"])
    pixels = keras.Input((SIZE, SIZE, 3))
    normalized = keras.Model(pixels, run.model(keras.layers.Normalization(mean=0.0, variance=1.0)(pixels)))
    out = tmp_path / "new" / "model.onnx"
    with pytest.raises(tk.ConfigError, match=r"graph that needs inputs besides the images.*Normalization"):
        export_run(dataclasses.replace(run, model=normalized), out, format="onnx")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(_verify, "AGREEMENT_TOLERANCE", 1.01)  # more than any export can reach
    with pytest.raises(tk.DataError, match=r"The ONNX export of this run is wrong: .* Nothing was written"):
        export_run(run, out, format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_its_packages_says_how_to_install_them(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(tk.MissingDependencyError, match=r'needs .*onnxruntime.* Fix: pip install "transferkit\[onnx\]"'
                       ) as missing:
        export_run(folders["run"], tmp_path / "m.onnx", format="onnx")
    assert "\n" not in str(missing.value)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(tk.MissingDependencyError, match=r'Running an ONNX file needs onnxruntime.*transferkit\[onnx\]'):
        load_exported(tmp_path / "m.onnx")
