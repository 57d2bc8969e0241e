"""The solved linear head: the solver against scikit-learn, and Phase(solve=True) in a FineTuner."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from tuners import FAST_HEAD
from tuners import tiny_tuner as _tuner

import transferkit as tk
from transferkit._members import pooled_features
from transferkit._model import model_parts
from transferkit._solve import C_GRID, solve_head


def _blobs(per_class: int = 40, classes: int = 3, dim: int = 20, spread: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2.0
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dim)) * spread + 3.0  # not centred
    return features.astype(np.float32), labels


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_the_solution_is_scikit_learns_logistic_regression(c):
    features, labels = _blobs()
    solved = solve_head(features, labels, 3, grid=(c,))
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(features, labels)
    assert solved.c == c and solved.folds == 0
    np.testing.assert_allclose(solved.kernel.T, reference.coef_, atol=2e-2 * np.abs(reference.coef_).max())
    logits = features @ solved.kernel + solved.bias
    expected = reference.decision_function(features)
    np.testing.assert_allclose(logits - logits.mean(axis=1, keepdims=True), expected,
                               atol=2e-2 * np.abs(expected).max())


def test_c_is_chosen_by_cross_validation_and_follows_the_noise():
    clean, clean_labels = _blobs(spread=0.5)
    noisy, noisy_labels = _blobs(spread=6.0, seed=1)
    a, b = solve_head(clean, clean_labels, 3), solve_head(noisy, noisy_labels, 3)
    assert a.folds == b.folds == 5
    assert set(a.cv_log_loss) == set(C_GRID)
    assert a.cv_log_loss[a.c] == min(a.cv_log_loss.values())
    # well separated classes want a weak penalty; classes that overlap a strong one
    assert a.c > b.c


def test_sample_weights_count_as_repeated_images_and_one_image_a_class_skips_cross_validation():
    features, labels = _blobs(per_class=10)
    weights = np.where(np.arange(len(labels)) % 2 == 0, 2.0, 1.0)
    repeated = np.concatenate([np.arange(len(labels)), np.flatnonzero(weights == 2.0)])
    weighted = solve_head(features, labels, 3, sample_weight=weights, grid=(0.3,))
    # weights are taken relative to their mean (the images count as n, not as the weights' sum), so the
    # copied set's n' images need C' = C * n / n' for the same penalty against the mean loss
    copied = solve_head(features[repeated], labels[repeated], 3, grid=(0.3 * len(labels) / len(repeated),))
    np.testing.assert_allclose(weighted.kernel, copied.kernel, atol=1e-2 * np.abs(copied.kernel).max())
    single = solve_head(features[[0, 10, 20]], labels[[0, 10, 20]], 3)
    assert single.folds == 0 and single.c == 1.0 and single.cv_log_loss == {}


def test_a_solved_head_phase_holds_the_solution_and_runs_one_epoch(image_folder, caplog):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    tuner = _tuner(head_phase=dataclasses.replace(FAST_HEAD, solve=True), fine_tune_phase=None,
                   temperature_scaling=False)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = tuner.fit(data, verbose=0)
    assert "Phase head: solved the linear head on" in caplog.text
    assert len(history["head"]["loss"]) == 1  # the epoch at rate 0 that records the solved head
    solution = tuner.solutions["head"]
    assert solution.c in C_GRID
    parts = model_parts(tuner.model)
    output = parts.head.get_layer("head_output")
    np.testing.assert_allclose(output.kernel.numpy(), solution.kernel, atol=1e-6)  # rate 0 left it as solved
    # it is the solution for the training images' features (the same C: the optimum does not depend on
    # the order the images come in, the folds of the cross-validation do)
    batches = [(parts.backbone(parts.preprocessor(x), training=False), y) for x, y in data.train_ordered]
    features, labels = pooled_features(parts.head, batches)
    assert len(labels) == data.num_train
    again = solve_head(features, labels, len(data.class_names), grid=(solution.c,))
    np.testing.assert_allclose(again.kernel, solution.kernel, atol=1e-3 * np.abs(solution.kernel).max())
    evaluation = tuner.evaluate(data)
    assert evaluation.accuracy == pytest.approx(history["head"]["val_accuracy"][0], abs=1e-6)
    assert evaluation.accuracy >= 0.8


def test_a_head_that_cannot_be_solved_trains_and_says_so(image_folder, caplog):
    data = tk.load_folder(image_folder, image_size=32, validation_split=0.25, batch_size=8)
    hidden = _tuner(head=tk.Head(hidden_units=(8,)), head_phase=dataclasses.replace(FAST_HEAD, solve=True, epochs=2),
                    fine_tune_phase=None, temperature_scaling=False)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = hidden.fit(data, verbose=0)
    assert "Phase head trains its head instead of solving it" in caplog.text
    assert len(history["head"]["loss"]) == 2 and "head" not in hidden.solutions
    with pytest.raises(tk.ConfigError, match="mix"):
        tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll(), solve=True, mix="mixup")
