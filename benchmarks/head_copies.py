"""The head phase's choices: one trained head, five averaged copies, the solved head, and the probe.

    .venv/bin/python benchmarks/head_copies.py [--part pool stamps5 suite] [--partitions N] [--copies 1 5 20]
                                               [--seeds 4]

  pool     the whole recipe in process (the FineTuner defaults with one trained head, five trained
           copies, and the solved head of the default head phase) on 50
           Fashion-MNIST images per class drawn from images 40,000–49,999 of ../shared's training
           file (a pool the accuracy suite does not use), 100 others per class to test on;
           seeds 1–3; 96 px; about 6 minutes
  stamps5  the head alone on the cached features of the accuracy suite's five stamps5 folds (224 px):
           one head, 5 and 20 copies, four seeds each, against the probe (scikit-learn's
           LogisticRegression, C = 1, on standardised features) and scikit-learn's
           LogisticRegressionCV on the raw features (C from 1e-3 to 100 chosen by five-fold
           cross-validated log loss on the training images) and RidgeClassifierCV on the raw
           features (alpha from 0.01 to 10,000 by its leave-one-out error), and transferkit's solved
           head (Phase(solve=True): C from 0.003 to 3 by five-fold cross-validation); about 3 minutes. --partitions N
           repeats it over N different five-fold partitions (the suite's first), the test that
           tells a real difference from the draw of one partition. Both parts print the
           solvers' fitting times
  suite    the head alone on the cached features of the accuracy suite's fashion50, digits and
           fashion200 tasks: --copies copies (--seeds seeds each), the probe, the cross-validated
           logistic regression, the ridge classifier and the solved head; about 15 minutes

Prints the mean test accuracy of each; in process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import selection
import tensorflow as tf
from common import MOBILENET_NOTOP, SHARED, shared_missing, stratified_folds

import transferkit as tk
from transferkit._members import HeadMembers, repeat_labels
from transferkit._solve import solve_head

POOL = 40_000
RIDGE_ALPHAS = np.logspace(-2, 4, 13).tolist()  # 0.01 … 10,000


POOL_HEADS = {  # the head phase of each variant of the whole recipe
    "one trained head": dataclasses.replace(tk.HEAD_PHASE, heads=1, solve=False),
    "five trained copies": dataclasses.replace(tk.HEAD_PHASE, solve=False),
    "solved head (the default)": tk.HEAD_PHASE,
}


def pool_part(tmp: Path) -> None:
    selection.POOL_START = POOL  # write_task draws from this pool
    scores: dict[str, list[float]] = {name: [] for name in POOL_HEADS}
    for seed in (1, 2, 3):
        train, test = selection.write_task(tmp / f"pool_{seed}", seed=seed, per_class=50)
        for name, phase in POOL_HEADS.items():
            tuner = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), image_size=96, seed=seed,
                                 head_phase=phase)
            tuner.fit(str(train), verbose=0)
            scores[name].append(tuner.evaluate(str(test)).accuracy)
            keras.backend.clear_session()
            print(f"pool, seed {seed}, {name}: {scores[name][-1]:.3f}", flush=True)
    for name, values in scores.items():
        print(f"pool {POOL:,}+, 50/class, whole recipe, {name}: {np.mean(values):.3f} ± {np.std(values):.3f} "
              f"({', '.join(f'{v:.3f}' for v in values)})")


def pooled_features(size: int) -> keras.Model:
    model = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), image_size=size, class_names=("a", "b")).build()
    return keras.Sequential([keras.Input((size, size, 3)), model.get_layer("preprocess"), model.get_layer("backbone"),
                             keras.layers.GlobalAveragePooling2D()])


def copies_accuracy(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, copies: int,
                    seed: int) -> float:
    """The default head phase (50 epochs, Adam 1e-3, dropout 0.2, batches of 32) with ``copies`` copies."""
    keras.utils.set_random_seed(seed)
    classes = int(y.max()) + 1
    inputs = keras.Input(x.shape[1:])
    layer = HeadMembers(copies, classes, dropout=0.2, activation="softmax")
    model = keras.Model(inputs, layer(inputs))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(repeat_labels(batches, copies), epochs=50, verbose=0, shuffle=False)  # shuffled above
    return float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))


def features_of(folder: Path, size: int, extractor: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    data = tk.load_folder(folder, image_size=size, validation_split=0.0, seed=0)
    labels = np.concatenate([y for _, y in data.train_ordered.as_numpy_iterator()])
    return extractor.predict(data.train_ordered, verbose=0), labels


def score_heads(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, results: dict[str, list[float]],
                *, copies_list: list[int], seeds: int) -> None:
    """Append to ``results`` the test accuracy of every head on one task, and the solvers' fitting times."""
    import time

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler

    def score(name: str, predicted: np.ndarray) -> None:
        results.setdefault(name, []).append(float(np.mean(predicted == y_test)))

    scaler = StandardScaler().fit(x)
    score("probe", LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y).predict(
        scaler.transform(x_test)))
    started = time.perf_counter()
    solved = solve_head(x, y, int(y.max()) + 1)
    results.setdefault("solved head: seconds to fit", []).append(time.perf_counter() - started)
    score("solved head (transferkit's solve)", np.argmax(x_test @ solved.kernel + solved.bias, axis=1))
    for name, solver in (("logistic regression, C by cross-validation, raw features",
                          LogisticRegressionCV(Cs=np.logspace(-3, 2, 11).tolist(), cv=5, max_iter=3000,
                                               scoring="neg_log_loss")),
                         ("ridge classifier, alpha by leave-one-out, raw features",
                          RidgeClassifierCV(alphas=RIDGE_ALPHAS))):
        started = time.perf_counter()
        solver.fit(x, y)
        results.setdefault(f"{name.split(',')[0]}: seconds to fit", []).append(time.perf_counter() - started)
        score(name, solver.predict(x_test))
    for copies in copies_list:
        runs = [copies_accuracy(x, y, x_test, y_test, copies=copies, seed=s) for s in range(seeds)]
        results.setdefault(f"{copies} cop{'y' if copies == 1 else 'ies'}", []).append(float(np.mean(runs)))


