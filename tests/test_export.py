"""Exports: a SavedModel, four TFLite variants and an ONNX file of a tiny run, each checked in its own
runtime, and each loaded back to predict as the run does."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import CLASS_COLORS, NetworkBlocked, write_image_folder
from PIL import Image

import transferkit as tk
import transferkit.export as export
from transferkit.cli import main
from transferkit.data import load_image
from transferkit.export import (
    ExportReport,
    decode_image_bytes,
    export_format,
    export_run,
    load_exported,
    report_path,
    tflite_report_path,
)

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")

SIZE = 32  # tiny_cnn's input size, which the run keeps
SHAPES = [(24, 40), (40, 24), (30, 30), (64, 48), (20, 36), (90, 60)]  # (height, width): pad mode really pads


def _noisy(color: tuple[int, int, int], shape: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color, np.float64) + rng.normal(0, 25, (*shape, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_photos(root: Path, *, per_class: int, seed: int) -> Path:
    """root/<class>/ images whose colour gives the class away, in several aspect ratios (so that
    "pad" really pads), as JPEG and PNG; the first of each class is stored sideways with an EXIF
    orientation (6: rotate 90° clockwise) that turns it upright."""
    for c, (name, color) in enumerate(CLASS_COLORS.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = _noisy(color, SHAPES[i % len(SHAPES)], seed=seed + 100 * c + i)
            if i == 0:
                exif = Image.Exif()
                exif[0x0112] = 6
                image.transpose(Image.Transpose.ROTATE_90).save(folder / f"{i}.jpg", exif=exif.tobytes(), quality=90)
            else:
                image.save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=90)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny run (about 0.9 accuracy on the check images) and its data; trained offline, once."""
    root = tmp_path_factory.mktemp("export")
    data = write_photos(root / "data", per_class=8, seed=0)
    check = write_photos(root / "check", per_class=6, seed=5000)  # images the run never saw

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlocked("network access is blocked in tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setenv("KERAS_HOME", str(root / "keras_home"))
        assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "15",
                     "--learning-rate", "0.03", "--fine-tune-epochs", "0", "--refit", "never", "--seed", "0",
                     "--out", str(root / "run")]) == 0
    return {"run": root / "run", "data": data, "check": check, "root": root}


def _check_pixels(check: Path) -> tuple[list[Path], np.ndarray]:
    files = tk.scan_folder(check)
    paths = [Path(p) for p in files.paths]
    pixels = np.stack([load_image(p, image_size=SIZE) for p in paths]).astype(np.float32)
    return paths, pixels


def _keras(run: Path, pixels: np.ndarray) -> np.ndarray:
    return tk.FineTuner.load(run).model(pixels, training=False).numpy()


@pytest.fixture(scope="module")
def saved_model(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    out = folders["root"] / "serving" / "tiny" / "1"
    return out, export_run(folders["run"], out, check=folders["check"])


@pytest.fixture(scope="module")
def hub_export(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    out = folders["root"] / "hub" / "tiny_classifier"
    return out, export_run(folders["run"], out, format="hub", check=folders["check"])


def test_hub_export_is_the_whole_classifier_for_hub_load(folders, hub_export):
    import tensorflow_hub as hub

    out, report = hub_export
    assert {"saved_model.pb", "variables", "labels.txt", "export_report.json"} <= {p.name for p in out.iterdir()}
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    _, pixels = _check_pixels(folders["check"])
    expected = _keras(folders["run"], pixels)
    module = hub.load(str(out))
    found = module(tf.constant(pixels / 255.0, tf.float32)).numpy()  # the Hub convention: images in [0, 1]
    np.testing.assert_allclose(found, expected, atol=1e-5)
    served = module.signatures["serving_default"](tf.constant(pixels / 255.0, tf.float32))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), expected, atol=1e-5)
    assert report.format == "hub" and report.agreement == 1.0 and report.max_abs_diff <= 1e-5
    assert report.enforced and report.input["range"] == [0.0, 1.0]
    assert json.loads((out / "export_report.json").read_text())["format"] == "hub"


