"""Mixed precision and XLA: FineTuner(mixed_precision=…, jit_compile=…) and train --mixed-precision / --xla."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder

import transferkit as tk
from transferkit._model import model_parts
from transferkit.cli import main

HEAD = dataclasses.replace(tk.HEAD_PHASE, epochs=6, learning_rate=1e-2, solve=False)  # trained
TUNE = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=1, learning_rate=1e-3, policy=tk.UnfreezeTop(1))


class CompiledAs(keras.callbacks.Callback):
    """Records how each model a phase fits (the whole model, the head or the part above a cache) was compiled."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool, bool]] = []

    def on_train_begin(self, logs=None):
        self.seen.append((self.model.name, isinstance(self.model.optimizer, keras.optimizers.LossScaleOptimizer),
                          bool(self.model.jit_compile)))


def _float16_layers(model: keras.Model) -> set[str]:
    """The compute dtypes of a nested model's layers (its input layer aside: a loaded one is float32)."""
    return {layer.compute_dtype for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}


def _data(tmp_path):
    return tk.load_folder(write_image_folder(tmp_path / "images", per_class=8), image_size=32, batch_size=8,
                          validation_split=0.25)


def test_mixed_precision_trains_on_cached_features_in_float16_and_saves(tmp_path, caplog):
    data = _data(tmp_path)
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, refit=False, head_phase=HEAD, fine_tune_phase=TUNE,
                         mixed_precision=True)
    compiled = CompiledAs()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = tuner.fit(data, callbacks=[compiled], verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # set while building only
    if not tf.config.list_physical_devices("GPU"):
        assert "meant for GPUs" in caplog.text
    assert caplog.text.count("trains on cached features") == 2  # the head phase and the fine-tune phase
    # the head, then the part above the fine-tune cache (built outside the policy): both loss-scaled, no XLA
    assert [(scaled, jit) for _, scaled, jit in compiled.seen] == [(True, False), (True, False)]

    parts = model_parts(tuner.model)
    assert _float16_layers(parts.backbone) == {"float16"}
    assert {v.dtype for v in tuner.model.weights} == {"float32"}
    assert parts.head.get_layer("head_output").compute_dtype == "float32"
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert keras.ops.convert_to_numpy(tuner.model(pixels)).dtype == np.float32
    assert history["head"]["loss"][-1] < history["head"]["loss"][0]
    assert tuner.evaluate(data).accuracy > 0.5  # three colours: chance is 1/3

    paths = list(data.validation_files.paths)
    before = tuner.predict(paths).probabilities
    assert np.isfinite(before).all()
    run = tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(run)
    assert loaded.settings.mixed_precision and _float16_layers(model_parts(loaded.model).backbone) == {"float16"}
    np.testing.assert_allclose(loaded.predict(paths).probabilities, before, rtol=0, atol=1e-6)
    # the loaded outer model's own policy is float32 (Keras would not loss-scale it): transferkit does
    again = CompiledAs()
    loaded.train_head(data, phase=dataclasses.replace(HEAD, epochs=1), callbacks=[again], verbose=0)
    assert [scaled for _, scaled, _ in again.seen] == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = keras.saving.load_model(run / "model.keras")
    np.testing.assert_allclose(plain.predict(pixels, verbose=0), tuner.predict(pixels).probabilities, rtol=0,
                               atol=1e-6)


def test_jit_compile_compiles_every_phase_with_xla(tmp_path):
    data = _data(tmp_path)
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, refit=False, fine_tune_phase=TUNE,
                         head_phase=dataclasses.replace(HEAD, epochs=2), jit_compile=True, temperature_scaling=False)
    sweep = tuner.find_lr(data, steps=4)
    assert len(sweep.losses) >= 2 and tuner.model.compiled is False
    compiled = CompiledAs()
    history = tuner.fit(data, callbacks=[compiled], verbose=0)
    assert [jit for _, _, jit in compiled.seen] == [True, True]
    assert tuner.model.jit_compile is True
    assert all(np.isfinite(values).all() for phase in history.values() for values in phase.values())
    assert np.isfinite(tuner.predict(list(data.validation_files.paths)).probabilities).all()


def test_options_are_booleans():
    with pytest.raises(tk.ConfigError, match="mixed_precision"):
        tk.FineTuner("tiny_cnn", weights=None, mixed_precision="yes")


def test_train_flags_and_config_keys_reach_the_finetuner(tmp_path, monkeypatch):
    made: list[dict] = []

    class Recording(tk.FineTuner):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tk, "FineTuner", Recording)
    data = write_image_folder(tmp_path / "images", per_class=4)
    common = ["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "1",
              "--fine-tune-epochs", "0", "--refit", "never", "--image-size", "32"]
    assert main([*common, "--mixed-precision", "--xla", "--out", str(tmp_path / "run")]) == 0
    assert made[-1]["mixed_precision"] is True and made[-1]["jit_compile"] is True
    assert _float16_layers(model_parts(tk.FineTuner.load(tmp_path / "run").model).backbone) == {"float16"}
    config = tmp_path / "train.toml"
    config.write_text("mixed_precision = true\nxla = true\n")
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "configured")]) == 0
    assert made[-1]["mixed_precision"] is True and made[-1]["jit_compile"] is True
    config.write_text('xla = "yes"\n')
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
