"""What an export is verified on, what is refused, and what is not: wrong exports are, near ties are not."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_image_folder
from test_export_support import SIZE, check_pixels, saved_model_export, trained_folders

import transferkit as tk
from transferkit._run import SAMPLES_FILE
from transferkit.data._pipelines import PipelineSettings
from transferkit.export import AGREEMENT_TOLERANCE, RANDOM_CHECK_IMAGES, TIE_MARGINS, _tflite, _verify, export_run

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_folders(tmp_path_factory)


def _with_samples(folders: dict[str, Path]) -> tk.TrainedRun:
    """The run with the check images kept as its samples, as training keeps validation images."""
    run = tk.TrainedRun.load(folders["run"])
    return dataclasses.replace(run, samples=check_pixels(folders["check"])[1].astype(np.uint8))


def _without_samples(folders: dict[str, Path]) -> tk.TrainedRun:
    """The run as an older transferkit saved it, without sample images."""
    return dataclasses.replace(tk.TrainedRun.load(folders["run"]), samples=None)


@pytest.mark.slow  # 8-12 s on two busy cores: two SavedModel exports (one shared) and a TFLite one
def test_a_failing_verification_writes_nothing_and_keeps_the_previous_export(folders, tmp_path, monkeypatch):
    previous = tmp_path / "serving"
    shutil.copytree(saved_model_export(folders)[0], previous)  # as export_run wrote it
    before = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}

    monkeypatch.setattr(_verify, "AGREEMENT_TOLERANCE", 1.01)  # more than any export can reach
    with pytest.raises(tk.DataError, match=r"top class agrees with the Keras model's on 100.0% of 18 images"):
        export_run(folders["run"], previous, check=folders["check"])
    assert {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(_verify, "AGREEMENT_TOLERANCE", 0.99)
    monkeypatch.setattr(_verify, "FLOAT32_TOLERANCE", 0.0)  # TFLite's float32 kernels differ from TF's by ~1e-7
    out = tmp_path / "new" / "model.tflite"
    with pytest.raises(tk.DataError, match=r"outputs differ from the Keras model's by up to .* Nothing was written"):
        export_run(folders["run"], out, format="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving"]  # no folder, file or temporary left behind


def _permuted(run_dir: Path) -> keras.Model:
    """The run's model with its outputs in another order: every class answered by another's probability."""
    model = tk.TrainedRun.load(run_dir).model
    pixels = keras.Input(model.input_shape[1:])
    (probabilities,) = keras.tree.flatten(model(pixels))
    return keras.Model(pixels, keras.ops.take(probabilities, np.array([1, 2, 0]), axis=1))


def _reweighted(run_dir: Path) -> keras.Model:
    """The run's model with other weights (the same ones, shuffled) in its output layer."""
    model = tk.TrainedRun.load(run_dir).model
    dense = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dense)][-1]
    kernel, *rest = dense.get_weights()
    dense.set_weights([np.random.default_rng(1).permutation(kernel.ravel()).reshape(kernel.shape), *rest])
    return model


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found.extend(_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return found


@pytest.mark.parametrize("wrong", ["permuted outputs", "changed weights"])
@pytest.mark.parametrize("source", ["samples", "generated"])
def test_a_wrong_float16_export_is_still_refused(folders, tmp_path, monkeypatch, wrong, source):
    """Leaving near ties out must not let a wrong export through: its flips are far from any tie."""
    convert = _tflite.convert
    corrupt = _permuted if wrong == "permuted outputs" else _reweighted

    def convert_another_model(run, quantize, calibration):
        return convert(dataclasses.replace(run, model=corrupt(folders["run"])), quantize, calibration)

    monkeypatch.setattr(_tflite, "convert", convert_another_model)
    run = _with_samples(folders) if source == "samples" else _without_samples(folders)
    with pytest.raises(tk.DataError, match=r"TFLite \(float16\) export of this run is wrong: its top class agrees"):
        export_run(run, tmp_path / "m.tflite", format="tflite", quantize="float16")
    assert list(tmp_path.iterdir()) == []


def _near_tie_model() -> keras.Model:
    """A classifier that is torn between its three classes on every image: each weight 2⁻¹⁰ (exact
    in float16) nudged by less than half a float16 step, so float16 rounding decides the top class."""
    pixels = keras.Input((SIZE, SIZE, 3))
    dense = keras.layers.Dense(3, use_bias=False, activation="softmax")
    model = keras.Model(pixels, dense(keras.layers.Flatten()(pixels)))
    rng = np.random.default_rng(0)
    dense.set_weights([(2.0 ** -10 + rng.uniform(-2e-7, 2e-7, (SIZE * SIZE * 3, 3))).astype(np.float32)])
    return model


def test_near_ties_that_float16_rounding_turns_over_do_not_refuse_the_export(tmp_path):
    run = tk.TrainedRun(model=_near_tie_model(), spec=tk.get_backbone("tiny_cnn"), weights=None,
                     class_names=("a", "b", "c"), head=tk.Head(), image_settings=PipelineSettings(image_size=SIZE))
    report = export_run(run, tmp_path / "m.tflite", format="tflite", quantize="float16")
    assert report.check_source == "generated" and report.images == RANDOM_CHECK_IMAGES
    assert report.agreement < AGREEMENT_TOLERANCE  # what refused such exports before near ties were left out
    flips = round((1 - report.agreement) * report.images)
    assert report.ties_excluded >= flips > 0 and report.tie_margin <= TIE_MARGINS["float16"]
    assert report.enforced and (tmp_path / "m.tflite").is_file()
    assert "near ties" in report.describe()
    written = json.loads((tmp_path / "m.export_report.json").read_text())
    assert written["ties_excluded"] == report.ties_excluded and written["tie_margin"] == report.tie_margin


def test_an_export_is_verified_on_the_samples_kept_with_the_run(folders, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(folders["run"], copy)
    _, pixels = check_pixels(folders["check"])
    np.savez_compressed(copy / SAMPLES_FILE, images=pixels.astype(np.uint8))
    report = export_run(copy, tmp_path / "m.tflite", format="tflite", quantize="float16")
    assert report.check_source == "samples" and report.images == len(pixels) == 18
    assert report.checked_on == "samples kept with the run (18 validation images)"
    assert report.agreement == 1.0 and report.accuracy is None
    assert "on 18 validation images kept with the run" in report.describe()
    assert json.loads((tmp_path / "m.export_report.json").read_text())["check_source"] == "samples"

    # a TrainedRun and a FineTuner export as their folder does
    from_run = export_run(tk.TrainedRun.load(copy), tmp_path / "run.tflite", format="tflite")
    assert from_run.check_source == "samples" and from_run.agreement == 1.0
    from_tuner = export_run(tk.FineTuner.load(folders["run"]), tmp_path / "tuner.tflite", format="tflite")
    assert from_tuner.agreement == 1.0 and from_tuner.max_abs_diff < 1e-5

    # samples that do not fit the model's input: verified as a run without them, and said so
    run = dataclasses.replace(tk.TrainedRun.load(folders["run"]), samples=np.zeros((4, 8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        report = export_run(run, tmp_path / "odd.tflite", format="tflite")
    assert report.check_source == "generated" and "not (n, 32, 32, 3)" in caplog.text


def test_option_errors_name_the_option(folders, tmp_path):
    run = folders["run"]
    with pytest.raises(tk.ConfigError, match=r"Expected format to be one of 'saved_model', 'tflite'.*tflite"):
        export_run(run, tmp_path / "m", format="tflight")
    with pytest.raises(tk.ConfigError, match=r"Expected quantize to be one of.*Received: quantize='int4'"):
        export_run(run, tmp_path / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(tk.ConfigError, match="quantize applies to format='tflite' only"):
        export_run(run, tmp_path / "m", quantize="float16")
    for quantize in ("int8", "int8-mixed"):
        with pytest.raises(tk.ConfigError, match=f"quantize='{quantize}' needs calibration images"):
            export_run(run, tmp_path / "m.tflite", format="tflite", quantize=quantize)
    with pytest.raises(tk.ConfigError, match="quantize applies to format='tflite' only; a Hub module"):
        export_run(run, tmp_path / "hub", format="hub", quantize="float16")
    with pytest.raises(tk.ConfigError, match="calibration images are used by quantize='int8' or 'int8-mixed' only"):
        export_run(run, tmp_path / "m.tflite", format="tflite", calibration=folders["data"])
    with pytest.raises(tk.ConfigError, match="calibration_images to be a positive integer"):
        export_run(run, tmp_path / "m.tflite", format="tflite", quantize="int8", check=folders["check"],
                   calibration_images=0)
    with pytest.raises(tk.ConfigError, match=r"a file ending in \.tflite"):
        export_run(run, tmp_path / "model", format="tflite")
    with pytest.raises(tk.ConfigError, match=r"a file ending in \.onnx for format='onnx'"):
        export_run(run, tmp_path / "model.tflite", format="onnx")
    with pytest.raises(tk.ConfigError, match="quantize applies to format='tflite' only; an ONNX file"):
        export_run(run, tmp_path / "m.onnx", format="onnx", quantize="dynamic")
    with pytest.raises(tk.ConfigError, match="holds something other than a SavedModel"):
        export_run(run, run)  # would replace the run folder itself
    with pytest.raises(tk.ConfigError, match=r"Expected run to be a run folder, a FineTuner or a TrainedRun"):
        export_run(42, tmp_path / "m")
    with pytest.raises(tk.DataError, match="is not a saved FineTuner"):
        export_run(tmp_path, tmp_path / "m")
    with pytest.raises(tk.DataError, match=r"The classes in .* differ from the model's"):
        export_run(run, tmp_path / "m", check=write_image_folder(tmp_path / "other", per_class=2,
                                                                colors={"cat": (1, 2, 3), "dog": (9, 9, 9)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