def test_saved_model_signatures_match_the_keras_model(folders, saved_model):
    out, report = saved_model
    assert {p.name for p in out.iterdir()} >= {"saved_model.pb", "variables", "assets", "labels.txt",
                                              "export_report.json"}
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    assert (out / "assets" / "labels.txt").read_text() == (out / "labels.txt").read_text()

    loaded = tf.saved_model.load(str(out))  # plain TensorFlow: no transferkit, no Keras objects
    assert Path(loaded.labels.asset_path.numpy().decode()).read_text().split() == ["blue", "green", "red"]
    default, from_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    assert default.structured_input_signature[1]["images"] == tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32,
                                                                              name="images")
    assert from_bytes.structured_input_signature[1]["image_bytes"].dtype == tf.string
    paths, pixels = _check_pixels(folders["check"])
    expected = _keras(folders["run"], pixels)
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
    assert written["agreement"] == report.agreement == 1.0
    assert written["accuracy"] == written["keras_accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
    assert written["max_abs_diff"] < 1e-5 and written["enforced"] is True
    assert written["bytes_signature"]["agreement"] == 1.0 and written["bytes_signature"]["images"] == 18
    assert written["size_bytes"] == report.size_bytes > 0 and written["latency_ms"] > 0
    assert written["tolerance"] == {"agreement": 0.99, "max_abs_diff": 1e-3}
    assert "SavedModel" in report.describe() and "100.0%" in report.describe()


def test_saved_model_runs_in_a_tf1_session_as_tf_serving_loads_it(folders, saved_model):
    """TF Serving's C++ loader restores variables by name from the graph; so does a TF1 session."""
    out, _ = saved_model
    paths, pixels = _check_pixels(folders["check"])
    expected = _keras(folders["run"], pixels)
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


@pytest.fixture(scope="module")
def tflite_exports(folders: dict[str, Path]) -> dict[str, tuple[Path, ExportReport]]:
    """The four TFLite variants, each in a folder of its own; int8 calibrated on 12 training images
    (int8-mixed has a test of its own)."""
    found = {}
    for quantize in ("none", "float16", "dynamic", "int8"):
        out = folders["root"] / "deploy" / quantize / f"tiny_{quantize}.tflite"
        calibration = {"calibration": folders["data"], "calibration_images": 12} if quantize == "int8" else {}
        found[quantize] = out, export_run(folders["run"], out, format="tflite", quantize=quantize,
                                          check=folders["check"], **calibration)
    return found


# the bounds are what this tiny model measures, with a margin (int8: 17 of 18 top classes agree)
@pytest.mark.parametrize(("quantize", "max_diff", "min_agreement"), [
    ("none", 1e-5, 1.0), ("float16", 1e-3, 1.0), ("dynamic", 1e-2, 1.0), ("int8", 0.1, 0.9)])
def test_tflite_variants_run_in_litert_as_the_report_says(folders, tflite_exports, quantize, max_diff,
                                                          min_agreement):
    out, report = tflite_exports[quantize]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["labels.txt", out.name, f"tiny_{quantize}.export_report.json"])
    assert tflite_report_path(out) == out.parent / f"tiny_{quantize}.export_report.json"
    assert report.size_bytes == out.stat().st_size

    _, pixels = _check_pixels(folders["check"])
    labels = tk.scan_folder(folders["check"]).labels
    expected = _keras(folders["run"], pixels)
    outputs, given, taken = _interpret(out, pixels)
    agreement = float(np.mean(outputs.argmax(axis=1) == expected.argmax(axis=1)))
    assert report.agreement == pytest.approx(agreement) and agreement >= min_agreement
    assert report.max_abs_diff == pytest.approx(float(np.abs(outputs - expected).max()), abs=1e-6)
    assert report.max_abs_diff <= max_diff
    assert report.accuracy == pytest.approx(np.mean(outputs.argmax(axis=1) == labels))
    assert report.keras_accuracy == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
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
    print(f"\n{report.describe()}")  # the figures docs/export.md quotes (pytest -s)


def test_int8_mixed_keeps_the_layers_int8_hurts_most_in_float32(folders, tflite_exports, tmp_path, monkeypatch):
    # with no error allowed, every layer with small enough weights stays float32
    monkeypatch.setattr(export, "MIXED_ERROR_LIMIT", 0.0)
    monkeypatch.setattr(export, "MIXED_WEIGHT_SHARE", 0.05)
    out = tmp_path / "mixed.tflite"
    report = export_run(folders["run"], out, format="tflite", quantize="int8-mixed", check=folders["check"],
                        calibration=folders["data"], calibration_images=12)
    kept = report.calibration["float32_layers"]
    interpreter, _ = export._interpreter(out)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    float_ops = {tensors[op["outputs"][0]]["name"].split(";")[0] for op in interpreter._get_ops_details()
                 if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
                 and tensors[op["inputs"][0]]["dtype"] == np.float32}
    assert kept and set(kept) == float_ops  # exactly the reported layers compute in float32
    weights = export._weight_counts(tflite_exports["int8"][0].read_bytes())  # as the full-integer model has them
    shares = {name.split(";")[0]: count / sum(weights.values()) for name, count in weights.items()}
    assert all(0 < shares[name] <= 0.05 for name in kept) and max(shares.values()) > 0.05  # the big ones stay int8
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert given["dtype"] == taken["dtype"] == np.float32  # float32 pixels in, probabilities out
    assert report.agreement >= tflite_exports["int8"][1].agreement and report.enforced is False
    assert json.loads(tflite_report_path(out).read_text())["calibration"]["float32_layers"] == kept