def suite_part(tmp: Path, *, copies_list: list[int], seeds: int) -> None:
    from accuracy import tasks

    extractor = pooled_features(96)
    for dataset in ("fashion50", "digits", "fashion200"):
        results: dict[str, list[float]] = {}
        for train_dir, test_dir, _ in tasks(dataset, tmp):
            (x, y), (x_test, y_test) = features_of(train_dir, 96, extractor), features_of(test_dir, 96, extractor)
            score_heads(x, y, x_test, y_test, results, copies_list=copies_list, seeds=seeds)
            print(f"{train_dir.parent.name}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)
        for name, values in results.items():
            print(f"{dataset}, head alone, {name}: {np.mean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")


def stamps5_part(*, partitions: int, copies_list: list[int], seeds: int) -> None:
    files = tk.scan_folder(SHARED / "data" / "stamps5")
    features, labels = features_of(SHARED / "data" / "stamps5", 224, pooled_features(224))
    assert np.array_equal(labels, files.labels), "the loader keeps the folder's order"
    results: dict[str, list[float]] = {}
    everything = np.arange(len(files))
    for partition in range(partitions):  # partition 0: the accuracy suite's folds
        for k, test in enumerate(stratified_folds(files.labels, 5, seed=partition)):
            train = np.setdiff1d(everything, test)
            score_heads(features[train], labels[train], features[test], labels[test], results,
                        copies_list=copies_list, seeds=seeds)
            print(f"stamps5 partition {partition}, fold {k + 1}: "
                  + ", ".join(f"{key} {v[-1]:.3f}" for key, v in results.items()), flush=True)
    for name, folds in results.items():
        by_partition = [float(np.mean(folds[i:i + 5])) for i in range(0, len(folds), 5)]
        print(f"stamps5, head alone, {name}: {np.mean(folds):.3f} over {len(folds)} folds "
              f"(partitions {', '.join(f'{p:.3f}' for p in by_partition)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["pool", "stamps5"], choices=["pool", "stamps5", "suite"])
    parser.add_argument("--partitions", type=int, default=1, help="five-fold partitions of stamps5 (default 1)")
    parser.add_argument("--copies", type=int, nargs="*", default=[1, 5, 20],
                        help="head copies to train (none: the solvers alone)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per head and fold")
    args = parser.parse_args()
    if shared_missing():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if "pool" in args.part:
            pool_part(Path(tmp))
        if "stamps5" in args.part:
            stamps5_part(partitions=args.partitions, copies_list=args.copies, seeds=args.seeds)
        if "suite" in args.part:
            suite_part(Path(tmp), copies_list=args.copies, seeds=args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
