"""One phase's steps: schedules, soft labels and mixing, per-group learning rates, gradual unfreezing, head copies."""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import pytest
from tuners import FAST_HEAD, FAST_TUNE, tiny_tuner

import transferkit as tk
from transferkit._stage import phase_optimizer


def test_fine_tune_schedule_warms_up_then_decays():
    phase = tk.Phase(epochs=4, learning_rate=1e-3, policy=tk.UnfreezeTop(1), schedule="cosine", warmup_epochs=1)
    schedule = phase.learning_rate_schedule(steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] >= 0.0


def test_label_smoothing_and_mixing_train_on_soft_labels_and_leave_integer_labels_working(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    smooth = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, label_smoothing=0.2), fine_tune_phase=None)
    smooth.fit(data, verbose=0)
    plain = tiny_tuner(fine_tune_phase=None)
    plain.fit(data, verbose=0)
    top = smooth.predict(list(data.validation_files.paths)).probabilities.max(axis=1)
    # smoothing towards 0.8 + 0.2/3 keeps the top probability away from 1; plain training does not
    assert top.max() < plain.predict(list(data.validation_files.paths)).probabilities.max()
    assert isinstance(smooth.model.loss, keras.losses.SparseCategoricalCrossentropy)  # recompiled afterwards
    logged = smooth.history["head"]
    assert all(p < s for p, s in zip(logged["val_plain_loss"], logged["val_loss"]))  # smoothing adds to the loss
    assert smooth.best_epoch.val_loss == pytest.approx(logged["val_plain_loss"][-1])  # phases compare plain losses
    assert smooth.model.evaluate(data.validation, verbose=0, return_dict=True)["accuracy"] >= 0.0
    for mix in ("mixup", "cutmix"):
        mixed = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, epochs=2),
                       fine_tune_phase=dataclasses.replace(FAST_TUNE, mix=mix, mix_strength=0.4))
        history = mixed.fit(data, verbose=0)
        assert len(history["fine_tune"]["loss"]) == FAST_TUNE.epochs
        assert all(np.isfinite(history["fine_tune"]["loss"]))
    with pytest.raises(tk.ConfigError, match="mix"):
        tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll(), mix="blend")
    with pytest.raises(tk.ConfigError, match="label_smoothing"):
        tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll(), label_smoothing=1.0)


def test_mixup_blends_images_and_one_hot_labels():
    phase = tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll(), mix="mixup", mix_strength=0.4)
    images = np.stack([np.zeros((8, 8, 3)), np.full((8, 8, 3), 255.0)]).astype("float32")
    labels = np.eye(2, dtype="float32")
    mixed = phase.mixer(seed=1)({"images": images, "labels": labels}, training=True)
    x, y = np.asarray(mixed["images"]), np.asarray(mixed["labels"])
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    # each image is a blend of the two, and its label says in which proportion
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)) / 255.0, y[:, 1], atol=1e-4)


def test_discriminative_learning_rates_fall_towards_the_stem_and_the_run_still_saves(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    phase = dataclasses.replace(FAST_TUNE, policy=tk.UnfreezeAll(), lr_decay=0.1, schedule="constant", epochs=1)
    tuner = tiny_tuner(fine_tune_phase=phase)
    tuner.train_head(data, verbose=0)
    phase.policy.apply(tuner.model, tuner.settings.spec)
    optimizer = phase_optimizer(phase, 4, tuner.result)  # what the phase compiles with
    rates = {}
    for variable in tuner.model.trainable_variables:
        chosen = optimizer._optimizer_map[variable.path]
        rates[variable.path.split("/")[0]] = float(keras.ops.convert_to_numpy(chosen.learning_rate))
    lr = phase.learning_rate
    assert rates["head_output"] == pytest.approx(lr) and rates["top_conv"] == pytest.approx(lr)
    assert rates["block3_conv"] == pytest.approx(lr * 0.1) and rates["block2_conv"] == pytest.approx(lr * 0.01)
    assert rates["stem_conv"] == pytest.approx(lr * 0.1 ** 4)
    backbone = tuner.model.get_layer("backbone")
    before = {n: backbone.get_layer(n).kernel.numpy().copy() for n in ("stem_conv", "top_conv")}
    tuner.fine_tune(data, verbose=0)
    moved = {n: float(np.abs(backbone.get_layer(n).kernel.numpy() - before[n]).mean()) for n in before}
    assert moved["top_conv"] > 0 and moved["stem_conv"] < moved["top_conv"]  # the stem barely moves
    tuner.save(tmp_path / "run")  # compiled with one optimizer again: the run saves and loads
    loaded = tk.FineTuner.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict(list(data.validation_files.paths)).probabilities,
                               tuner.predict(list(data.validation_files.paths)).probabilities, atol=1e-6)
    with pytest.raises(tk.ConfigError, match="lr_decay"):
        dataclasses.replace(phase, lr_decay=0.0)


def test_gradual_unfreezing_opens_one_more_block_per_stage(image_folder, caplog):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    phase = dataclasses.replace(FAST_TUNE, policy=tk.UnfreezeTop(3), gradual=True, epochs=4)
    assert [(s.policy.blocks, s.epochs) for s in phase.stages()] == [(1, 1), (2, 1), (3, 2)]
    tuner = tiny_tuner(fine_tune_phase=phase)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = tuner.fit(data, verbose=0)
    assert len(history["fine_tune"]["loss"]) == 4  # the stages' epochs, one history
    assert caplog.text.count("gradual unfreezing stage") == 3
    assert "stage 3 of 3: UnfreezeTop(train_batchnorm=False, blocks=3) for 2 epochs" in caplog.text
    assert tuner.best_epoch.epoch in (FAST_HEAD.epochs, FAST_HEAD.epochs + 1, FAST_HEAD.epochs + 2,
                                      FAST_HEAD.epochs + 4)  # a stage's end or the head's
    with pytest.raises(tk.ConfigError, match="gradual"):
        tk.Phase(epochs=2, learning_rate=1e-4, policy=tk.UnfreezeAll(), gradual=True)


def test_the_head_phase_averages_copies_of_a_linear_head_and_says_when_it_cannot(image_folder, caplog):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3), fine_tune_phase=None,
                   temperature_scaling=False)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = tuner.fit(data, verbose=0)
    assert "Phase head trains 3 copies of the head side by side" in caplog.text
    assert len(history["head"]["loss"]) == FAST_HEAD.epochs
    # the validation figures logged each epoch are those of the average, which the model now holds
    evaluation = tuner.evaluate(data)
    assert evaluation.accuracy == pytest.approx(history["head"]["val_accuracy"][-1], abs=1e-6)
    assert evaluation.loss == pytest.approx(history["head"]["val_loss"][-1], rel=1e-4)
    assert evaluation.accuracy >= 0.8
    caplog.clear()
    tuner = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1),
                   fine_tune_phase=dataclasses.replace(FAST_TUNE, heads=3, epochs=1))
    with caplog.at_level(logging.INFO, logger="transferkit"):
        tuner.fit(data, verbose=0)
    assert "Phase fine_tune trains one head, not 3 averaged copies" in caplog.text  # blocks train with it
    caplog.clear()
    hidden = tiny_tuner(head=tk.Head(hidden_units=(8,)), head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1),
                    fine_tune_phase=None)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        hidden.fit(data, verbose=0)
    assert "Phase head trains one head, not 3 averaged copies" in caplog.text
    caplog.clear()
    mirrored = tiny_tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1), fine_tune_phase=None,
                      distribute="mirrored")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        mirrored.fit(data, verbose=0)
    assert "not trained under a distribution strategy" in caplog.text
