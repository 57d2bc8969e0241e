"""SavedModel and Hub module exports of a tiny run: signatures, TF Serving's loader, decoding in the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_export_support import (
    CLASSES,
    SIZE,
    check_pixels,
    hub_export,
    keras_outputs,
    saved_model_export,
    trained_folders,
)

import transferkit as tk
from transferkit.data import load_image
from transferkit.export import decode_image_bytes, export_run

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_folders(tmp_path_factory)


def test_hub_export_is_the_whole_classifier_for_hub_load(folders):
    import tensorflow_hub as hub

    out, report = hub_export(folders)
    assert {"saved_model.pb", "variables", "labels.txt", "export_report.json"} <= {p.name for p in out.iterdir()}
    assert (out / "labels.txt").read_text().split() == CLASSES
    _, pixels = check_pixels(folders["check"])
    expected = keras_outputs(folders["run"], pixels)
    module = hub.load(str(out))
    found = module(tf.constant(pixels / 255.0, tf.float32)).numpy()  # the Hub convention: images in [0, 1]
    np.testing.assert_allclose(found, expected, atol=1e-5)
    served = module.signatures["serving_default"](tf.constant(pixels / 255.0, tf.float32))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), expected, atol=1e-5)
    assert report.format == "hub" and report.agreement == 1.0 and report.max_abs_diff <= 1e-5
    assert report.enforced and report.input["range"] == [0.0, 1.0]
    assert json.loads((out / "export_report.json").read_text())["format"] == "hub"


def test_saved_model_signatures_match_the_keras_model(folders):
    out, report = saved_model_export(folders)
    assert {p.name for p in out.iterdir()} >= {"saved_model.pb", "variables", "assets", "labels.txt",
                                              "export_report.json"}
    assert (out / "labels.txt").read_text().split() == CLASSES
    assert (out / "assets" / "labels.txt").read_text() == (out / "labels.txt").read_text()

    loaded = tf.saved_model.load(str(out))  # plain TensorFlow: no transferkit, no Keras objects
    assert Path(loaded.labels.asset_path.numpy().decode()).read_text().split() == CLASSES
    default, from_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    assert default.structured_input_signature[1]["images"] == tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32,
                                                                              name="images")
    assert from_bytes.structured_input_signature[1]["image_bytes"].dtype == tf.string
    paths, pixels = check_pixels(folders["check"])
    expected = keras_outputs(folders["run"], pixels)
    labels = tk.scan_folder(folders["check"]).labels
    assert np.mean(expected.argmax(axis=1) == labels) >= 0.75  # a model that learned something (chance: 1/3)

    probabilities = default(images=tf.constant(pixels))["probabilities"].numpy()
    assert np.abs(probabilities - expected).max() < 1e-5
    from_files = from_bytes(image_bytes=tf.constant([p.read_bytes() for p in paths]))["probabilities"].numpy()
    # the graph decodes within two pixel levels of the loader (test_bytes_decoding_follows_the_loader);
    # on this model that moves a probability by at most ~1e-3
    assert (from_files.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(from_files - expected).max() < 5e-3

    written = json.loads((out / "export_report.json").read_text())
    assert written["format"] == "saved_model" and written["images"] == len(paths) == 18
    assert written["checked_on"] == str(folders["check"]) and written["check_source"] == "folder"
    assert written["agreement"] == report.agreement == 1.0
    assert written["ties_excluded"] == 0 and written["decisive_agreement"] == 1.0
    assert written["accuracy"] == written["keras_accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
    assert written["max_abs_diff"] < 1e-5 and written["enforced"] is True
    assert written["bytes_signature"]["agreement"] == 1.0 and written["bytes_signature"]["images"] == 18
    assert written["size_bytes"] == report.size_bytes > 0 and written["latency_ms"] > 0
    assert written["tolerance"] == {"agreement": 0.99, "max_abs_diff": 1e-3}
    assert "SavedModel" in report.describe() and "100.0%" in report.describe()
    assert f"18 images from {str(folders['check'])!r}, no near ties" in report.describe()


def test_saved_model_runs_in_a_tf1_session_as_tf_serving_loads_it(folders):
    """TF Serving's C++ loader restores variables by name from the graph; so does a TF1 session."""
    out, _ = saved_model_export(folders)
    paths, pixels = check_pixels(folders["check"])
    expected = keras_outputs(folders["run"], pixels)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(out))
        default, from_bytes = meta.signature_def["serving_default"], meta.signature_def["serving_bytes"]
        assert default.method_name == "tensorflow/serving/predict"
        probabilities = session.run(default.outputs["probabilities"].name, {default.inputs["images"].name: pixels})
        decoded = session.run(from_bytes.outputs["probabilities"].name,
                              {from_bytes.inputs["image_bytes"].name: [p.read_bytes() for p in paths]})
    assert np.abs(probabilities - expected).max() < 1e-5
    assert (decoded.argmax(axis=1) == expected.argmax(axis=1)).all()


