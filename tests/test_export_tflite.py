"""TFLite exports of a tiny run in every quantization, each run in LiteRT as a device runs it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_export_support import check_pixels, keras_outputs, tflite_export, trained_folders

import transferkit as tk
from transferkit._run import SAMPLES_FILE
from transferkit.export import RANDOM_CHECK_IMAGES, TIE_MARGINS, _tflite, export_run, tflite_report_path

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_folders(tmp_path_factory)


def _interpret(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, dict, dict]:
    """Run a .tflite file at batch 1 with LiteRT (TensorFlow's interpreter without it), dequantizing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in pixels:
        interpreter.set_tensor(given["index"], image[None].astype(given["dtype"]))  # raw pixels as they are
        interpreter.invoke()
        value = interpreter.get_tensor(taken["index"]).astype(np.float32)
        scale, zero_point = taken["quantization"]
        outputs.append((value - zero_point) * scale if scale else value)
    return np.concatenate(outputs), given, taken


# the bounds are what this tiny model measures, with a margin (int8: 17 of 18 top classes agree)
@pytest.mark.parametrize(("quantize", "max_diff", "min_agreement"), [
    ("none", 1e-5, 1.0), ("float16", 1e-3, 1.0), ("dynamic", 1e-2, 1.0), ("int8", 0.1, 0.9)])
def test_tflite_variants_run_in_litert_as_the_report_says(folders, quantize, max_diff, min_agreement):
    out, report = tflite_export(folders, quantize)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["labels.txt", out.name, f"tiny_{quantize}.export_report.json"])
    assert tflite_report_path(out) == out.parent / f"tiny_{quantize}.export_report.json"
    assert report.size_bytes == out.stat().st_size

    _, pixels = check_pixels(folders["check"])
    labels = tk.scan_folder(folders["check"]).labels
    expected = keras_outputs(folders["run"], pixels)
    outputs, given, taken = _interpret(out, pixels)
    agreement = float(np.mean(outputs.argmax(axis=1) == expected.argmax(axis=1)))
    assert report.agreement == pytest.approx(agreement) and agreement >= min_agreement
    assert report.max_abs_diff == pytest.approx(float(np.abs(outputs - expected).max()), abs=1e-6)
    assert report.max_abs_diff <= max_diff
    assert report.accuracy == pytest.approx(np.mean(outputs.argmax(axis=1) == labels))
    assert report.keras_accuracy == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
    margins = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2]
    assert report.tie_margin == pytest.approx(min(2 * report.max_abs_diff, TIE_MARGINS[quantize]))
    assert report.ties_excluded == int(np.sum(margins <= report.tie_margin))
    if quantize == "int8":  # raw pixels go in as they are: uint8, scale 1, zero point 0
        assert given["dtype"] == np.uint8 and given["quantization"] == (1.0, 0)
        assert taken["dtype"] == np.uint8 and taken["quantization"][0] == pytest.approx(1 / 256)
        assert report.calibration == {"folder": str(folders["data"]), "images": 12}
        assert report.enforced is False
    else:
        assert given["dtype"] == taken["dtype"] == np.float32
        assert report.enforced is (quantize != "dynamic")
    written = json.loads(tflite_report_path(out).read_text())
    assert (written["tolerance"] is None) is (quantize in ("dynamic", "int8"))  # quantized: reported, not refused
    assert written["quantize"] == quantize and written["input"]["name"] == "images"
    assert written["output"]["name"] == "probabilities"
    assert written["ties_excluded"] == report.ties_excluded and written["check_source"] == "folder"
    print(f"\n{report.describe()}")  # the figures docs/export.md quotes (pytest -s)


def test_int8_mixed_keeps_the_layers_int8_hurts_most_in_float32(folders, tmp_path, monkeypatch):
    # with no error allowed, every layer with small enough weights stays float32
    monkeypatch.setattr(_tflite, "MIXED_ERROR_LIMIT", 0.0)
    monkeypatch.setattr(_tflite, "MIXED_WEIGHT_SHARE", 0.05)
    out = tmp_path / "mixed.tflite"
    report = export_run(folders["run"], out, format="tflite", quantize="int8-mixed", check=folders["check"],
                        calibration=folders["data"], calibration_images=12)
    kept = report.calibration["float32_layers"]
    ops, tensors = _tflite.operators(out)
    float_ops = {tensors[op["outputs"][0]]["name"].split(";")[0] for op in ops
                 if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
                 and tensors[op["inputs"][0]]["dtype"] == np.float32}
    assert kept and set(kept) == float_ops  # exactly the reported layers compute in float32
    int8 = tflite_export(folders, "int8")
    weights = _tflite.weight_counts(int8[0].read_bytes())  # as the full-integer model has them
    shares = {name.split(";")[0]: count / sum(weights.values()) for name, count in weights.items()}
    assert all(0 < shares[name] <= 0.05 for name in kept) and max(shares.values()) > 0.05  # the big ones stay int8
    interpreter, _ = _tflite.interpreter(out)
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert given["dtype"] == taken["dtype"] == np.float32  # float32 pixels in, probabilities out
    assert report.agreement >= int8[1].agreement and report.enforced is False
    assert json.loads(tflite_report_path(out).read_text())["calibration"]["float32_layers"] == kept


def test_without_a_check_folder_or_litert_it_verifies_on_generated_images_with_tensorflow(folders, tmp_path,
                                                                                         monkeypatch):
    """A run saved without sample images (by an older transferkit) is verified on random pixels."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if ai-edge-litert were not installed
    run = tmp_path / "run"
    shutil.copytree(folders["run"], run)
    (run / SAMPLES_FILE).unlink(missing_ok=True)
    report = export_run(run, tmp_path / "m.tflite", format="tflite")
    assert report.runtime.startswith("tf.lite.Interpreter") and "pip install ai-edge-litert" in report.runtime
    assert report.checked_on == f"{RANDOM_CHECK_IMAGES} generated images (random pixels)"
    assert report.check_source == "generated" and report.images == RANDOM_CHECK_IMAGES
    assert report.accuracy is None and report.keras_accuracy is None and report.max_abs_diff < 1e-5
    assert f"on {RANDOM_CHECK_IMAGES} generated images (random pixels)" in report.describe()
    written = json.loads((tmp_path / "m.export_report.json").read_text())
    assert written["checked_on"] == report.checked_on and written["check_source"] == "generated"