def test_without_a_check_folder_or_litert_it_verifies_on_random_pixels_with_tensorflow(folders, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if ai-edge-litert were not installed
    report = export_run(folders["run"], tmp_path / "m.tflite", format="tflite")
    assert report.runtime.startswith("tf.lite.Interpreter") and "pip install ai-edge-litert" in report.runtime
    assert report.checked_on == "random pixels" and report.images == export.RANDOM_CHECK_IMAGES
    assert report.accuracy is None and report.keras_accuracy is None and report.max_abs_diff < 1e-5
    assert "random-pixel images" in report.describe()
    assert json.loads((tmp_path / "m.export_report.json").read_text())["checked_on"] == "random pixels"


def test_a_failing_verification_writes_nothing_and_keeps_the_previous_export(folders, tmp_path, monkeypatch):
    previous = tmp_path / "serving"
    export_run(folders["run"], previous, check=folders["check"])
    before = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}

    monkeypatch.setattr(export, "AGREEMENT_TOLERANCE", 1.01)  # more than any export can reach
    with pytest.raises(tk.DataError, match=r"top class agrees with the Keras model's on 100.0% of 18 images"):
        export_run(folders["run"], previous, check=folders["check"])
    assert {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(export, "AGREEMENT_TOLERANCE", 0.99)
    monkeypatch.setattr(export, "FLOAT32_TOLERANCE", 0.0)  # TFLite's float32 kernels differ from TF's by ~1e-7
    out = tmp_path / "new" / "model.tflite"
    with pytest.raises(tk.DataError, match=r"outputs differ from the Keras model's by up to .* Nothing was written"):
        export_run(folders["run"], out, format="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving"]  # no folder, file or temporary left behind


@pytest.mark.parametrize("format", ["saved_model", "tflite"])
def test_an_export_that_lost_its_weights_is_refused(folders, tmp_path, monkeypatch, format):
    """The natural tf.Module export (the Keras model as an attribute) writes a SavedModel that
    tf.saved_model.load runs, but whose variables TF Serving's loader and the TFLite converter do
    not find: the session fails, the TFLite file runs without weights. Verification catches both."""
    track = export._Serving.__init__

    def keep_the_model_instead(self, model, *args, **kwargs):
        track(self, model, *args, **kwargs)
        del self.model_variables
        self.model = model

    monkeypatch.setattr(export._Serving, "__init__", keep_the_model_instead)
    out = tmp_path / ("model.tflite" if format == "tflite" else "serving")
    refused = "cannot be run as TF Serving loads it" if format == "saved_model" else r"TFLite \(none\) export .* wrong"
    with pytest.raises(tk.DataError, match=refused):
        export_run(folders["run"], out, format=format, check=folders["check"])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- ONNX


def _needs_onnx() -> None:
    for name in ("onnxruntime", "tf2onnx", "onnx"):
        pytest.importorskip(name, reason='ONNX export needs pip install "transferkit[onnx]"')


@pytest.fixture(scope="module")
def onnx_export(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    _needs_onnx()
    out = folders["root"] / "deploy" / "onnx" / "tiny.onnx"
    return out, export_run(folders["run"], out, format="onnx", check=folders["check"])


def test_onnx_export_runs_in_onnxruntime_as_the_report_says(folders, onnx_export):
    import onnx
    import onnxruntime

    out, report = onnx_export
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

    _, pixels = _check_pixels(folders["check"])
    labels = tk.scan_folder(folders["check"]).labels
    expected = _keras(folders["run"], pixels)
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
    _needs_onnx()
    import keras

    tuner = tk.FineTuner.load(folders["run"])
    pixels = keras.Input((SIZE, SIZE, 3))
    trained = tuner.model
    tuner.model = keras.Model(pixels, trained(keras.layers.Normalization(mean=0.0, variance=1.0)(pixels)))
    monkeypatch.setattr(export, "_load", lambda run_dir: tuner)
    out = tmp_path / "new" / "model.onnx"
    with pytest.raises(tk.ConfigError, match=r"graph that needs inputs besides the images.*Normalization"):
        export_run(folders["run"], out, format="onnx")
    assert list(tmp_path.iterdir()) == []

    tuner.model = trained
    monkeypatch.setattr(export, "AGREEMENT_TOLERANCE", 1.01)  # more than any export can reach
    with pytest.raises(tk.DataError, match=r"The ONNX export of this run is wrong: .* Nothing was written"):
        export_run(folders["run"], out, format="onnx")
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


# ---------------------------------------------------------------------------------------------- predicting


def _new_images(folder: Path) -> Path:
    """Images no export was checked on: other sizes, JPEG, PNG and a PNG with transparent corners."""
    folder.mkdir()
    for c, (name, color) in enumerate(CLASS_COLORS.items()):
        image = _noisy(color, SHAPES[(2 * c + 1) % len(SHAPES)], seed=9000 + c)
        image.save(folder / f"{name}.jpg", quality=90)
        rgba = np.array(image.convert("RGBA").resize((50, 34)))
        rgba[:6, :6, 3] = 0
        Image.fromarray(rgba, "RGBA").save(folder / f"{name}_alpha.png")
    return folder


@pytest.mark.parametrize("kind", ["saved_model", "tflite_none", "tflite_int8", "onnx", "hub"])
def test_an_exported_file_predicts_as_the_run_does(folders, tmp_path, request, kind):
    if kind == "onnx":
        out, report = request.getfixturevalue("onnx_export")
    elif kind in ("saved_model", "hub"):
        out, report = request.getfixturevalue("saved_model" if kind == "saved_model" else "hub_export")
    else:
        out, report = request.getfixturevalue("tflite_exports")[kind.split("_")[1]]
    exported = load_exported(out)
    assert exported.format == export_format(out) == report.format
    assert exported.class_names == ("blue", "green", "red") and exported.image_size == SIZE
    assert (exported.resize, exported.background) == ("pad", (255, 255, 255))
    run = tk.FineTuner.load(folders["run"])

    # on the check images: the outputs the report measured
    found, expected = exported.predict(folders["check"]), run.predict(folders["check"])
    assert found.paths == expected.paths and found.class_names == expected.class_names
    assert np.mean(found.indices == expected.indices) == pytest.approx(report.agreement)
    assert np.abs(found.probabilities - expected.probabilities).max() <= report.max_abs_diff + 1e-6
    _, pixels = _check_pixels(folders["check"])
    np.testing.assert_allclose(exported.predict(pixels, batch_size=5).probabilities, found.probabilities, atol=1e-6)

    # on images none of them was checked on
    new = _new_images(tmp_path / "new")
    found, expected = exported.predict(new), run.predict(new)
    assert found.paths == expected.paths and len(found.paths) == 6
    difference = np.abs(found.probabilities - expected.probabilities).max()
    if report.quantize == "int8":  # about what its report says: 17 of 18 agree, probabilities within ~0.03
        assert np.mean(found.indices == expected.indices) >= 5 / 6 and difference < 0.1
    else:
        assert (found.indices == expected.indices).all() and difference < 1e-5


def test_an_export_needs_the_labels_and_image_settings_written_with_it(folders, tflite_exports, tmp_path):
    out, _ = tflite_exports["none"]
    assert export_format(out) == "tflite" and export_format(folders["run"]) is None
    with pytest.raises(tk.DataError, match=r"is not an export.*It is a run folder: use FineTuner.load"):
        load_exported(folders["run"])
    with pytest.raises(tk.DataError, match="does not exist"):
        load_exported(tmp_path / "missing.onnx")
    with pytest.raises(tk.ConfigError, match=r"exported from a run with resize='pad'.*Received: resize='crop'"):
        load_exported(out, resize="crop")

    alone = tmp_path / "alone.tflite"  # copied without its report and labels.txt
    alone.write_bytes(out.read_bytes())
    with pytest.raises(tk.DataError, match=r"does not record how images are fitted.*Pass resize= and background="):
        load_exported(alone)
    settings = {"resize": "pad", "background": (255, 255, 255)}
    with pytest.raises(tk.DataError, match="There is no labels.txt beside"):
        load_exported(alone, **settings)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(tk.DataError, match="name 2 classes, but it gives 3 outputs"):
        load_exported(alone, **settings)
    (tmp_path / "labels.txt").write_text((out.parent / "labels.txt").read_text())
    assert load_exported(alone, **settings).predict(folders["check"]).labels == \
        load_exported(out).predict(folders["check"]).labels


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
    with pytest.raises(tk.DataError, match="is not a saved FineTuner"):
        export_run(tmp_path, tmp_path / "m")
    with pytest.raises(tk.DataError, match=r"The classes in .* differ from the model's"):
        export_run(run, tmp_path / "m", check=write_image_folder(tmp_path / "other", per_class=2,
                                                                colors={"cat": (1, 2, 3), "dog": (9, 9, 9)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
