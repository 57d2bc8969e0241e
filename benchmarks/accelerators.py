"""Mixed precision and XLA on a GPU: `transferkit train` plain, --mixed-precision, --xla and both.

    .venv/bin/python benchmarks/accelerators.py [--backbone mobilenet] [--per-class 256] [--batch-size 64]
                                                [--blocks 2] [--epochs 3] [--json FILE]

Needs a GPU (it exits with status 2 and a message when TensorFlow sees none). Writes ``--per-class``
generated 224 px images for each of 4 classes (noisy colour fields: the speed does not depend on what
the pictures show), then, for each setting, in a fresh process:

  extraction   in process: images/s of transferkit's feature extractor (preprocessing + frozen
               backbone, what the cache runs once) on random pixels already in memory
  fine-tune    in process: images/s of ``FineTuner.fine_tune`` with the top ``--blocks`` blocks
               unfrozen and ``cache=False`` (every image through the whole network each step, as
               with augmented data), the last of two epochs (the first pays for tracing)
  train        the whole command, from process start to files written: ``transferkit train DATA
               --image-size 224 --epochs E --fine-tune-epochs E --refit never`` plus the setting's flags

and prints a Markdown table with the device name. MobileNet v1 (``mobilenet``) gets the ImageNet
weights from ../shared when they are there; any other backbone, or no ../shared, runs with random
weights (the speed is the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from common import MOBILENET_NOTOP, print_report, run_timed
from PIL import Image

import transferkit as tk
from transferkit._model import model_parts, with_preprocessing

SETTINGS = {"plain": [], "mixed precision": ["--mixed-precision"], "XLA": ["--xla"],
            "both": ["--mixed-precision", "--xla"]}
SIZE = 224
CLASSES = ("red", "green", "blue", "grey")
RESULT = "RESULT "


def write_images(out: Path, per_class: int) -> Path:
    """``per_class`` noisy 224 px colour fields per class, as JPEG files under out/<class>/."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (40, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}
    for name in CLASSES:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colours[name])[None, None, :] + rng.normal(0, 40, (SIZE, SIZE, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"{i}.jpg", quality=90)
    return out


def weights_for(backbone: str) -> str | None:
    return str(MOBILENET_NOTOP) if backbone == "mobilenet" and MOBILENET_NOTOP.is_file() else None


def gpu_name() -> str | None:
    """The first GPU's name, or None when TensorFlow sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    name = str(tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name))
    return name if len(gpus) == 1 else f"{name} (the first of {len(gpus)})"


class EpochTimes(keras.callbacks.Callback):
    """Wall seconds of each epoch of a fit."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def measure(args: argparse.Namespace, flags: list[str]) -> dict[str, float]:
    """The in-process figures of one setting (run in a child process of its own)."""
    mixed, jit = "--mixed-precision" in flags, "--xla" in flags
    weights = weights_for(args.backbone)
    data = tk.load_folder(args.data, image_size=SIZE, batch_size=args.batch_size, validation_split=0.1, seed=0)

    tuner = tk.FineTuner(args.backbone, weights=weights, image_size=SIZE, seed=0, mixed_precision=mixed,
                         jit_compile=jit)
    parts = model_parts(tuner.build(len(CLASSES)))
    extractor = with_preprocessing(parts.backbone, parts.preprocessor.mode, name="extractor")  # as the cache's
    extractor.jit_compile = jit
    pixels = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (args.batch_size, SIZE, SIZE, 3)).astype("float32"))
    for _ in range(3):  # tracing (and XLA compilation)
        keras.ops.convert_to_numpy(extractor.predict_on_batch(pixels))
    batches = max(10, 2048 // args.batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        out = extractor.predict_on_batch(pixels)
    keras.ops.convert_to_numpy(out)
    extraction = batches * args.batch_size / (time.perf_counter() - start)

    tuner = tk.FineTuner(args.backbone, weights=weights, image_size=SIZE, seed=0, cache=False, refit=False,
                         temperature_scaling=False, mixed_precision=mixed, jit_compile=jit)
    timer = EpochTimes()
    phase = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=2, policy=tk.UnfreezeTop(args.blocks))
    tuner.fine_tune(data, phase=phase, callbacks=[timer], verbose=0)
    return {"extraction": extraction, "fine_tune": data.num_train / timer.seconds[-1]}


def child(args: argparse.Namespace) -> int:
    print(RESULT + json.dumps(measure(args, SETTINGS[args.child])), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet", help="mobilenet (v1, weights from ../shared) or "
                                                                 "mobilenet_v2 (random weights)")
    parser.add_argument("--per-class", type=int, default=256, help="generated images per class (4 classes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2, help="top blocks unfrozen for fine-tuning")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each phase of the timed train command")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    device = gpu_name()
    if device is None:
        print("error: TensorFlow sees no GPU here. This benchmark measures mixed precision and XLA on a GPU; "
              "on a CPU both run slower (docs/benchmarks.md). Run it on a machine with a CUDA GPU.",
              file=sys.stderr)
        return 2
    weights = weights_for(args.backbone)
    print(f"Device: {device}; TensorFlow {tf.__version__}, Keras {keras.__version__}; {args.backbone} at {SIZE} px, "
          f"{'ImageNet' if weights else 'random'} weights, batch {args.batch_size}", flush=True)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "data", args.per_class)
        script = [sys.executable, str(Path(__file__).resolve())]
        common = ["--backbone", args.backbone, "--batch-size", str(args.batch_size), "--blocks", str(args.blocks)]
        for name, flags in SETTINGS.items():
            _, _, out = run_timed([*script, *common, "--child", name, "--data", str(data)])
            figures = json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT):])
            train = [sys.executable, "-m", "transferkit.cli", "train", str(data), "--backbone", args.backbone,
                     "--weights", weights or "none", "--image-size", str(SIZE), "--batch-size", str(args.batch_size),
                     "--epochs", str(args.epochs), "--fine-tune-epochs", str(args.epochs), "--unfreeze-blocks",
                     str(args.blocks), "--refit", "never", "--out", str(Path(tmp) / name.replace(" ", "_")), *flags]
            figures["train_seconds"], figures["train_peak_mb"], _ = run_timed(train)
            results[name] = figures
            print(f"{name}: extraction {figures['extraction']:.0f} img/s, fine-tune {figures['fine_tune']:.0f} img/s, "
                  f"train command {figures['train_seconds']:.1f} s", flush=True)
    plain = results["plain"]
    for name, figures in results.items():
        rows.append({
            "setting": name, "flags": " ".join(SETTINGS[name]) or "—",
            "extraction (in process)": f"{figures['extraction']:.0f} img/s "
                                       f"({figures['extraction'] / plain['extraction']:.2f}×)",
            "fine-tune (in process)": f"{figures['fine_tune']:.0f} img/s "
                                      f"({figures['fine_tune'] / plain['fine_tune']:.2f}×)",
            "`transferkit train` (whole command)": f"{figures['train_seconds']:.1f} s "
                                                   f"({plain['train_seconds'] / figures['train_seconds']:.2f}×)",
        })
    print(f"\nDevice: {device}")
    print_report(rows, ["setting", "flags", "extraction (in process)", "fine-tune (in process)",
                        "`transferkit train` (whole command)"], args.json, {"device": device, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
