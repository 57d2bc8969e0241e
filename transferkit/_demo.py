"""``transferkit demo``: the whole job, offline, in about two minutes on two CPU cores.

1. Writes a small labelled image folder from Fashion-MNIST photos shipped in the package.
2. Fine-tunes MobileNet v1 with ImageNet weights (the copy shipped in the package when Keras
   cannot download its own) with the two-phase recipe.
3. Trains the same network the same way from random weights.
4. Writes the run (model, metrics, plots) and prints both accuracies and the report's path.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit._errors import ConfigError
from transferkit._finetuner import FineTuner
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE
from transferkit.backbones._weights import shipped_file
from transferkit.data._loaders import load_folder

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


def run_demo(out: Path, *, per_class: int = PER_CLASS, image_size: int = IMAGE_SIZE, seed: int = SEED
             ) -> dict[str, float]:
    """Run the demo into ``out`` and return both accuracies."""
    start = time.perf_counter()
    data_dir = write_demo_images(out / "data", per_class=per_class)
    data = load_folder(data_dir, image_size=image_size, validation_split=0.2, seed=seed)
    print(f"Wrote {data.num_train + data.num_validation} Fashion-MNIST photos to {data_dir} "
          f"({len(data.class_names)} classes; {data.num_train} to train on, {data.num_validation} to validate).")
    head = dataclasses.replace(HEAD_PHASE, epochs=6)
    fine = dataclasses.replace(FINE_TUNE_PHASE, epochs=4)
    accuracies = {}
    for label, weights in (("imagenet", "imagenet"), ("random", None)):
        print(f"\n== MobileNet v1 from {'ImageNet' if weights else 'random'} weights ==")
        tuner = FineTuner("mobilenet", weights=weights, head_phase=head, fine_tune_phase=fine, seed=seed)
        tuner.fit(data, verbose=2)
        accuracies[label] = tuner.evaluate(data.validation).accuracy
        if weights:
            run = out / "run"
            tuner.save(run)
            tuner.write_report(data, run)
    print(f"\nValidation accuracy after fine-tuning ImageNet weights: {accuracies['imagenet']:.3f}")
    print(f"Validation accuracy of the same network from random weights: {accuracies['random']:.3f}")
    print(f"Report (model, metrics.json, training_curves.png, confusion_matrix.png, predictions.png): {out / 'run'}")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    return accuracies
