"""FineTuner end to end on tiny generated data (and on real photos when ../shared is there)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_WEIGHTS, STAMPS5, needs_shared, write_bad_files, write_image_folder
from PIL import Image

import transferkit as tk

FAST_HEAD = dataclasses.replace(tk.HEAD_PHASE, epochs=8, learning_rate=1e-2, solve=False)  # trained
FAST_TUNE = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=2, learning_rate=1e-3, policy=tk.UnfreezeTop(1))


def _tuner(**kwargs):
    options = {"weights": "imagenet", "head_phase": FAST_HEAD, "fine_tune_phase": FAST_TUNE, "seed": 0,
               "refit": False}  # refit has tests of its own
    return tk.FineTuner("tiny_cnn", **{**options, **kwargs})


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_fit_learns_and_keeps_both_phases(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner()
    recorder = EpochRecorder()
    history = tuner.fit(data, callbacks=[recorder], verbose=0)
    assert list(history) == ["head", "fine_tune"]
    assert len(history["head"]["loss"]) == 8 and len(history["fine_tune"]["loss"]) == 2
    assert recorder.epochs == list(range(10))  # callbacks pass through; epochs continue across phases
    assert history["head"]["loss"][-1] < history["head"]["loss"][0]
    evaluation = tuner.evaluate(data)
    assert evaluation.accuracy >= 0.8  # colour gives the class away
    assert evaluation.confusion_matrix.sum() == data.num_validation
    assert np.trace(evaluation.confusion_matrix) == round(evaluation.accuracy * data.num_validation)
    assert set(evaluation.per_class) == {"blue", "green", "red"}
    assert evaluation.to_dict()["per_class"]["red"]["support"] == 3


def test_phases_are_public_steps(image_folder):
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    tuner = _tuner(keep_best=False)  # the last epoch's weights, to see what the fine-tune phase trained
    with pytest.raises(tk.NotFittedError):
        tuner.predict(np.zeros((1, 32, 32, 3)))
    tuner.train_head(data, verbose=0)
    backbone = tuner.model.get_layer("backbone")
    assert not any(layer.trainable for layer in backbone.layers if layer.weights)
    stem = backbone.get_layer("stem_conv").kernel.numpy().copy()
    top = backbone.get_layer("top_conv").kernel.numpy().copy()
    tuner.fine_tune(data, phase=dataclasses.replace(FAST_TUNE, epochs=1), verbose=0)
    assert list(tuner.history) == ["head", "fine_tune"]
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").kernel.numpy(), stem)
    assert not np.allclose(backbone.get_layer("top_conv").kernel.numpy(), top)


class WreckAtEpoch(keras.callbacks.Callback):
    """Scrambles every kernel the fit trains at the start of one epoch: that epoch ends worse."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            rng = np.random.default_rng(0)
            for weight in self.model.trainable_weights:
                weight.assign(rng.normal(0, 30, weight.shape).astype("float32"))


