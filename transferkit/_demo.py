"""``transferkit demo``: the whole job, offline, in about two minutes on two CPU cores.

1. Writes a small labelled image folder from Fashion-MNIST photos shipped in the package.
2. Fine-tunes MobileNet v1 with ImageNet weights (the copy shipped in the package when Keras
   cannot download its own) with the default recipe.
3. Trains the same network from scratch as a baseline: random weights, every layer and
   BatchNorm training, for as many epochs as the fine-tune phase.
4. Writes the run (model, metrics, plots) and prints both accuracies and the report's path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from transferkit._errors import ConfigError
from transferkit._finetuner import FineTuner
from transferkit._freezing import UnfreezeAll
from transferkit._phases import FINE_TUNE_PHASE, Phase
from transferkit._types import Verbose
from transferkit.backbones._weights import shipped_file
from transferkit.data._loaders import ImageData, load_folder

DEMO_DATA = "fashion_mnist_500.npz"
PER_CLASS = 50
IMAGE_SIZE = 96
SEED = 0


def write_demo_images(folder: Path, *, per_class: int = PER_CLASS) -> Path:
    """Write the shipped Fashion-MNIST photos as ``folder/<class>/<n>.png``; returns ``folder``."""
    with np.load(shipped_file(DEMO_DATA)) as shipped:
        images, labels, names = shipped["images"], shipped["labels"], [str(n) for n in shipped["class_names"]]
    available = int(np.bincount(labels).min())
    if not 2 <= per_class <= available:
        raise ConfigError(f"Expected --per-class between 2 and {available}. Received: {per_class}.")
    for c, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[i], "L").save(folder / name / f"{n:03d}.png")
    return folder


def scratch_phase(epochs: int) -> Phase:
    """Training a network from random weights: every layer and BatchNorm train, Adam 1e-3, cosine."""
    return Phase(epochs=epochs, learning_rate=1e-3, policy=UnfreezeAll(train_batchnorm=True), schedule="cosine",
                 warmup_epochs=1)


def train_from_scratch(backbone: str, data: ImageData, *, epochs: int, seed: int | None, verbose: Verbose = 0
                       ) -> FineTuner:
    """The from-scratch baseline: ``backbone`` with random weights trained end to end on ``data``.

    BatchNorm's moving statistics follow the batches with momentum 0.9 instead of Keras' 0.99: a
    few hundred steps are too few for 0.99 to catch up with weights that change this fast, and a
    network evaluated on stale statistics predicts one class.
    """
    tuner = FineTuner(backbone, weights=None, head_phase=scratch_phase(epochs), fine_tune_phase=None, seed=seed,
                      refit=False, cache=False, image_size=data.settings.image_size,
                      class_names=data.class_names)
    for layer in _nested_layers(tuner.build()):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    tuner.fit(data, verbose=verbose)
    return tuner


def _nested_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _nested_layers(layer)


def run_demo(out: Path, *, per_class: int = PER_CLASS, image_size: int = IMAGE_SIZE, seed: int = SEED
             ) -> dict[str, float]:
    """Run the demo into ``out`` and return both accuracies."""
    start = time.perf_counter()
    data_dir = write_demo_images(out / "data", per_class=per_class)
    data = load_folder(data_dir, image_size=image_size, validation_split=0.2, seed=seed)
    print(f"Wrote {data.num_train + data.num_validation} Fashion-MNIST photos to {data_dir} "
          f"({len(data.class_names)} classes; {data.num_train} to train on, {data.num_validation} to validate).")
    print("\n== MobileNet v1 from ImageNet weights, transferkit's default recipe ==")
    tuner = FineTuner("mobilenet", weights="imagenet", seed=seed, refit=False)
    tuner.fit(data, verbose=2)
    run = out / "run"
    tuner.save(run)
    accuracies = {"imagenet": tuner.write_report(data, run)["validation"]["accuracy"]}
    epochs = FINE_TUNE_PHASE.epochs
    print(f"\n== MobileNet v1 from scratch: random weights, every layer trains, {epochs} epochs ==")
    scratch = train_from_scratch("mobilenet", data, epochs=epochs, seed=seed, verbose=2)
    accuracies["scratch"] = scratch.evaluate(data.validation).accuracy
    if tuner.best_epoch is not None:
        print(f"\nKept the weights of {tuner.best_epoch.describe()}.")
    print(f"Validation accuracy after fine-tuning ImageNet weights: {accuracies['imagenet']:.3f}")
    print(f"Validation accuracy of the same network trained from scratch: {accuracies['scratch']:.3f}")
    print(f"Report (model, report.html to open in a browser, metrics.json and the PNG plots): {out / 'run'}")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    return accuracies
