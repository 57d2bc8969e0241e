"""Which weights a fit keeps: the best validated epoch or phase end (transferkit._selection, the stage's finish)."""

from __future__ import annotations

import dataclasses
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder
from tuners import FAST_HEAD, FAST_TUNE, WreckAtEpoch, multi_label_data, tiny_tuner

import transferkit as tk
from transferkit._stage import phase_end_loss


def test_keep_best_epoch_ends_each_phase_on_its_best_validated_epoch(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(keep_best="epoch")
    history = tuner.train_head(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)
    accuracy, loss = history["val_accuracy"], history["val_loss"]
    assert loss[-1] > min(loss) and accuracy[-1] < max(accuracy)  # the wrecked last epoch is not the best
    best = tuner.best_epoch
    assert best.phase == "head" and best.epoch < FAST_HEAD.epochs
    assert best.val_accuracy == accuracy[best.epoch - 1] == max(accuracy)  # highest accuracy first …
    assert best.val_loss == min(v for v, a in zip(loss, accuracy) if a == max(accuracy))  # … then lowest loss
    evaluation = tuner.evaluate(data)  # and the model holds that epoch's weights
    assert evaluation.loss == pytest.approx(best.val_loss, rel=1e-4)
    assert evaluation.accuracy == pytest.approx(best.val_accuracy)


def test_a_fine_tune_phase_that_only_worsens_leaves_the_head_weights(tmp_path, image_folder, caplog):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    wrecking = tk.Phase(epochs=2, learning_rate=50.0, policy=tk.UnfreezeAll(), optimizer="sgd")
    tuner = tiny_tuner(fine_tune_phase=wrecking)
    tuner.train_head(data, verbose=0)
    head_weights = [w.copy() for w in tuner.model.get_weights()]
    head_best = tuner.best_epoch
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        history = tuner.fine_tune(data, verbose=0)
    assert all((a, -v) <= head_best.score for a, v in zip(history["val_accuracy"], history["val_loss"]))
    assert "never beat the best validated epoch of phase head" in caplog.text
    for kept, before in zip(tuner.model.get_weights(), head_weights):
        np.testing.assert_array_equal(kept, before)
    assert tuner.best_epoch == head_best
    tuner.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "transferkit.json").read_text())["best"]["phase"] == "head"
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.best_epoch == head_best
    for saved, before in zip(loaded.model.get_weights(), head_weights):
        np.testing.assert_array_equal(saved, before)


def test_keep_last_and_patience(image_folder, tmp_path):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    assert tuner.best_epoch is not None
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.best_epoch == tuner.best_epoch  # where the saved weights came from
    loaded = tk.FineTuner.from_run(loaded.result, keep_best=False)
    loaded.fine_tune(data, phase=dataclasses.replace(FAST_TUNE, epochs=1), verbose=0)
    assert loaded.best_epoch is None  # the last epoch's weights now, not the saved run's

    patient = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, epochs=30, patience=2), fine_tune_phase=None)
    history = patient.fit(data, verbose=0)["head"]
    assert len(history["loss"]) < 30  # stopped once the validation accuracy stopped rising
    best = max(history["val_accuracy"])
    assert history["val_accuracy"][-3] == best and max(history["val_accuracy"][-2:]) <= best
    no_validation = tk.load_folder(image_folder, image_size=32, validation_split=0.0, batch_size=8)
    with pytest.raises(tk.ConfigError, match="no validation data"):
        tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, patience=2)).fit(no_validation, verbose=0)


def test_multi_label_heads_keep_the_epoch_with_the_lowest_validation_loss(tmp_path):
    data = multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv")
    tagger = tiny_tuner(fine_tune_phase=None, keep_best="epoch")
    history = tagger.fit(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)["head"]
    assert tagger.best_epoch.val_accuracy is None  # per-label accuracy is not what ranks them
    assert tagger.best_epoch.val_loss == min(history["val_loss"])


def test_phase_ends_rank_by_calibrated_loss_where_both_have_one():
    from transferkit._selection import BestEpoch, BestWeights, Snapshot

    # a fine-tune phase one validation image ahead on accuracy, behind once each phase's
    # over-confidence is scaled out (the figures of a stamps5 fold)
    head = BestEpoch("head", 1, val_loss=0.271, val_accuracy=0.889, calibrated_loss=0.270)
    tuned = BestEpoch("fine_tune", 11, val_loss=0.300, val_accuracy=0.926, calibrated_loss=0.276)
    assert tuned.score > head.score and not tuned.beats(head)
    assert dataclasses.replace(tuned, calibrated_loss=0.269).beats(head)
    assert dataclasses.replace(tuned, calibrated_loss=None).beats(head)  # unmeasured: accuracy, then loss
    assert not dataclasses.replace(tuned, calibrated_loss=0.270).beats(head)  # a tie keeps the earlier phase

    assert BestEpoch.from_dict(tuned.to_dict()) == tuned
    assert BestEpoch.from_dict({**tuned.to_dict(), "added_later": 1}) == tuned  # a later version's record
    old = {key: value for key, value in head.to_dict().items() if key != "calibrated_loss"}  # an earlier one's
    assert BestEpoch.from_dict(old) == dataclasses.replace(head, calibrated_loss=None)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    before = [w.copy() for w in model.get_weights()]
    keeper = BestWeights(model, phase="fine_tune", previous=Snapshot(head, before), by_accuracy=True)
    keeper.on_epoch_end(10, {"val_loss": tuned.val_loss, "val_accuracy": tuned.val_accuracy})
    model.set_weights([w + 1.0 for w in before])  # what the phase trained
    keeper.on_train_end()
    keeper.rate(tuned.calibrated_loss)
    assert keeper.restore().best == head
    for kept, start in zip(model.get_weights(), before):
        np.testing.assert_array_equal(kept, start)


