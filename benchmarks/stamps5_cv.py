"""Stratified k-fold accuracy of FineTuner on the real-photo dataset ../shared/data/stamps5.

Usage:
    python benchmarks/stamps5_cv.py                      # real ImageNet MobileNet weights
    python benchmarks/stamps5_cv.py --weights none       # same network from random weights

Prints per-fold accuracy, mean ± std and wall time; ``--json FILE`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import SHARED, stratified_folds

import transferkit as tk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "stamps5"))
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"),
                        help="weights file, 'imagenet' or 'none'")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head-epochs", type=int, default=tk.HEAD_PHASE.epochs)
    parser.add_argument("--head-lr", type=float, default=tk.HEAD_PHASE.learning_rate)
    parser.add_argument("--fine-tune-epochs", type=int, default=tk.FINE_TUNE_PHASE.epochs)
    parser.add_argument("--fine-tune-lr", type=float, default=tk.FINE_TUNE_PHASE.learning_rate)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"Data folder {args.data} not found (this benchmark needs ../shared).", file=sys.stderr)
        return 2
    weights = None if args.weights.lower() == "none" else args.weights
    head_phase = tk.Phase(epochs=args.head_epochs, learning_rate=args.head_lr, policy=tk.HEAD_PHASE.policy)
    fine_phase = tk.Phase(**{**{f: getattr(tk.FINE_TUNE_PHASE, f) for f in ("policy", "schedule", "warmup_epochs",
                                                                            "optimizer", "weight_decay")},
                             "epochs": args.fine_tune_epochs, "learning_rate": args.fine_tune_lr})

    files = tk.scan_folder(args.data)
    folds = stratified_folds(files.labels, args.folds, args.seed)
    accuracies = []
    start = time.perf_counter()
    for k, test_idx in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(files)), test_idx)
        data = tk.from_files(files.subset(train_idx), validation_files=files.subset(test_idx),
                             image_size=args.image_size, seed=args.seed)
        tuner = tk.FineTuner(args.backbone, weights=weights, seed=args.seed + k, head_phase=head_phase,
                             fine_tune_phase=fine_phase if args.fine_tune_epochs else None)
        tuner.fit(data, verbose=0)
        accuracy = tuner.evaluate(data.validation).accuracy
        accuracies.append(accuracy)
        print(f"fold {k + 1}/{args.folds}: accuracy {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    result = {
        "backbone": args.backbone,
        "weights": "random" if weights is None else Path(weights).name if weights != "imagenet" else weights,
        "folds": args.folds,
        "accuracies": accuracies,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "wall_s": wall,
        "head_phase": head_phase.to_dict(),
        "fine_tune_phase": fine_phase.to_dict() if args.fine_tune_epochs else None,
    }
    print(f"{args.backbone} ({result['weights']}): {args.folds}-fold accuracy "
          f"{result['mean']:.4f} ± {result['std']:.4f} in {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
