"""Temperature scaling after a fit and by hand (transferkit._calibration, transferkit._held_out)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_image_folder
from tuners import multi_label_data, noise_folder, tiny_tuner

import transferkit as tk


def test_fit_calibrates_probabilities_without_changing_predictions(tmp_path):
    from transferkit._calibration import fit_temperature, reliability, scale

    data = tk.load_folder(noise_folder(tmp_path / "noise"), image_size=32, validation_split=0.25, batch_size=8)
    plain = tiny_tuner(temperature_scaling=False)
    plain.fit(data, verbose=0)
    assert plain.calibration is None
    tuner = tiny_tuner()
    tuner.fit(data, verbose=0)
    calibration = tuner.calibration
    before = plain.predict(list(data.validation_files.paths)).probabilities
    expected = fit_temperature(before, data.validation_files.labels)
    assert calibration.temperature == pytest.approx(expected, rel=1e-3)
    assert calibration.images == data.num_validation
    after = tuner.predict(list(data.validation_files.paths)).probabilities  # the model itself is calibrated
    np.testing.assert_allclose(after, scale(before, calibration.temperature), atol=1e-4)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))  # same predictions, other probabilities
    labels = data.validation_files.labels

    def nll(p):
        return -np.mean(np.log(p[np.arange(len(labels)), labels] + 1e-12))

    assert nll(after) <= nll(before) + 1e-6  # what the temperature minimises (not the ECE, which can rise)
    assert calibration.ece_after == pytest.approx(reliability(after, labels).expected_calibration_error, abs=1e-4)
    assert calibration.ece_before == pytest.approx(
        reliability(before, data.validation_files.labels).expected_calibration_error)
    metrics = tuner.write_report(data, tmp_path / "run")
    assert metrics["calibration"]["temperature"] == pytest.approx(calibration.temperature)
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 0
    assert metrics["validation"]["accuracy"] == pytest.approx(plain.evaluate(data).accuracy)
    # the report's figures came from the cached validation features, scaled: the same as a fresh pass
    assert metrics["validation"]["loss"] == pytest.approx(tuner.evaluate(data).loss, rel=1e-4)
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.calibration.temperature == tuner.calibration.temperature
    assert loaded.calibration.ece_after == tuner.calibration.ece_after
    np.testing.assert_allclose(loaded.predict(list(data.validation_files.paths)).probabilities, after, atol=1e-6)


def test_temperature_fit_recovers_a_known_temperature_and_calibrate_composes():
    from transferkit._calibration import fit_temperature, scale

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 5))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in true])
    overconfident = scale(true, 1 / 3)  # logits times 3
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true, labels) == pytest.approx(1.0, rel=0.1)


def test_calibrate_by_hand_and_refused_for_multi_label(tmp_path, image_folder):
    data = tk.load_folder(noise_folder(tmp_path / "noise"), image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None, temperature_scaling=False)
    tuner.train_head(data, verbose=0)
    from transferkit._calibration import fit_temperature

    first = tuner.calibrate(data)
    files = data.validation_files
    again = fit_temperature(tuner.predict(list(files.paths)).probabilities, files.labels)
    second = tuner.calibrate(data)  # calibrating a calibrated model: the temperatures multiply
    assert second.temperature == pytest.approx(first.temperature * again, rel=1e-3)
    easy = tiny_tuner(fine_tune_phase=None, temperature_scaling=False)
    easy.train_head(tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8), verbose=0)
    assert easy.evaluate(tk.load_folder(image_folder, image_size=32, validation_split=0.25)).accuracy == 1.0
    assert easy.calibrate(image_folder).temperature == 1.0  # no mistakes: nothing to fit, left at 1
    tagger = tiny_tuner(fine_tune_phase=None)
    tagger.fit(multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv"),
               verbose=0)
    assert tagger.calibration is None
    with pytest.raises(tk.ConfigError, match="single-label"):
        tagger.calibrate(data)