def test_fit_keeps_the_phase_with_the_lower_calibrated_validation_loss(tmp_path):
    from conftest import CLASS_COLORS

    from transferkit._calibration import calibrated_loss

    # two reds a network cannot tell apart: validation errors, so each phase has its own temperature
    colors = {**CLASS_COLORS, "also_red": (222, 31, 30)}
    folder = write_image_folder(tmp_path / "images", per_class=20, colors=colors)
    data = tk.load_folder(folder, image_size=32, validation_split=0.25, batch_size=8)
    assert data.num_validation >= 20  # enough images to fit a temperature on
    labels = np.asarray(data.validation_files.labels)
    paths = list(data.validation_files.paths)
    ends = {}
    for phase in ("head", "fine_tune"):  # each phase's end, kept whatever it validated
        fine = FAST_TUNE if phase == "fine_tune" else None
        last = tiny_tuner(keep_best=False, temperature_scaling=False, fine_tune_phase=fine)
        last.fit(data, verbose=0)
        ends[phase] = calibrated_loss(last.predict(paths).probabilities, labels)
    tuner = tiny_tuner()
    tuner.fit(data, verbose=0)
    best = tuner.best_epoch
    assert best.phase == min(ends, key=ends.get)
    assert best.calibrated_loss == pytest.approx(ends[best.phase], rel=1e-4)
    assert abs(np.log(tuner.calibration.temperature)) > 0.1  # the temperature did something
    # the temperature folded in after the phases leaves the calibrated loss as it was
    assert calibrated_loss(tuner.predict(paths).probabilities, labels) == pytest.approx(best.calibrated_loss, rel=1e-3)
    metrics = tuner.write_report(data, tmp_path / "run")
    assert metrics["best"]["calibrated_loss"] == pytest.approx(best.calibrated_loss)


def test_calibrated_loss_overrides_accuracy_and_plain_loss_and_is_skipped_when_every_image_is_right(
        tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images", per_class=28)
    data = tk.load_folder(folder, image_size=32, validation_split=0.25, batch_size=8)
    plain = tiny_tuner()
    plain.fit(data, verbose=0)
    # colour gives the class away: both phases get every validation image right, so no
    # temperature can be fitted and the lower plain loss decides, as with few images
    assert plain.history["fine_tune"]["val_accuracy"][-1] == plain.history["head"]["val_accuracy"][-1] == 1.0
    assert plain.best_epoch.phase == "fine_tune" and plain.best_epoch.calibrated_loss is None
    assert plain.history["fine_tune"]["val_loss"][-1] < plain.history["head"]["val_loss"][-1]
    # with a calibrated loss measured (here set by hand), it decides against the plain loss
    rated = iter([0.1, 0.2])
    monkeypatch.setattr("transferkit._stage.phase_end_loss", lambda trained, validation: next(rated))
    tuner = tiny_tuner()
    tuner.fit(data, verbose=0)
    assert tuner.best_epoch.phase == "head" and tuner.best_epoch.calibrated_loss == 0.1


def test_calibrated_loss_of_a_phase_end():
    outputs = np.array([[0.6, 0.4], [0.3, 0.7]] * 11, dtype=np.float32)  # 22 images
    right = np.array([0, 1] * 11)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])

    def rated(labels):
        return phase_end_loss(model, tf.data.Dataset.from_tensor_slices((outputs, labels)).batch(8))

    from transferkit._calibration import calibrated_loss

    assert rated(right) is None  # every image right: the best temperature would be the bound
    wrong = right.copy()
    wrong[0] = 1
    assert rated(wrong) == pytest.approx(calibrated_loss(outputs, wrong))
    assert rated(wrong[:, None]) == pytest.approx(calibrated_loss(outputs, wrong))  # labels shaped (n, 1)
    assert rated(np.eye(2)[wrong]) == pytest.approx(calibrated_loss(outputs, wrong))  # one-hot labels
    assert phase_end_loss(model, tf.data.Dataset.from_tensor_slices(
        (outputs[:19], wrong[:19])).batch(8)) is None  # fewer than 20 images: one temperature is a guess


def test_keep_best_phase_compares_phase_ends_only(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None)  # keep_best="phase", the default
    history = tuner.train_head(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)
    assert max(history["val_accuracy"]) > history["val_accuracy"][-1]  # an earlier epoch validated better …
    assert tuner.best_epoch.epoch == FAST_HEAD.epochs  # … but the candidate of a phase is its end
    last = tiny_tuner(fine_tune_phase=None, keep_best=False)
    last.train_head(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)
    for kept, final in zip(tuner.model.get_weights(), last.model.get_weights()):
        np.testing.assert_array_equal(kept, final)  # the weights the phase ended with
    with pytest.raises(tk.ConfigError, match="keep_best"):
        tiny_tuner(keep_best="best")