def _files(tmp_path: Path) -> list[Path]:
    images = []
    rng = np.random.default_rng(3)
    for i, (height, width) in enumerate([(24, 40), (41, 23), (33, 33), (300, 140), (70, 900)]):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        image = coarse.resize((width, height), Image.Resampling.BICUBIC)
        for suffix in (".png", ".jpg"):
            image.save(tmp_path / f"{i}{suffix}", quality=90)
            images.append(tmp_path / f"{i}{suffix}")
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 4), dtype=np.uint8), "RGBA")
    coarse.resize((45, 30), Image.Resampling.BICUBIC).save(tmp_path / "alpha.png")
    coarse.convert("L").resize((45, 30)).save(tmp_path / "gray.jpg")
    coarse.convert("RGB").convert("P").resize((30, 45)).save(tmp_path / "palette.png")
    images += [tmp_path / "alpha.png", tmp_path / "gray.jpg", tmp_path / "palette.png"]
    sideways = coarse.convert("RGB").resize((50, 30), Image.Resampling.BICUBIC)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"orientation{orientation}.jpg"
        sideways.save(path, exif=exif.tobytes(), quality=90)
        images.append(path)
    return images


@pytest.mark.parametrize("resize", ["pad", "stretch", "crop"])
def test_bytes_decoding_follows_the_loader(tmp_path, resize):
    """JPEG draft scaling, box reduction, EXIF orientation, alpha, grayscale and palettes, each resize mode."""
    background = (255, 128, 0)
    for path in _files(tmp_path):
        expected = load_image(path, image_size=SIZE, resize=resize, background=background).astype(np.float32)
        decoded = decode_image_bytes(tf.constant(path.read_bytes()), image_size=SIZE, resize=resize,
                                     background=background).numpy()
        assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.float32
        difference = np.abs(decoded - expected)
        assert difference.max() <= 2 and difference.mean() < 0.5, (path.name, difference.max(), difference.mean())


@pytest.mark.parametrize("format", ["saved_model", "tflite"])
def test_an_export_that_lost_its_weights_is_refused(folders, tmp_path, monkeypatch, format):
    """The natural tf.Module export (the Keras model as an attribute) writes a SavedModel that
    tf.saved_model.load runs, but whose variables TF Serving's loader and the TFLite converter do
    not find: the session fails, the TFLite file runs without weights. Verification catches both."""
    from transferkit.export import _saved_model

    track = _saved_model.Serving.__init__

    def keep_the_model_instead(self, model, *args, **kwargs):
        track(self, model, *args, **kwargs)
        del self.model_variables
        self.model = model

    monkeypatch.setattr(_saved_model.Serving, "__init__", keep_the_model_instead)
    out = tmp_path / ("model.tflite" if format == "tflite" else "serving")
    refused = "cannot be run as TF Serving loads it" if format == "saved_model" else r"TFLite \(none\) export .* wrong"
    with pytest.raises(tk.DataError, match=refused):
        export_run(folders["run"], out, format=format, check=folders["check"])
    assert list(tmp_path.iterdir()) == []
