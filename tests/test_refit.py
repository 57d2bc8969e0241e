"""The refit on all images after the validated phases (transferkit._refit)."""

from __future__ import annotations

import numpy as np
import pytest
from tuners import FAST_HEAD, tiny_tuner

import transferkit as tk


def test_refit_trains_again_on_all_images_and_reports_the_held_out_figures(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    wrecking = tk.Phase(epochs=2, learning_rate=50.0, policy=tk.UnfreezeAll(), optimizer="sgd")
    tuner = tiny_tuner(fine_tune_phase=wrecking, refit=True)
    history = tuner.fit(data, verbose=0)
    assert len(history["head"]["loss"]) == FAST_HEAD.epochs
    # the divergence guard stops the phase in the epoch where its loss becomes nan, else it runs both epochs
    ran = tuner.divergences[0].epoch - FAST_HEAD.epochs if tuner.divergences else 2
    assert len(history["fine_tune"]["loss"]) == ran
    assert tuner.best_epoch.phase == "head"  # fine-tuning only made it worse …
    assert tuner.refitted.phases == ("head",)  # … so only the head phase is run again
    assert tuner.refitted.epochs == (FAST_HEAD.epochs,)
    assert tuner.refitted.images == data.num_train + data.num_validation
    selected = tiny_tuner(fine_tune_phase=wrecking)  # the same run without the refit
    selected.fit(data, verbose=0)
    assert not all(np.allclose(a, b) for a, b in zip(tuner.model.get_weights(), selected.model.get_weights()))
    metrics = tuner.write_report(data, tmp_path / "run")
    held_out = selected.evaluate(data)
    assert metrics["validation"]["accuracy"] == pytest.approx(held_out.accuracy)  # figures from before the refit
    assert metrics["validation"]["loss"] == pytest.approx(held_out.loss, rel=1e-5)
    assert metrics["refit"] == {"phases": ["head"], "epochs": [FAST_HEAD.epochs], "images": tuner.refitted.images}
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.refitted == tuner.refitted and loaded.best_epoch == tuner.best_epoch


def test_fit_that_continues_a_trained_model_does_not_refit(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    first = tiny_tuner(fine_tune_phase=None)
    first.fit(data, verbose=0)
    first.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    before = loaded.model.get_layer("head").get_layer("head_output").kernel.numpy().copy()
    # a trained head phase (a solved one starts afresh)
    loaded = tk.FineTuner.from_run(loaded.result, refit="auto", head_phase=FAST_HEAD)
    loaded.fit(data, verbose=0)  # continues the loaded weights; a refit would start again from ImageNet
    assert loaded.refitted is None
    kernel = loaded.model.get_layer("head").get_layer("head_output").kernel.numpy()
    assert np.abs(kernel - before).mean() < np.abs(before).mean()  # moved on from the loaded head, not reset
    loaded = tk.FineTuner.from_run(loaded.result, refit=True)
    with pytest.raises(tk.ConfigError, match="already holds a trained"):
        loaded.fit(data, verbose=0)


def test_refit_auto_and_refit_true_choose_where_it_applies(image_folder, monkeypatch):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    small = tiny_tuner(fine_tune_phase=None, refit="auto")
    small.fit(data, verbose=0)
    assert small.refitted is not None and small.refitted.phases == ("head",)
    monkeypatch.setattr("transferkit._refit.REFIT_MAX_IMAGES", data.num_train + data.num_validation - 1)
    large = tiny_tuner(fine_tune_phase=None, refit="auto")
    large.fit(data, verbose=0)
    assert large.refitted is None
    pixels = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3)).astype("uint8")
    arrays = tk.from_arrays(pixels, [0, 1] * 6, image_size=32, validation_split=0.25)
    with pytest.raises(tk.ConfigError, match="refit=True"):
        tiny_tuner(fine_tune_phase=None, refit=True).fit(arrays, verbose=0)
    with pytest.raises(tk.ConfigError, match="refit"):
        tiny_tuner(refit="yes")
