"""Speed of transferkit against the seed recipe and the keras.io transfer-learning guide.

Same data, same backbone (MobileNet v1 with the real ImageNet weights from ../shared), same head
(GlobalAveragePooling + Dense(128, relu) + softmax), same epochs, measured one after the other in
one process:

  (1) seed   ImageDataGenerator(rescale=1/255).flow_from_directory + frozen backbone + fit
  (2) guide  image_dataset_from_directory + prefetch, backbone called with training=False
  (3) tk     FineTuner's head phase (features cached once, head trained on them)

Then: a 20-trial head search with (3) against one training run of (2); fine-tuning throughput of
(3) against (2) with the same unfrozen blocks; XLA and mixed precision on and off for (2).

    python benchmarks/speed.py [--dataset fashion|stamps5] [--epochs 10] [--trials 20]
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
import tensorflow as tf
from common import MOBILENET_NOTOP, SHARED, print_report, shared_missing, write_fashion_subset

import transferkit as tk


def split_folder(files: tk.ImageFiles, root: Path) -> tuple[Path, Path, tk.ImageFiles, tk.ImageFiles]:
    """Stratified 80/20 split copied into root/train and root/val (what directory loaders need)."""
    train_idx, val_idx = tk.stratified_split(files.labels, validation_fraction=0.2, seed=0)
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            target = root / split / files.class_names[files.labels[i]] / Path(files.paths[i]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(files.paths[i]).read_bytes())
    return root / "train", root / "val", files.subset(train_idx), files.subset(val_idx)


def backbone(size: int) -> keras.Model:
    net = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3))
    net.load_weights(str(MOBILENET_NOTOP))
    return net


def head(x: keras.KerasTensor, classes: int) -> keras.KerasTensor:
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.layers.Dense(classes, activation="softmax")(x)


class _Batches(keras.utils.PyDataset):
    """Lets Keras 3 fit on a tf-keras DirectoryIterator, batch by batch as the seed's Keras 2 did."""

    def __init__(self, iterator: object) -> None:
        super().__init__()
        self.iterator = iterator

    def __len__(self) -> int:
        return len(self.iterator)

    def __getitem__(self, index: int) -> object:
        return self.iterator[index]

    def on_epoch_end(self) -> None:
        self.iterator.on_epoch_end()


def seed_recipe(train_dir: Path, val_dir: Path, size: int, classes: int, epochs: int) -> tuple[float, float]:
    from tf_keras.preprocessing.image import ImageDataGenerator  # gone from Keras 3; the seed used it

    gen = ImageDataGenerator(rescale=1 / 255)
    train = _Batches(gen.flow_from_directory(str(train_dir), target_size=(size, size), batch_size=32,
                                             class_mode="sparse"))
    val = _Batches(gen.flow_from_directory(str(val_dir), target_size=(size, size), batch_size=32,
                                           class_mode="sparse", shuffle=False))
    net = backbone(size)
    net.trainable = False
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, head(net(inputs), classes))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, float(model.evaluate(val, verbose=0)[1])


def guide_model(size: int, classes: int) -> tuple[keras.Model, keras.Model]:
    net = backbone(size)
    net.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # mobilenet.preprocess_input
    return keras.Model(inputs, head(net(x, training=False), classes)), net


def guide_data(train_dir: Path, val_dir: Path, size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    common = dict(image_size=(size, size), batch_size=32, label_mode="int", seed=0, verbose=False)
    train = keras.utils.image_dataset_from_directory(str(train_dir), shuffle=True, **common)
    val = keras.utils.image_dataset_from_directory(str(val_dir), shuffle=False, **common)
    return train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)


