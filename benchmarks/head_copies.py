"""Five averaged copies of the head against one, and the heads against the logistic-regression probe.

    .venv/bin/python benchmarks/head_copies.py [--part pool stamps5]

  pool     the whole recipe in process (the FineTuner defaults with heads=1 and heads=5) on 50
           Fashion-MNIST images per class drawn from images 40,000–49,999 of ../shared's training
           file (a pool the accuracy suite does not use), 100 others per class to test on;
           seeds 1–3; 96 px; about 4 minutes
  stamps5  the head alone on the cached features of the accuracy suite's five stamps5 folds (224 px):
           one head, 5 and 20 copies, four seeds each, against the probe (scikit-learn's
           LogisticRegression, C = 1, on standardised features); about 3 minutes

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

POOL = 40_000


def pool_part(tmp: Path) -> None:
    selection.POOL_START = POOL  # write_task draws from this pool
    scores: dict[int, list[float]] = {1: [], 5: []}
    for seed in (1, 2, 3):
        train, test = selection.write_task(tmp / f"pool_{seed}", seed=seed, per_class=50)
        for heads in scores:
            tuner = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), image_size=96, seed=seed,
                                 head_phase=dataclasses.replace(tk.HEAD_PHASE, heads=heads))
            tuner.fit(str(train), verbose=0)
            scores[heads].append(tuner.evaluate(str(test)).accuracy)
            keras.backend.clear_session()
            print(f"pool, seed {seed}, heads={heads}: {scores[heads][-1]:.3f}", flush=True)
    for heads, values in scores.items():
        print(f"pool {POOL:,}+, 50/class, whole recipe, heads={heads}: {np.mean(values):.3f} ± {np.std(values):.3f} "
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


def stamps5_part() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    files = tk.scan_folder(SHARED / "data" / "stamps5")
    data = tk.load_folder(SHARED / "data" / "stamps5", image_size=224, validation_split=0.0, seed=0)
    features = pooled_features(224).predict(data.train_ordered, verbose=0)
    labels = np.concatenate([y for _, y in data.train_ordered.as_numpy_iterator()])
    assert np.array_equal(labels, files.labels), "the loader keeps the folder's order"
    results: dict[str, list[float]] = {}
    everything = np.arange(len(files))
    for k, test in enumerate(stratified_folds(files.labels, 5, seed=0)):  # the accuracy suite's folds
        train = np.setdiff1d(everything, test)
        x, y, x_test, y_test = features[train], labels[train], features[test], labels[test]
        scaler = StandardScaler().fit(x)
        probe = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
        results.setdefault("probe", []).append(float(np.mean(probe.predict(scaler.transform(x_test)) == y_test)))
        for copies in (1, 5, 20):
            runs = [copies_accuracy(x, y, x_test, y_test, copies=copies, seed=s) for s in range(4)]
            results.setdefault(f"{copies} cop{'y' if copies == 1 else 'ies'}", []).append(float(np.mean(runs)))
            print(f"stamps5 fold {k + 1}, {copies} copies: {', '.join(f'{r:.3f}' for r in runs)}", flush=True)
    for name, folds in results.items():
        print(f"stamps5, head alone, {name}: {np.mean(folds):.3f} (folds {', '.join(f'{f:.3f}' for f in folds)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["pool", "stamps5"], choices=["pool", "stamps5"])
    args = parser.parse_args()
    if shared_missing():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if "pool" in args.part:
            pool_part(Path(tmp))
        if "stamps5" in args.part:
            stamps5_part()
    return 0


if __name__ == "__main__":
    sys.exit(main())