def test_keep_best_epoch_ends_each_phase_on_its_best_validated_epoch(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(keep_best="epoch")
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
    tuner = _tuner(fine_tune_phase=wrecking)
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


def test_fine_tune_schedule_warms_up_then_decays():
    phase = tk.Phase(epochs=4, learning_rate=1e-3, policy=tk.UnfreezeTop(1), schedule="cosine", warmup_epochs=1)
    schedule = phase.learning_rate_schedule(steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] >= 0.0


def test_save_load_round_trip_gives_identical_predictions(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    tuner = _tuner(fine_tune_phase=dataclasses.replace(FAST_TUNE, epochs=1))
    tuner.fit(data, verbose=0)
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    paths = list(data.validation_files.paths)
    before, after = tuner.predict(paths), loaded.predict(paths)
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    assert after.labels == before.labels and after.paths == tuple(paths)
    assert loaded.history == tuner.history and loaded.class_names == ("blue", "green", "red")
    top = after.top(2)
    assert len(top) == len(paths) and len(top[0]) == 2 and top[0][0][1] >= top[0][1][1]
    assert loaded.predict(image_folder / "red").labels.count("red") >= 9
    write_bad_files(image_folder / "red")
    with pytest.warns(tk.SkippedFilesWarning, match="truncated.jpg"):  # the folder scanner's rules
        assert len(loaded.predict(image_folder / "red").labels) == 12
    with pytest.raises(tk.DataError, match="not a saved FineTuner"):
        tk.FineTuner.load(tmp_path)


def test_training_completes_despite_bad_files(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=6)
    write_bad_files(root / "green")
    with pytest.warns(tk.SkippedFilesWarning, match="notes.jpg"):
        data = tk.load_folder(root, image_size=32, batch_size=8)
    tuner = _tuner(fine_tune_phase=dataclasses.replace(FAST_TUNE, epochs=1))
    tuner.fit(data, verbose=0)
    assert len(tuner.history["fine_tune"]["loss"]) == 1
    assert {p for p, _ in data.skipped} >= {str(root / "green" / "empty.jpg"), str(root / "green" / "corrupt.png")}


def test_mismatched_sizes_and_bad_options_are_clear(image_folder):
    data = tk.load_folder(image_folder, image_size=24)
    with pytest.raises(tk.DataError, match="image_size=24.*image_size=32"):
        tk.FineTuner("tiny_cnn", weights=None, image_size=32).fit(data, verbose=0)
    with pytest.raises(tk.ConfigError, match="class_weight"):
        tk.FineTuner("tiny_cnn", weights=None, class_weight="inverse")
    with pytest.raises(tk.ConfigError, match="warmup_epochs"):
        tk.Phase(epochs=2, learning_rate=1e-3, policy=tk.FreezeAll(), warmup_epochs=-1)
    with pytest.raises(tk.ConfigError, match="FreezePolicy"):
        tk.Phase(epochs=2, learning_rate=1e-3, policy="top2")
    with pytest.raises(tk.UnknownBackboneError, match="tiny_cnn"):
        tk.FineTuner("tiny_cn", weights=None)


def _multi_label_data(root, csv_path):
    """Two tags per image from the colour folders: warm/cool and bright/dark."""
    rows = ["path,label"] + [f"{p},{'warm' if 'red' in p else 'cool'} {'bright' if 'green' in p else 'dark'}"
                             for p in tk.scan_folder(root).paths]
    csv_path.write_text("\n".join(rows))
    return tk.load_csv(csv_path, multi_label=True, image_size=32, batch_size=8)


def test_balanced_class_weights_and_multi_label(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=8)
    data = tk.load_folder(root, image_size=32, batch_size=8)
    tuner = _tuner(fine_tune_phase=None, class_weight="balanced")
    tuner.fit(data, verbose=0)
    assert list(tuner.history) == ["head"]

    multi = _multi_label_data(root, tmp_path / "multi.csv")
    tagger = _tuner(fine_tune_phase=None)
    tagger.fit(multi, verbose=0)
    assert tagger.head.task == "multi_label"
    result = tagger.evaluate(multi)
    assert result.confusion_matrix is None and len(result.f1) == 4


FORMAT_1_RUN = Path(__file__).parent / "data" / "format1_run"


def test_a_run_saved_in_format_1_loads_predicts_and_trains_on(tmp_path, image_folder, caplog):
    """tests/data/format1_run was written by transferkit before heads were nested (format 1), with
    the probabilities it gave for seeded random pixels."""
    loaded = tk.FineTuner.load(FORMAT_1_RUN)
    pixels = np.random.default_rng(7).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    expected = np.load(FORMAT_1_RUN / "expected_probabilities.npy")
    np.testing.assert_allclose(loaded.predict(pixels).probabilities, expected, rtol=1e-5, atol=1e-6)
    assert loaded.evaluate(image_folder).confusion_matrix.sum() == 36
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        loaded.fine_tune(data, phase=dataclasses.replace(FAST_TUNE, epochs=1), verbose=0)
    assert "cached features" not in caplog.text  # the old layout trains whole
    loaded.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "transferkit.json").read_text())["format"] == 1  # the layout it has
    again = tk.FineTuner.load(tmp_path / "again")
    np.testing.assert_array_equal(again.predict(pixels).probabilities, loaded.predict(pixels).probabilities)


