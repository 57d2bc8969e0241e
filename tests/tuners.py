"""Tiny FineTuners and data for the tests of training: fast phases on the tiny test backbone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
from PIL import Image

import transferkit as tk

FAST_HEAD = dataclasses.replace(tk.HEAD_PHASE, epochs=8, learning_rate=1e-2, solve=False)  # trained
FAST_TUNE = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=2, learning_rate=1e-3, policy=tk.UnfreezeTop(1))


def tiny_tuner(**kwargs):
    options = {"weights": "imagenet", "head_phase": FAST_HEAD, "fine_tune_phase": FAST_TUNE, "seed": 0,
               "refit": False}  # refit has tests of its own
    return tk.FineTuner("tiny_cnn", **{**options, **kwargs})


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


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


def multi_label_data(root, csv_path):
    """Two tags per image from the colour folders: warm/cool and bright/dark."""
    rows = ["path,label"] + [f"{p},{'warm' if 'red' in p else 'cool'} {'bright' if 'green' in p else 'dark'}"
                             for p in tk.scan_folder(root).paths]
    csv_path.write_text("\n".join(rows))
    return tk.load_csv(csv_path, multi_label=True, image_size=32, batch_size=8)


def noise_folder(root: Path, per_class: int = 30) -> Path:
    """Three classes of random-noise images: a model trained on them makes mistakes to calibrate on."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{n}.png")
    return root
