"""FineTuner end to end on tiny generated data (and on real photos when ../shared is there)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_WEIGHTS, STAMPS5, needs_shared, write_bad_files, write_image_folder
from tuners import FAST_TUNE, EpochRecorder, multi_label_data, tiny_tuner

import transferkit as tk


def test_fit_learns_and_keeps_both_phases(image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner()
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
    tuner = tiny_tuner(keep_best=False)  # the last epoch's weights, to see what the fine-tune phase trained
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


def test_save_load_round_trip_gives_identical_predictions(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=dataclasses.replace(FAST_TUNE, epochs=1))
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
    tuner = tiny_tuner(fine_tune_phase=dataclasses.replace(FAST_TUNE, epochs=1))
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


def test_balanced_class_weights_and_multi_label(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=8)
    data = tk.load_folder(root, image_size=32, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None, class_weight="balanced")
    tuner.fit(data, verbose=0)
    assert list(tuner.history) == ["head"]

    multi = multi_label_data(root, tmp_path / "multi.csv")
    tagger = tiny_tuner(fine_tune_phase=None)
    tagger.fit(multi, verbose=0)
    assert tagger.result.head.task == "multi_label"
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


def test_report_metrics_from_one_pass_equal_evaluate(tmp_path, image_folder, monkeypatch):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    evaluation = tuner.evaluate(data)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("write_report ran the validation images through the network twice")

    # the metrics must come from the predictions made for the grid
    monkeypatch.setattr(tk.TrainedRun, "evaluate", no_second_pass)
    monkeypatch.setattr(tk.TrainedRun, "outputs_and_labels", no_second_pass)
    metrics = tuner.write_report(data, tmp_path / "run")
    assert metrics["validation"]["accuracy"] == evaluation.accuracy
    assert metrics["validation"]["loss"] == pytest.approx(evaluation.loss, rel=1e-5)
    assert metrics["validation"]["confusion_matrix"] == evaluation.confusion_matrix.tolist()
    assert metrics["best"] == tuner.best_epoch.to_dict()


def test_multi_label_report_draws_label_sets_without_a_confusion_matrix(tmp_path):
    data = multi_label_data(write_image_folder(tmp_path / "data", per_class=6), tmp_path / "multi.csv")
    tagger = tiny_tuner(fine_tune_phase=None)
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


def test_from_scratch_baseline_trains_every_layer_and_batchnorm(image_folder):
    from transferkit._demo import train_from_scratch

    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = train_from_scratch("tiny_cnn", data, epochs=2, seed=0)
    backbone = tuner.model.get_layer("backbone")
    norm = backbone.get_layer("stem_bn")
    assert norm.trainable and norm.momentum == 0.9
    assert not np.allclose(norm.moving_mean.numpy(), 0.0)  # statistics followed the batches
    assert all(layer.trainable for layer in backbone.layers)
    assert len(tuner.history["head"]["loss"]) == 2 and tuner.settings.weights is None


def test_test_time_augmentation_averages_augmented_views(tmp_path, image_folder):
    from transferkit._inference import TestTimeAugmentation

    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None)
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


def test_settings_and_results_cannot_be_set_by_hand():
    tuner = tiny_tuner()
    with pytest.raises(AttributeError, match=r"keep_best cannot be set.*from_run\(tuner.result, keep_best="):
        tuner.keep_best = False
    with pytest.raises(AttributeError, match="model cannot be set.*trained result"):
        tuner.model = None
    assert tuner.settings.keep_best == "phase"


def test_balanced_class_weights_come_from_the_last_image_data_and_need_single_labels(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=8)
    data = tk.load_folder(root, image_size=32, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None, class_weight="balanced")
    tuner.train_head(data, verbose=0)
    # batches alone carry no class counts: the weights of the ImageData trained on before still apply
    tuner.fine_tune(data.train, data.validation, phase=dataclasses.replace(FAST_TUNE, epochs=1), verbose=0)
    assert len(tuner.history["fine_tune"]["loss"]) == 1
    multi = multi_label_data(root, tmp_path / "multi.csv")
    with pytest.raises(tk.ConfigError, match="balanced"):
        tiny_tuner(fine_tune_phase=None, class_weight="balanced").fit(multi, verbose=0)


def test_a_saved_run_keeps_validation_samples_and_a_damaged_file_does_not_stop_loading(tmp_path, image_folder):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = tiny_tuner(fine_tune_phase=None)
    tuner.fit(data, verbose=0)
    tuner.save(tmp_path / "run")
    run = tk.TrainedRun.load(tmp_path / "run")
    paths = list(data.validation_files.paths)
    assert run.samples.shape == (len(paths), 32, 32, 3) and run.samples.dtype == np.uint8
    np.testing.assert_array_equal(run.samples[0], tk.data.load_image(paths[0], image_size=32))
    (tmp_path / "run" / "samples.npz").write_bytes(b"damaged")
    assert tk.TrainedRun.load(tmp_path / "run").samples is None  # the model loads; exports fall back
    run.samples = None
    run.save(tmp_path / "run")  # a run without samples leaves none of another's behind
    assert not (tmp_path / "run" / "samples.npz").exists()