def test_report_metrics_from_one_pass_equal_evaluate(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    evaluation = tuner.evaluate(data)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("write_report ran the validation images through the network twice")

    tuner.evaluate = no_second_pass  # the metrics must come from the predictions made for the grid
    metrics = tuner.write_report(data, tmp_path / "run")
    assert metrics["validation"]["accuracy"] == evaluation.accuracy
    assert metrics["validation"]["loss"] == pytest.approx(evaluation.loss, rel=1e-5)
    assert metrics["validation"]["confusion_matrix"] == evaluation.confusion_matrix.tolist()
    assert metrics["best"] == tuner.best_epoch.to_dict()


def test_multi_label_report_draws_label_sets_without_a_confusion_matrix(tmp_path):
    data = _multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv")
    tagger = _tuner(fine_tune_phase=None)
    tagger.fit(data, verbose=0)
    metrics = tagger.write_report(data, tmp_path / "run")
    assert metrics["validation"]["confusion_matrix"] is None
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"predictions.png", "training_curves.png",
                                                                "metrics.json", "labels.txt"}
    assert not (tmp_path / "run" / "confusion_matrix.png").exists()
    sets = tagger.predict(list(data.validation_files.paths)).label_sets()
    assert len(sets) == data.num_validation and all(set(s) <= set(data.class_names) for s in sets)


@needs_shared
def test_real_weights_on_real_photos_fit_save_load_predict(tmp_path):
    weights = str(SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5")
    data = tk.load_folder(STAMPS5, image_size=128, validation_split=0.3, seed=0)
    tuner = tk.FineTuner(
        "mobilenet", weights=weights, seed=0,
        head_phase=dataclasses.replace(tk.HEAD_PHASE, epochs=3),
        fine_tune_phase=dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=1),
    )
    tuner.fit(data, verbose=0)
    accuracy = tuner.evaluate(data).accuracy
    assert accuracy > 0.6  # 5 classes: chance is about 0.38 (the majority class)
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    paths = list(data.validation_files.paths[:8])
    np.testing.assert_array_equal(tuner.predict(paths).probabilities, loaded.predict(paths).probabilities)


def test_keep_last_and_patience(image_folder, tmp_path):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    assert tuner.best_epoch is not None
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.best_epoch == tuner.best_epoch  # where the saved weights came from
    loaded.keep_best = False
    loaded.fine_tune(data, phase=dataclasses.replace(FAST_TUNE, epochs=1), verbose=0)
    assert loaded.best_epoch is None  # the last epoch's weights now, not the saved run's

    patient = _tuner(head_phase=dataclasses.replace(FAST_HEAD, epochs=30, patience=2), fine_tune_phase=None)
    history = patient.fit(data, verbose=0)["head"]
    assert len(history["loss"]) < 30  # stopped once the validation accuracy stopped rising
    best = max(history["val_accuracy"])
    assert history["val_accuracy"][-3] == best and max(history["val_accuracy"][-2:]) <= best
    no_validation = tk.load_folder(image_folder, image_size=32, validation_split=0.0, batch_size=8)
    with pytest.raises(tk.ConfigError, match="no validation data"):
        _tuner(head_phase=dataclasses.replace(FAST_HEAD, patience=2)).fit(no_validation, verbose=0)


