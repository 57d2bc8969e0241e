"""The keras.io transfer-learning guide's frozen phase as a user would script it, for timing whole commands.

    python benchmarks/guide_recipe.py DATA_DIR [--image-size 96] [--epochs 10] [--out DIR]

image_dataset_from_directory (80/20 split) with cache and prefetch, RandomFlip + RandomRotation(0.1)
inside the model, scaling to [-1, 1], MobileNet v1 with the ImageNet weights from ../shared called
with training=False, GlobalAveragePooling + Dropout(0.2) + Dense, Adam 1e-3; then the model is
saved and the validation accuracy printed. The guide's fine-tuning round is left out: this is the
"frozen epochs" half that `transferkit train --fine-tune-epochs 0` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
from common import MOBILENET_NOTOP


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="guide_run")
    args = parser.parse_args()
    size = args.image_size
    common = dict(image_size=(size, size), batch_size=32, validation_split=0.2, seed=0, label_mode="int")
    train = keras.utils.image_dataset_from_directory(args.data_dir, subset="training", **common)
    val = keras.utils.image_dataset_from_directory(args.data_dir, subset="validation", **common)
    classes = len(train.class_names)
    train, val = train.cache().prefetch(tf.data.AUTOTUNE), val.cache().prefetch(tf.data.AUTOTUNE)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(size, size, 3))
    base.load_weights(str(MOBILENET_NOTOP))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(augment(inputs))
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Dropout(0.2)(x)))
    model.compile(optimizer=keras.optimizers.Adam(), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(train, epochs=args.epochs, validation_data=val, verbose=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    print(f"Validation accuracy: {history.history['val_accuracy'][-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
