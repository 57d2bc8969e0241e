"""Throughput of two backbones side by side on a CPU: MobileNet v1 against EfficientNet-Lite0, in process.

    .venv/bin/python benchmarks/backbone_speed.py [--backbones mobilenet lite0] [--per-class 64]
                                                  [--batch-size 32] [--blocks 2] [--json FILE]

Writes ``--per-class`` generated 224 px images for each of 4 classes (benchmarks/accelerators.py's noisy
colour fields: the speed does not depend on what the pictures show), then, for each backbone, in a
fresh process of its own, one after the other:

  extraction        images/s of transferkit's feature extractor (preprocessing + frozen backbone, what
                    the feature cache runs once) on random pixels already in memory, batch
                    ``--batch-size``, after 3 warm-up calls (accelerators.py's measure)
  fine-tune         images/s of a one-epoch ``FineTuner.fine_tune`` call with the top ``--blocks`` blocks
                    unfrozen, as transferkit runs it by default (activations cached at the freeze
                    boundary): the second of two calls, the first paying for extraction and tracing,
                    timed as a whole call (speed.py's measure), and its epoch alone (a Keras callback)
  fine-tune, uncached  the same with ``cache=False``: every image through the whole network each step,
                    as with augmented data; the last of two epochs, the epoch alone

MobileNet v1 gets the ImageNet weights from ../shared, Lite0 the timm-format folder's own
(``--backbone ../shared/weights/efficientnet_lite0_timm``, converted by KerasHub on load).
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
from accelerators import CLASSES, SIZE, EpochTimes, write_images
from common import BACKBONES, LITE0, print_report, run_timed, shared_missing
from speed import throughput

import transferkit as tk
from transferkit._model import model_parts, with_preprocessing

RESULT = "RESULT "


def measure(args: argparse.Namespace) -> dict[str, float]:
    """The in-process figures of one backbone (run in a child process of its own)."""
    name, weights = BACKBONES[args.child]
    weights = weights or "imagenet"
    files = tk.scan_folder(args.data)

    tuner = tk.FineTuner(name, weights=weights, image_size=SIZE, seed=0)
    parts = model_parts(tuner.build(len(CLASSES)))
    extractor = with_preprocessing(parts.backbone, parts.preprocessor.mode, name="extractor")  # as the cache's
    pixels = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (args.batch_size, SIZE, SIZE, 3)).astype("float32"))
    for _ in range(3):  # tracing
        keras.ops.convert_to_numpy(extractor.predict_on_batch(pixels))
    batches = max(5, len(files) // args.batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        out = extractor.predict_on_batch(pixels)
    keras.ops.convert_to_numpy(out)
    extraction = batches * args.batch_size / (time.perf_counter() - start)
    params = parts.backbone.count_params()
    keras.backend.clear_session()

    phase = tk.Phase(epochs=1, learning_rate=1e-5, policy=tk.UnfreezeTop(args.blocks))
    tuner = tk.FineTuner(name, weights=weights, image_size=SIZE, head=tk.Head(hidden_units=(128,), dropout=0.0),
                         fine_tune_phase=phase, seed=0)
    train_only = tk.from_files(files, validation_split=0.0, image_size=SIZE, batch_size=args.batch_size,
                               resize="stretch", seed=0)
    timer = EpochTimes()
    cached = throughput(lambda: tuner.fine_tune(train_only, callbacks=[timer], verbose=0), len(files))
    cached_epoch = len(files) / timer.seconds[-1]
    model = tuner.model
    trainable = sum(int(np.prod(w.shape)) for w in model_parts(model).backbone.trainable_weights)
    keras.backend.clear_session()

    tuner = tk.FineTuner(name, weights=weights, image_size=SIZE, seed=0, cache=False, refit=False,
                         temperature_scaling=False)
    timer = EpochTimes()
    data = tk.from_files(files, validation_split=0.1, image_size=SIZE, batch_size=args.batch_size, seed=0)
    tuner.fine_tune(data, phase=dataclasses.replace(phase, epochs=2), callbacks=[timer], verbose=0)
    uncached = data.num_train / timer.seconds[-1]
    return {"extraction": extraction, "fine_tune": cached, "fine_tune_epoch": cached_epoch,
            "fine_tune_uncached": uncached,
            "backbone_params": params, "unfrozen_params": trainable}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--per-class", type=int, default=64, help="generated images per class (4 classes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2, help="top blocks unfrozen for fine-tuning")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=list(BACKBONES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(measure(args)), flush=True)
        return 0
    if shared_missing(LITE0):
        return 2
    print(f"TensorFlow {__import__('tensorflow').__version__}, Keras {keras.__version__}; {SIZE} px, "
          f"batch {args.batch_size}, {4 * args.per_class} images, top {args.blocks} blocks unfrozen", flush=True)
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "data", args.per_class)
        script = [sys.executable, str(Path(__file__).resolve())]
        for backbone in args.backbones:
            seconds, _, out = run_timed([*script, "--child", backbone, "--data", str(data), "--per-class",
                                         str(args.per_class), "--batch-size", str(args.batch_size),
                                         "--blocks", str(args.blocks)])
            figures = json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT):])
            results[backbone] = figures
            print(f"{backbone}: extraction {figures['extraction']:.1f} img/s, fine-tune {figures['fine_tune']:.1f} "
                  f"img/s (epoch alone {figures['fine_tune_epoch']:.1f}), uncached "
                  f"{figures['fine_tune_uncached']:.1f} img/s ({seconds:.0f} s)", flush=True)
    first = results[args.backbones[0]]
    for backbone, figures in results.items():
        rows.append({
            "backbone": backbone,
            "backbone params": f"{figures['backbone_params'] / 1e6:.2f} M",
            f"unfrozen by top {args.blocks} blocks": f"{figures['unfrozen_params'] / 1e6:.2f} M",
            "extraction": f"{figures['extraction']:.1f} img/s ({figures['extraction'] / first['extraction']:.2f}×)",
            "fine-tune call (1 epoch)": f"{figures['fine_tune']:.1f} img/s "
                                        f"({figures['fine_tune'] / first['fine_tune']:.2f}×)",
            "its epoch alone": f"{figures['fine_tune_epoch']:.1f} img/s "
                               f"({figures['fine_tune_epoch'] / first['fine_tune_epoch']:.2f}×)",
            "fine-tune epoch, uncached": f"{figures['fine_tune_uncached']:.1f} img/s "
                                         f"({figures['fine_tune_uncached'] / first['fine_tune_uncached']:.2f}×)",
        })
    print_report(rows, list(rows[0]), args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
