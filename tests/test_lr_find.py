"""The learning-rate finder: the sweep, its suggestion, and that it leaves the model as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

import transferkit as tk
from transferkit._lr_find import longest_fall, suggest
from transferkit.cli import main


def test_longest_fall_finds_the_valley_through_noise():
    losses = [5.0, 4.0, 6.0, 3.0, 3.5, 2.0, 7.0, 1.0, 9.0]
    assert longest_fall(losses) == (3, 7)  # 5, 4, 3, 2, 1: five falling steps, ending at step 7
    assert longest_fall([1.0, 2.0, 3.0]) == (0, 0)
    flat_then_steep = [3.0, 2.9, 3.1, 2.8, 3.0, 2.7, 3.0, 2.0, 1.5, 1.0, 0.5, 0.2, 4.0]
    assert longest_fall(flat_then_steep) == (3, 11)  # nine falling values: nine steps, not back to step 0
    rates = [10.0**k for k in range(-6, 3)]
    assert suggest(rates, losses) == rates[5]  # the middle of steps 3…7
    with pytest.raises(ValueError, match="fewer than two steps"):
        suggest([1e-3], [1.0])


@pytest.fixture
def data(tmp_path):
    return tk.load_folder(write_image_folder(tmp_path / "data", per_class=8), image_size=32, batch_size=8)


@pytest.mark.parametrize("phase", ["head", "fine_tune"])
def test_sweep_suggests_a_rate_and_leaves_the_model_as_it_was(data, phase):
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0)
    tuner.train_head(data, phase=tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll()), verbose=0)
    weights = [w.copy() for w in tuner.model.get_weights()]
    history, best = dict(tuner.history), tuner.best_epoch
    result = tuner.find_lr(data, phase=phase, steps=60, start=1e-6, end=10.0)
    rates = np.asarray(result.learning_rates)
    assert rates[0] == pytest.approx(1e-6) and np.all(np.diff(rates) > 0) and 2 <= len(rates) <= 60
    assert np.allclose(rates[1:] / rates[:-1], (10.0 / 1e-6) ** (1 / 59))  # exponential steps
    assert len(result.losses) == len(rates) and all(np.isfinite(result.losses))
    assert rates[0] <= result.suggestion <= rates[-1] and result.phase == phase
    for now, before in zip(tuner.model.get_weights(), weights):
        np.testing.assert_array_equal(now, before)
    assert tuner.history == history and tuner.best_epoch == best


def test_sweep_stops_when_the_loss_diverges(data):
    result = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0).find_lr(data, start=1e-3, end=1e6, steps=100)
    assert len(result.learning_rates) < 100  # ended early, well before the last, absurd rates
    assert result.losses[-1] > min(result.losses)


def test_bad_sweep_options_are_named(data):
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet")
    with pytest.raises(tk.ConfigError, match="phase"):
        tuner.find_lr(data, phase="tail")
    with pytest.raises(tk.ConfigError, match="start < end"):
        tuner.find_lr(data, start=1.0, end=1e-3)


def test_lr_find_command_writes_plot_and_json(data, tmp_path, capsys):
    folder = str(data.train_files.paths[0]).rsplit("/", 2)[0]
    out = tmp_path / "sweep"
    assert main(["lr-find", folder, "--backbone", "tiny_cnn", "--weights", "imagenet", "--steps", "40",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suggestion = float(printed.split("suggested learning rate: ")[1].split()[0])
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == pytest.approx(suggestion, rel=1e-2) and saved["phase"] == "head"
    with Image.open(out / "lr_find.png") as image:
        assert image.size[0] > 300
    assert main(["lr-find", folder, "--backbone", "tiny_cnn", "--weights", "imagenet", "--phase", "fine-tune",
                 "--steps", "20", "--out", str(out)]) == 0
    assert json.loads((out / "lr_find.json").read_text())["phase"] == "fine_tune"


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_fit_after_a_sweep_is_the_fit_without_it(tmp_path, cache):
    # (augmented pipelines are left out: their random draws differ from run to run in one process anyway)
    folder = write_image_folder(tmp_path / "data", per_class=8)

    def run(sweep_first):
        data = tk.load_folder(folder, image_size=32, batch_size=8)
        tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, cache=cache,
                             head_phase=tk.Phase(epochs=2, learning_rate=1e-2, policy=tk.FreezeAll()),
                             fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.UnfreezeTop(1)))
        if sweep_first:
            tuner.find_lr(data, steps=20)
        tuner.fit(data, verbose=0)
        return tuner

    plain, swept = run(False), run(True)
    assert swept.history == plain.history
    for a, b in zip(swept.model.get_weights(), plain.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_sweep_puts_back_the_trainable_flags(data):
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0,
                         fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.UnfreezeTop(1)))
    tuner.fine_tune(data, verbose=0)
    backbone = tuner.model.get_layer("backbone")
    flags = [layer.trainable for layer in backbone.layers]
    assert any(flags)
    tuner.find_lr(data, phase="head", steps=10)  # the head sweep freezes the whole backbone while it runs
    assert [layer.trainable for layer in backbone.layers] == flags
