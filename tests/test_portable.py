"""A saved run's ``model.keras`` loads in plain Keras: no transferkit, no warnings, the same predictions."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_image_folder

import transferkit as tk
from transferkit._model import build_model, model_parts
from transferkit._saving import FORMAT, RunMetadata, load_run, save_run, saved_architecture
from transferkit.backbones import PREPROCESSING_MODES, Preprocess
from transferkit.backbones._preprocessing import builtin_preprocessor
from transferkit.backbones._testing import TINY_CNN

# Run in a fresh interpreter that cannot import transferkit (it is installed editable in the venv, so
# leaving the repository off sys.path is not enough: a meta-path finder refuses it). Warnings are
# errors and logged warnings are collected while loading and predicting.
PLAIN_KERAS = textwrap.dedent("""
    import importlib.util, json, logging, sys, warnings

    class NoTransferkit:
        def find_spec(self, name, path=None, target=None):
            if name == "transferkit" or name.startswith("transferkit."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTransferkit())
    try:
        importlib.util.find_spec("transferkit")
    except ImportError:
        pass
    else:
        raise SystemExit("transferkit is importable")
    import keras
    import numpy as np

    logged = []
    class Collect(logging.Handler):
        def emit(self, record):
            logged.append(f"{record.name}: {record.getMessage()}")
    collect = Collect(level=logging.WARNING)
    warnings.simplefilter("error")
    pixels = np.load(sys.argv[1])
    for model_file, out in zip(sys.argv[2::2], sys.argv[3::2]):
        logging.getLogger().addHandler(collect)
        model = keras.saving.load_model(model_file)  # safe mode, compile=True: the defaults
        logging.getLogger().removeHandler(collect)  # predicting several models retraces: TensorFlow logs that
        np.save(out, model.predict(pixels, verbose=0))
    imported = sorted(m for m in sys.modules if m == "transferkit" or m.startswith("transferkit."))
    if logged or imported:
        raise SystemExit(f"logged while loading: {logged}, imported: {imported}")
""")


def _predict_in_plain_keras(tmp_path: Path, pixels: np.ndarray, model_files: list[Path]) -> list[np.ndarray]:
    script, inputs = tmp_path / "plain_keras.py", tmp_path / "pixels.npy"
    script.write_text(PLAIN_KERAS)
    np.save(inputs, pixels)
    outputs = [tmp_path / f"plain_{i}.npy" for i in range(len(model_files))]
    args = [str(a) for pair in zip(model_files, outputs, strict=True) for a in pair]
    done = subprocess.run([sys.executable, str(script), str(inputs), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return [np.load(out) for out in outputs]


def _modules(config: object) -> list[str]:
    """The ``module`` of every object serialised in a Keras config."""
    if isinstance(config, dict):
        found = [config["module"]] if isinstance(config.get("module"), str) else []
        return found + [m for value in config.values() for m in _modules(value)]
    if isinstance(config, list):
        return [m for value in config for m in _modules(value)]
    return []


def _pixels() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (6, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained the way users train: head phase, fine-tune phase, best epoch restored (the model is
    recompiled after fitting, which is what left an unbuilt optimizer in the file)."""
    root = tmp_path_factory.mktemp("portable")
    data = tk.load_folder(write_image_folder(root / "images", per_class=4), image_size=32, batch_size=8,
                          validation_split=0.25)
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, refit=False,
                         head_phase=dataclasses.replace(tk.HEAD_PHASE, epochs=2, learning_rate=1e-2),
                         fine_tune_phase=dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=1, learning_rate=1e-3,
                                                             policy=tk.UnfreezeTop(1)))
    tuner.fit(data, verbose=0)
    keras.backend.clear_session()
    return tuner.save(root / "run")


def test_a_trained_run_loads_in_plain_keras_with_the_same_predictions(trained_run, tmp_path):
    meta = json.loads((trained_run / "transferkit.json").read_text())
    assert meta["format"] == FORMAT == 3 and meta["preprocessing"] == "tf"
    pixels = _pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no skipped optimizer variables with transferkit either
        loaded = tk.FineTuner.load(trained_run)
    expected = loaded.predict(pixels).probabilities
    (plain,) = _predict_in_plain_keras(tmp_path, pixels, [trained_run / "model.keras"])
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-6)
    # transferkit's own model is back: the Preprocess layer, nested backbone and head, no compile state
    parts = model_parts(loaded.model)
    assert isinstance(parts.preprocessor, Preprocess) and parts.preprocessor.mode == "tf"
    assert parts.head is not None and not loaded.model.compiled


def test_a_loaded_run_trains_on_with_cached_features(trained_run, tmp_path, caplog):
    loaded = tk.FineTuner.load(trained_run)
    data = tk.load_folder(write_image_folder(tmp_path / "images", per_class=4), image_size=32, batch_size=8)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        loaded.train_head(data, verbose=0)
    assert "trains on cached features" in caplog.text
    loaded.save(tmp_path / "again")
    again = tk.FineTuner.load(tmp_path / "again")
    np.testing.assert_array_equal(again.predict(_pixels()).probabilities, loaded.predict(_pixels()).probabilities)


def test_every_preprocessing_contract_loads_in_plain_keras(tmp_path):
    pixels = _pixels()
    files, expected = [], []
    for mode in PREPROCESSING_MODES:
        spec = dataclasses.replace(TINY_CNN, name=f"tiny_cnn_{mode}", preprocessing=mode)
        model = build_model(spec, num_outputs=3, weights="imagenet")
        meta = RunMetadata(backbone=spec.name, hub_handle=None, weights="imagenet", image_size=32,
                           class_names=("a", "b", "c"), head=tk.Head().to_config())
        save_run(tmp_path / mode, model, meta)
        modules = set(_modules(saved_architecture(tmp_path / mode / "model.keras")))
        assert {m.split(".")[0] for m in modules} == {"keras"}, modules
        loaded, loaded_meta = load_run(tmp_path / mode)
        assert loaded_meta.preprocessing == mode and model_parts(loaded).preprocessor.mode == mode
        expected.append(loaded.predict(pixels, verbose=0))
        np.testing.assert_array_equal(expected[-1], model.predict(pixels, verbose=0))
        files.append(tmp_path / mode / "model.keras")
    for mode, plain, want in zip(PREPROCESSING_MODES, _predict_in_plain_keras(tmp_path, pixels, files), expected,
                                 strict=True):
        np.testing.assert_allclose(plain, want, rtol=0, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("mode", list(PREPROCESSING_MODES))
def test_builtin_layers_compute_exactly_what_preprocess_does(mode):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(builtin_preprocessor(mode, name="preprocess")(pixels))
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(Preprocess(mode)(pixels)))


def test_a_contract_that_does_not_match_the_file_is_refused(trained_run, tmp_path):
    run = tmp_path / "edited"
    run.mkdir()
    (run / "model.keras").write_bytes((trained_run / "model.keras").read_bytes())
    meta = json.loads((trained_run / "transferkit.json").read_text())
    (run / "transferkit.json").write_text(json.dumps({**meta, "preprocessing": "unit"}))
    with pytest.raises(tk.DataError, match="does not compute the 'unit' preprocessing"):
        load_run(run)
    (run / "transferkit.json").write_text(json.dumps({**meta, "preprocessing": None}))
    with pytest.raises(tk.DataError, match="records no 'preprocessing'"):
        load_run(run)