def test_multi_label_heads_keep_the_epoch_with_the_lowest_validation_loss(tmp_path):
    data = _multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv")
    tagger = _tuner(fine_tune_phase=None, keep_best="epoch")
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
        last = _tuner(keep_best=False, temperature_scaling=False, fine_tune_phase=fine)
        last.fit(data, verbose=0)
        ends[phase] = calibrated_loss(last.predict(paths).probabilities, labels)
    tuner = _tuner()
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
    plain = _tuner()
    plain.fit(data, verbose=0)
    # colour gives the class away: both phases get every validation image right, so no
    # temperature can be fitted and the lower plain loss decides, as with few images
    assert plain.history["fine_tune"]["val_accuracy"][-1] == plain.history["head"]["val_accuracy"][-1] == 1.0
    assert plain.best_epoch.phase == "fine_tune" and plain.best_epoch.calibrated_loss is None
    assert plain.history["fine_tune"]["val_loss"][-1] < plain.history["head"]["val_loss"][-1]
    # with a calibrated loss measured (here set by hand), it decides against the plain loss
    rated = iter([0.1, 0.2])
    monkeypatch.setattr(tk.FineTuner, "_calibrated_loss", staticmethod(lambda trained, validation: next(rated)))
    tuner = _tuner()
    tuner.fit(data, verbose=0)
    assert tuner.best_epoch.phase == "head" and tuner.best_epoch.calibrated_loss == 0.1


def test_calibrated_loss_of_a_phase_end():
    outputs = np.array([[0.6, 0.4], [0.3, 0.7]] * 11, dtype=np.float32)  # 22 images
    right = np.array([0, 1] * 11)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])

    def rated(labels):
        return tk.FineTuner._calibrated_loss(model, tf.data.Dataset.from_tensor_slices((outputs, labels)).batch(8))

    from transferkit._calibration import calibrated_loss

    assert rated(right) is None  # every image right: the best temperature would be the bound
    wrong = right.copy()
    wrong[0] = 1
    assert rated(wrong) == pytest.approx(calibrated_loss(outputs, wrong))
    assert rated(wrong[:, None]) == pytest.approx(calibrated_loss(outputs, wrong))  # labels shaped (n, 1)
    assert rated(np.eye(2)[wrong]) == pytest.approx(calibrated_loss(outputs, wrong))  # one-hot labels
    assert tk.FineTuner._calibrated_loss(model, tf.data.Dataset.from_tensor_slices(
        (outputs[:19], wrong[:19])).batch(8)) is None  # fewer than 20 images: one temperature is a guess