def guide_recipe(train_dir: Path, val_dir: Path, size: int, classes: int, epochs: int) -> tuple[float, float]:
    train, val = guide_data(train_dir, val_dir, size)
    model, _ = guide_model(size, classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, float(model.evaluate(val, verbose=0)[1])


def tk_data(train_files: tk.ImageFiles, val_files: tk.ImageFiles, size: int) -> tk.ImageData:
    return tk.from_files(train_files, validation_files=val_files, image_size=size, resize="stretch", seed=0)


def tk_head_recipe(data: tk.ImageData, epochs: int) -> tuple[float, float]:
    tuner = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), head=tk.Head(hidden_units=(128,), dropout=0.0),
                         head_phase=tk.Phase(epochs=epochs, learning_rate=1e-3, policy=tk.FreezeAll()),
                         fine_tune_phase=None, seed=0)
    start = time.perf_counter()
    tuner.fit(data, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, tuner.evaluate(data.validation).accuracy


def throughput(fit_one_epoch, images: int, epochs: int = 2) -> float:
    """Images per second of the last of ``epochs`` epochs (the first pays for tracing and caching)."""
    for _ in range(epochs - 1):
        fit_one_epoch()
    start = time.perf_counter()
    fit_one_epoch()
    return images / (time.perf_counter() - start)


def guide_fine_tune_throughput(train_dir: Path, val_dir: Path, size: int, classes: int, blocks: list[str],
                               *, jit: bool = False, mixed: bool = False) -> float:
    if mixed:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        train, _ = guide_data(train_dir, val_dir, size)
        model, net = guide_model(size, classes)
        net.trainable = True
        for layer in net.layers:
            layer.trainable = layer.name in blocks and not isinstance(layer, keras.layers.BatchNormalization)
        model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy", jit_compile=jit)
        count = sum(int(x.shape[0]) for x, _ in train)
        return throughput(lambda: model.fit(train, epochs=1, verbose=0), count)
    finally:
        keras.config.set_dtype_policy("float32")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion", choices=["fashion", "stamps5"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shared_missing():
        return 2
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "fashion":
            source, size = write_fashion_subset(Path(tmp) / "all", per_class=args.per_class), 96
        else:
            source, size = SHARED / "data" / "stamps5", 224
        files = tk.scan_folder(source)
        train_dir, val_dir, train_files, val_files = split_folder(files, Path(tmp) / "split")
        classes = len(files.class_names)
        print(f"{args.dataset}: {len(train_files)} training and {len(val_files)} validation images at {size} px")

        results["seed_s"], results["seed_acc"] = seed_recipe(train_dir, val_dir, size, classes, args.epochs)
        print(f"(1) seed recipe: {results['seed_s']:.1f} s, accuracy {results['seed_acc']:.3f}", flush=True)
        results["guide_s"], results["guide_acc"] = guide_recipe(train_dir, val_dir, size, classes, args.epochs)
        print(f"(2) keras.io guide: {results['guide_s']:.1f} s, accuracy {results['guide_acc']:.3f}", flush=True)
        data = tk_data(train_files, val_files, size)
        results["tk_s"], results["tk_acc"] = tk_head_recipe(data, args.epochs)
        print(f"(3) transferkit: {results['tk_s']:.1f} s, accuracy {results['tk_acc']:.3f}", flush=True)

        start = time.perf_counter()
        found = tk.search(data, "mobilenet", weights=str(MOBILENET_NOTOP), max_trials=args.trials, epochs=args.epochs,
                       directory=Path(tmp) / "search", overwrite=True)
        results["search_s"] = time.perf_counter() - start
        results["search_best"] = found.best_score
        print(f"{args.trials}-trial head search: {results['search_s']:.1f} s, best accuracy {found.best_score:.3f}",
              flush=True)

        blocks = [f"conv_{kind}_{i}{suffix}" for i in (12, 13) for kind in ("dw", "pw")
                  for suffix in ("", "_bn", "_relu")] + ["conv_pad_12"]
        results["guide_ft_ips"] = guide_fine_tune_throughput(train_dir, val_dir, size, classes, blocks)
        tuner = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), head=tk.Head(hidden_units=(128,), dropout=0.0),
                             fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-5, policy=tk.UnfreezeTop(2)), seed=0)
        train_only = tk.from_files(train_files, validation_split=0.0, image_size=size, resize="stretch", seed=0)
        results["tk_ft_ips"] = throughput(lambda: tuner.fine_tune(train_only, verbose=0), len(train_files))
        print(f"fine-tune throughput: guide {results['guide_ft_ips']:.0f} img/s, "
              f"transferkit {results['tk_ft_ips']:.0f} img/s", flush=True)
        results["guide_ft_xla_ips"] = guide_fine_tune_throughput(train_dir, val_dir, size, classes, blocks, jit=True)
        results["guide_ft_bf16_ips"] = guide_fine_tune_throughput(train_dir, val_dir, size, classes, blocks,
                                                                  mixed=True)
        print(f"guide fine-tune with XLA: {results['guide_ft_xla_ips']:.0f} img/s; "
              f"with mixed_bfloat16: {results['guide_ft_bf16_ips']:.0f} img/s", flush=True)

    rows = [
        {"measure": f"frozen phase, {args.epochs} epochs: (1) seed", "value": f"{results['seed_s']:.1f} s",
         "accuracy": f"{results['seed_acc']:.3f}", "ratio": f"(1)/(3) = {results['seed_s'] / results['tk_s']:.1f}×"},
        {"measure": f"frozen phase, {args.epochs} epochs: (2) keras.io guide", "value": f"{results['guide_s']:.1f} s",
         "accuracy": f"{results['guide_acc']:.3f}", "ratio": f"(2)/(3) = {results['guide_s'] / results['tk_s']:.1f}×"},
        {"measure": f"frozen phase, {args.epochs} epochs: (3) transferkit", "value": f"{results['tk_s']:.1f} s",
         "accuracy": f"{results['tk_acc']:.3f}", "ratio": "1"},
        {"measure": f"{args.trials}-trial head search (3) vs one run of (2)", "value": f"{results['search_s']:.1f} s",
         "accuracy": f"best {results['search_best']:.3f}",
         "ratio": f"{results['search_s'] / results['guide_s']:.2f}× one run"},
        {"measure": "fine-tune throughput, top 2 blocks: (2) guide", "value": f"{results['guide_ft_ips']:.0f} img/s",
         "accuracy": "", "ratio": "1"},
        {"measure": "fine-tune throughput, top 2 blocks: (3) transferkit", "value": f"{results['tk_ft_ips']:.0f} img/s",
         "accuracy": "", "ratio": f"{results['tk_ft_ips'] / results['guide_ft_ips']:.2f}× (2)"},
        {"measure": "(2) fine-tune with XLA (jit_compile=True)", "value": f"{results['guide_ft_xla_ips']:.0f} img/s",
         "accuracy": "", "ratio": f"{results['guide_ft_xla_ips'] / results['guide_ft_ips']:.2f}× (2)"},
        {"measure": "(2) fine-tune with mixed_bfloat16", "value": f"{results['guide_ft_bf16_ips']:.0f} img/s",
         "accuracy": "", "ratio": f"{results['guide_ft_bf16_ips'] / results['guide_ft_ips']:.2f}× (2)"},
    ]
    print_report(rows, ["measure", "value", "accuracy", "ratio"], args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
