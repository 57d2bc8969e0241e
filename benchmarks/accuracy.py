"""Accuracy suite: transferkit's defaults against the usual recipes, on held-out test images.

    .venv/bin/python benchmarks/accuracy.py [--datasets fashion50 fashion200 stamps5 faces]
                                            [--recipes seed guide probe transferkit scratch
                                                       probe-lite0 transferkit-lite0] [--json F]

Every recipe uses MobileNet v1 with the real ImageNet weights from ../shared (scratch: random
weights; the -lite0 recipes: EfficientNet-Lite0, below) and is scored on test images it never saw,
mean ± std over seeds or folds:

  seed         frozen backbone, images by keras.utils.load_img rescaled by 1/255, GlobalAveragePooling
               + Dense(128, relu) + softmax, Adam 1e-3, 10 epochs on all training images (trained on
               the backbone's features computed once, which is the same computation: the backbone
               is frozen with BatchNorm in inference mode)
  guide        the keras.io transfer-learning guide: RandomFlip + RandomRotation(0.1), scaling to
               [-1, 1], backbone(training=False), Dropout(0.2) + Dense, Adam 1e-3 for 20 epochs,
               then the whole backbone at Adam 1e-5 for 10 epochs
  probe        logistic regression (scikit-learn, C=1) on standardised pooled features
  transferkit  `transferkit train DIR --backbone mobilenet --weights FILE --image-size N` and
               `transferkit evaluate RUN TEST --json`: the defaults, as whole commands
  scratch      random weights, every layer and BatchNorm training, 20 epochs (in process)

  probe-lite0, transferkit-lite0   (not in the default run) the probe and the commands with
               EfficientNet-Lite0 (../shared/weights/efficientnet_lite0_timm, a timm-format folder
               KerasHub converts on load, its own ImageNet weights: `--backbone FOLDER`, no --weights)

Datasets (images written to a temporary folder as PNG):

  fashion50    50 Fashion-MNIST images per class from images 50,000–59,999 of ../shared's
               training file, 100 others per class to test on; seeds 1, 2, 3; 96 px
  fashion200   the same with 200 images per class; seeds 1, 2; 96 px
  stamps5      ../shared/data/stamps5 (167 photos, 5 classes), stratified 5-fold; 224 px
  digits       scikit-learn's bundled `load_digits()`: 1,797 handwritten digits (UCI optdigits,
               CC BY 4.0), 8×8 grayscale; 30 per class to train on, the other ~1,500 to test on;
               seeds 1, 2, 3; 96 px
  faces        (not in the default run: every recipe scores 0.98–1.00) scikit-image's
               `data.lfw_subset()`: 100 faces and 100 non-face crops from Labeled Faces in the
               Wild, 25 px grayscale; stratified 5-fold; 96 px
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from common import (
    BACKBONES,
    LITE0,
    MOBILENET_NOTOP,
    SHARED,
    backbone_args,
    markdown_table,
    shared_missing,
    stratified_folds,
)
from PIL import Image
from selection import write_task

import transferkit as tk

Task = tuple[Path, Path, int]  # train folder, test folder, image size


def link_split(files: tk.ImageFiles, train_idx: np.ndarray, test_idx: np.ndarray, root: Path) -> tuple[Path, Path]:
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            target = root / split / files.class_names[files.labels[i]] / Path(files.paths[i]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(files.paths[i]).resolve())
    return root / "train", root / "test"


def write_digits(root: Path, *, seed: int, per_class: int = 30) -> tuple[Path, Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        for split, chosen in (("train", members[:per_class]), ("test", members[per_class:])):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels, "L").save(root / split / str(c) / f"{i}.png")
    return root / "train", root / "test"


def tasks(dataset: str, tmp: Path) -> list[Task]:
    if dataset.startswith("fashion"):
        per_class, seeds = (50, (1, 2, 3)) if dataset == "fashion50" else (200, (1, 2))
        return [(*write_task(tmp / f"{dataset}_{s}", seed=s, per_class=per_class), 96) for s in seeds]
    if dataset == "digits":
        return [(*write_digits(tmp / f"digits_{s}", seed=s), 96) for s in (1, 2, 3)]
    if dataset == "stamps5":
        files, size = tk.scan_folder(SHARED / "data" / "stamps5"), 224
    else:
        from skimage.data import lfw_subset

        faces = lfw_subset()
        for i, image in enumerate(faces):
            name = "face" if i < 100 else "background"
            (tmp / "faces_all" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(image * 255).astype(np.uint8), "L").save(tmp / "faces_all" / name / f"{i}.png")
        files, size = tk.scan_folder(tmp / "faces_all"), 96
    everything = np.arange(len(files))
    return [(*link_split(files, np.setdiff1d(everything, test), test, tmp / f"{dataset}_fold{k}"), size)
            for k, test in enumerate(stratified_folds(files.labels, 5, seed=0))]


def backbone(size: int) -> keras.Model:
    net = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3))
    net.load_weights(str(MOBILENET_NOTOP))
    net.trainable = False
    return net


def load_img_arrays(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    files = tk.scan_folder(folder)
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size))) for p in files.paths])
    return x.astype("float32"), files.labels


def seed_recipe(train: Path, test: Path, size: int, seed: int) -> float:
    (x_train, y_train), (x_test, y_test) = load_img_arrays(train, size), load_img_arrays(test, size)
    pool = keras.Sequential([keras.Input((size, size, 3)), backbone(size), keras.layers.GlobalAveragePooling2D()])
    f_train, f_test = (pool.predict(x / 255.0, batch_size=32, verbose=0) for x in (x_train, x_test))
    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input(f_train.shape[1:]), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(int(y_train.max()) + 1, activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    head.fit(f_train, y_train, epochs=10, batch_size=32, verbose=0)
    return float(head.evaluate(f_test, y_test, verbose=0)[1])


def guide_recipe(train: Path, test: Path, size: int, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    common = dict(image_size=(size, size), batch_size=32, label_mode="int", seed=seed, verbose=False)
    train_ds = keras.utils.image_dataset_from_directory(str(train), shuffle=True, **common).cache().prefetch(10)
    test_ds = keras.utils.image_dataset_from_directory(str(test), shuffle=False, **common).cache().prefetch(10)
    classes = len(tk.scan_folder(train).class_names)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    net = backbone(size)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(augment(inputs))
    x = keras.layers.GlobalAveragePooling2D()(net(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Dropout(0.2)(x)))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss, metrics=["accuracy"])
    model.fit(train_ds, epochs=20, verbose=0)
    net.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=["accuracy"])
    model.fit(train_ds, epochs=10, verbose=0)
    return float(model.evaluate(test_ds, verbose=0)[1])


def probe_recipe(train: Path, test: Path, size: int, seed: int, backbone: str = "mobilenet") -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    name, weights = BACKBONES[backbone]
    tuner = tk.FineTuner(name, weights=weights or "imagenet", image_size=size,
                         class_names=tk.scan_folder(train).class_names)
    model = tuner.build()
    pooled = keras.Sequential([keras.Input((size, size, 3)), model.get_layer("preprocess"), model.get_layer("backbone"),
                               keras.layers.GlobalAveragePooling2D()])

    def features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        data = tk.load_folder(folder, image_size=size, validation_split=0.0, seed=seed)
        x = pooled.predict(data.train_ordered, verbose=0)
        return x, np.concatenate([y for _, y in data.train_ordered.as_numpy_iterator()])

    (f_train, y_train), (f_test, y_test) = features(train), features(test)
    scaler = StandardScaler().fit(f_train)
    fitted = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(f_train), y_train)
    return float(np.mean(fitted.predict(scaler.transform(f_test)) == y_test))


def command(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "transferkit.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


TRAIN_ARGS: list[str] = []  # --train-args: more options for `transferkit train`


def transferkit_recipe(train: Path, test: Path, size: int, seed: int, backbone: str = "mobilenet") -> float:
    run = train.parent / f"run_{backbone}_{seed}"
    command("train", str(train), *backbone_args(backbone), "--image-size", str(size), "--seed", str(seed),
            "--out", str(run), *TRAIN_ARGS)
    return float(json.loads(command("evaluate", str(run), str(test), "--json"))["accuracy"])


def scratch_recipe(train: Path, test: Path, size: int, seed: int) -> float:
    from transferkit._demo import train_from_scratch

    data = tk.load_folder(train, image_size=size, seed=seed)
    tuner = train_from_scratch("mobilenet", data, epochs=20, seed=seed)
    return tuner.evaluate(test).accuracy


RECIPES: dict[str, Callable[[Path, Path, int, int], float]] = {
    "seed": seed_recipe, "guide": guide_recipe, "probe": probe_recipe, "transferkit": transferkit_recipe,
    "scratch": scratch_recipe,
    "probe-lite0": partial(probe_recipe, backbone="lite0"),
    "transferkit-lite0": partial(transferkit_recipe, backbone="lite0"),
}
DEFAULT_RECIPES = ("seed", "guide", "probe", "transferkit", "scratch")
DATASETS = ("fashion50", "digits", "stamps5", "fashion200", "faces")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS[:4]), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--train-args", default="", help='more options for `transferkit train`, as one string '
                                                          '(e.g. --train-args="--train-head")')
    args = parser.parse_args()
    TRAIN_ARGS[:] = shlex.split(args.train_args)
    if shared_missing(*([LITE0] if any(r.endswith("-lite0") for r in args.recipes) else [])):
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            chosen = tasks(dataset, Path(tmp))
            for recipe in args.recipes:
                accuracies, start = [], time.perf_counter()
                for k, (train, test, size) in enumerate(chosen, start=1):
                    accuracies.append(RECIPES[recipe](train, test, size, k))
                    keras.backend.clear_session()
                    print(f"{dataset} {recipe} {k}: {accuracies[-1]:.4f}", flush=True)
                rows.append({"dataset": dataset, "recipe": recipe,
                             "accuracy": f"{np.mean(accuracies):.3f} ± {np.std(accuracies):.3f}",
                             "runs": ", ".join(f"{a:.3f}" for a in accuracies),
                             "wall time": f"{time.perf_counter() - start:.0f} s"})
                print(f"{dataset} {recipe}: {rows[-1]['accuracy']}", flush=True)
    print()
    print(markdown_table(rows, ["dataset", "recipe", "accuracy", "runs", "wall time"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