def test_keep_best_phase_compares_phase_ends_only(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(fine_tune_phase=None)  # keep_best="phase", the default
    history = tuner.train_head(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)
    assert max(history["val_accuracy"]) > history["val_accuracy"][-1]  # an earlier epoch validated better …
    assert tuner.best_epoch.epoch == FAST_HEAD.epochs  # … but the candidate of a phase is its end
    last = _tuner(fine_tune_phase=None, keep_best=False)
    last.train_head(data, callbacks=[WreckAtEpoch(FAST_HEAD.epochs - 1)], verbose=0)
    for kept, final in zip(tuner.model.get_weights(), last.model.get_weights()):
        np.testing.assert_array_equal(kept, final)  # the weights the phase ended with
    with pytest.raises(tk.ConfigError, match="keep_best"):
        _tuner(keep_best="best")


def test_refit_trains_again_on_all_images_and_reports_the_held_out_figures(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    wrecking = tk.Phase(epochs=2, learning_rate=50.0, policy=tk.UnfreezeAll(), optimizer="sgd")
    tuner = _tuner(fine_tune_phase=wrecking, refit=True)
    history = tuner.fit(data, verbose=0)
    assert len(history["head"]["loss"]) == FAST_HEAD.epochs
    # the divergence guard stops the phase in the epoch where its loss becomes nan, else it runs both epochs
    ran = tuner.divergences[0].epoch - FAST_HEAD.epochs if tuner.divergences else 2
    assert len(history["fine_tune"]["loss"]) == ran
    assert tuner.best_epoch.phase == "head"  # fine-tuning only made it worse …
    assert tuner.refitted.phases == ("head",)  # … so only the head phase is run again
    assert tuner.refitted.epochs == (FAST_HEAD.epochs,)
    assert tuner.refitted.images == data.num_train + data.num_validation
    selected = _tuner(fine_tune_phase=wrecking)  # the same run without the refit
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
    first = _tuner(fine_tune_phase=None)
    first.fit(data, verbose=0)
    first.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    before = loaded.model.get_layer("head").get_layer("head_output").kernel.numpy().copy()
    loaded.refit, loaded.head_phase = "auto", FAST_HEAD  # a trained head phase (a solved one starts afresh)
    loaded.fit(data, verbose=0)  # continues the loaded weights; a refit would start again from ImageNet
    assert loaded.refitted is None
    kernel = loaded.model.get_layer("head").get_layer("head_output").kernel.numpy()
    assert np.abs(kernel - before).mean() < np.abs(before).mean()  # moved on from the loaded head, not reset
    loaded.refit = True
    with pytest.raises(tk.ConfigError, match="already holds a trained"):
        loaded.fit(data, verbose=0)


def test_refit_auto_and_refit_true_choose_where_it_applies(image_folder, monkeypatch):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    small = _tuner(fine_tune_phase=None, refit="auto")
    small.fit(data, verbose=0)
    assert small.refitted is not None and small.refitted.phases == ("head",)
    monkeypatch.setattr("transferkit._finetuner.REFIT_MAX_IMAGES", data.num_train + data.num_validation - 1)
    large = _tuner(fine_tune_phase=None, refit="auto")
    large.fit(data, verbose=0)
    assert large.refitted is None
    pixels = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3)).astype("uint8")
    arrays = tk.from_arrays(pixels, [0, 1] * 6, image_size=32, validation_split=0.25)
    with pytest.raises(tk.ConfigError, match="refit=True"):
        _tuner(fine_tune_phase=None, refit=True).fit(arrays, verbose=0)
    with pytest.raises(tk.ConfigError, match="refit"):
        _tuner(refit="yes")


def test_from_scratch_baseline_trains_every_layer_and_batchnorm(image_folder):
    from transferkit._demo import train_from_scratch

    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = train_from_scratch("tiny_cnn", data, epochs=2, seed=0)
    backbone = tuner.model.get_layer("backbone")
    norm = backbone.get_layer("stem_bn")
    assert norm.trainable and norm.momentum == 0.9
    assert not np.allclose(norm.moving_mean.numpy(), 0.0)  # statistics followed the batches
    assert all(layer.trainable for layer in backbone.layers)
    assert len(tuner.history["head"]["loss"]) == 2 and tuner.weights is None


