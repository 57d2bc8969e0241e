"""Accuracy of transferkit's defaults against the seed recipe, on real data, 5-fold.

Three recipes, the same MobileNet v1 network with the real ImageNet weights from ../shared:

  seed        frozen backbone + GlobalAveragePooling + Dense(128, relu) + softmax, Adam 1e-3,
              10 epochs, images loaded with keras.utils.load_img and rescaled by 1/255
  transferkit FineTuner defaults (head phase, then fine-tuning of the top blocks)
  random      FineTuner defaults from random weights

on two datasets: ../shared/data/stamps5 at 224 px, and 2,000 Fashion-MNIST training images
(200 per class) at 96 px. Prints a Markdown table (mean ± std over the folds, wall time).

    python benchmarks/accuracy.py [--datasets stamps5 fashion] [--recipes seed transferkit random]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from common import MOBILENET_NOTOP, SHARED, print_report, shared_missing, stratified_folds, write_fashion_subset

import transferkit as tk


def seed_recipe(files: tk.ImageFiles, train_idx: np.ndarray, test_idx: np.ndarray, size: int) -> float:
    """What the seed script does, in plain Keras."""

    def load(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(files.paths[i], target_size=(size, size)))
                      for i in indices]) / 255.0
        return x.astype("float32"), files.labels[indices]

    (x_train, y_train), (x_test, y_test) = load(train_idx), load(test_idx)
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3))
    base.load_weights(str(MOBILENET_NOTOP))
    base.trainable = False
    model = keras.Sequential([
        keras.Input((size, size, 3)), base, keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dense(len(files.class_names), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return float(model.evaluate(x_test, y_test, verbose=0)[1])


def finetuner_recipe(files: tk.ImageFiles, train_idx: np.ndarray, test_idx: np.ndarray, size: int,
                     weights: str | None, seed: int) -> float:
    data = tk.from_files(files.subset(train_idx), validation_files=files.subset(test_idx), image_size=size, seed=seed)
    tuner = tk.FineTuner("mobilenet", weights=weights, seed=seed)
    tuner.fit(data, verbose=0)
    return tuner.evaluate(data.validation).accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["stamps5", "fashion"], choices=["stamps5", "fashion"])
    parser.add_argument("--recipes", nargs="+", default=["seed", "transferkit", "random"],
                        choices=["seed", "transferkit", "random"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shared_missing():
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            if dataset == "stamps5":
                root, size = SHARED / "data" / "stamps5", 224
            else:
                root, size = write_fashion_subset(Path(tmp) / "fashion", per_class=200), 96
            files = tk.scan_folder(root)
            folds = stratified_folds(files.labels, args.folds, seed=0)
            for recipe in args.recipes:
                accuracies, start = [], time.perf_counter()
                for k, test_idx in enumerate(folds):
                    train_idx = np.setdiff1d(np.arange(len(files)), test_idx)
                    keras.utils.set_random_seed(k)
                    if recipe == "seed":
                        accuracy = seed_recipe(files, train_idx, test_idx, size)
                    else:
                        weights = str(MOBILENET_NOTOP) if recipe == "transferkit" else None
                        accuracy = finetuner_recipe(files, train_idx, test_idx, size, weights, seed=k)
                    accuracies.append(accuracy)
                    keras.backend.clear_session()
                    print(f"{dataset} {recipe} fold {k + 1}: {accuracy:.4f}", flush=True)
                wall = time.perf_counter() - start
                rows.append({"dataset": f"{dataset} ({len(files)} images, {size} px)", "recipe": recipe,
                             "accuracy": f"{np.mean(accuracies):.3f} ± {np.std(accuracies):.3f}",
                             "wall time": f"{wall:.0f} s", "folds": [round(a, 4) for a in accuracies]})
    print_report(rows, ["dataset", "recipe", "accuracy", "wall time"], args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