def _noise_folder(root: Path, per_class: int = 30) -> Path:
    """Three classes of random-noise images: a model trained on them makes mistakes to calibrate on."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{n}.png")
    return root


def test_fit_calibrates_probabilities_without_changing_predictions(tmp_path):
    from transferkit._calibration import fit_temperature, reliability, scale

    data = tk.load_folder(_noise_folder(tmp_path / "noise"), image_size=32, validation_split=0.25, batch_size=8)
    plain = _tuner(temperature_scaling=False)
    plain.fit(data, verbose=0)
    assert plain.calibration is None
    tuner = _tuner()
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
    assert tuner._cached_validation is not None
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
    data = tk.load_folder(_noise_folder(tmp_path / "noise"), image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(fine_tune_phase=None, temperature_scaling=False)
    tuner.train_head(data, verbose=0)
    from transferkit._calibration import fit_temperature

    first = tuner.calibrate(data)
    files = data.validation_files
    again = fit_temperature(tuner.predict(list(files.paths)).probabilities, files.labels)
    second = tuner.calibrate(data)  # calibrating a calibrated model: the temperatures multiply
    assert second.temperature == pytest.approx(first.temperature * again, rel=1e-3)
    easy = _tuner(fine_tune_phase=None, temperature_scaling=False)
    easy.train_head(tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8), verbose=0)
    assert easy.evaluate(tk.load_folder(image_folder, image_size=32, validation_split=0.25)).accuracy == 1.0
    assert easy.calibrate(image_folder).temperature == 1.0  # no mistakes: nothing to fit, left at 1
    tagger = _tuner(fine_tune_phase=None)
    tagger.fit(_multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv"),
               verbose=0)
    assert tagger.calibration is None
    with pytest.raises(tk.ConfigError, match="single-label"):
        tagger.calibrate(data)


def test_test_time_augmentation_averages_augmented_views(tmp_path, image_folder):
    from transferkit._inference import TestTimeAugmentation

    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    paths = list(data.validation_files.paths)
    plain = tuner.predict(paths).probabilities
    assert np.array_equal(tuner.predict(paths, tta=0).probabilities, plain)
    flip_only = tk.Augment(flip="horizontal", rotation=0.0, zoom=0.0, contrast=0.0)
    pixels = np.stack([tk.data.load_image(p, image_size=32) for p in paths]).astype("float32")
    mirrored = tuner.predict(pixels[:, :, ::-1]).probabilities
    averaged = tuner.predict(paths, tta=8, augment=flip_only).probabilities
    # every view is the image or its mirror image: the average lies between the two, per image
    low, high = np.minimum(plain, mirrored) - 1e-5, np.maximum(plain, mirrored) + 1e-5
    assert np.all((averaged >= low) & (averaged <= high))
    assert not np.allclose(averaged, plain)  # the flipped views counted
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-5)
    evaluation = tuner.evaluate(data, tta=2)
    assert 0.0 <= evaluation.accuracy <= 1.0 and evaluation.confusion_matrix.sum() == data.num_validation
    with pytest.raises(tk.ConfigError, match="tta"):
        TestTimeAugmentation(-1, flip_only)


def test_label_smoothing_and_mixing_train_on_soft_labels_and_leave_integer_labels_working(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    smooth = _tuner(head_phase=dataclasses.replace(FAST_HEAD, label_smoothing=0.2), fine_tune_phase=None)
    smooth.fit(data, verbose=0)
    plain = _tuner(fine_tune_phase=None)
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
        mixed = _tuner(head_phase=dataclasses.replace(FAST_HEAD, epochs=2),
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
    tuner = _tuner(fine_tune_phase=phase)
    tuner.train_head(data, verbose=0)
    phase.policy.apply(tuner.model, tuner.spec)
    optimizer = tuner._optimizer(phase, steps=4)  # what the phase compiles with
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
    tuner = _tuner(fine_tune_phase=phase)
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
    tuner = _tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3), fine_tune_phase=None,
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
    tuner = _tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1),
                   fine_tune_phase=dataclasses.replace(FAST_TUNE, heads=3, epochs=1))
    with caplog.at_level(logging.INFO, logger="transferkit"):
        tuner.fit(data, verbose=0)
    assert "Phase fine_tune trains one head, not 3 averaged copies" in caplog.text  # blocks train with it
    caplog.clear()
    hidden = _tuner(head=tk.Head(hidden_units=(8,)), head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1),
                    fine_tune_phase=None)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        hidden.fit(data, verbose=0)
    assert "Phase head trains one head, not 3 averaged copies" in caplog.text
    caplog.clear()
    mirrored = _tuner(head_phase=dataclasses.replace(FAST_HEAD, heads=3, epochs=1), fine_tune_phase=None,
                      distribute="mirrored")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        mirrored.fit(data, verbose=0)
    assert "not trained under a distribution strategy" in caplog.text
