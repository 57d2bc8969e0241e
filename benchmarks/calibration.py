"""Temperature scaling on held-out test images: expected calibration error before and after.

    .venv/bin/python benchmarks/calibration.py [--seeds 1 2 3]

For each seed, the fashion50 task of benchmarks/selection.py (50 Fashion-MNIST images per class
from images 50,000–59,999 of ../shared's training file, 100 others per class to test on), trained
with FineTuner's defaults (MobileNet v1, real ImageNet weights, 96 px). The temperature is fitted
on the validation split and folded into the model; the uncalibrated test probabilities are
recovered exactly by undoing it (``softmax(log p * T)``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import MOBILENET_NOTOP, markdown_table, shared_missing
from selection import write_task

import transferkit as tk
from transferkit._calibration import reliability, scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    if shared_missing():
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            train, test = write_task(Path(tmp) / f"task{seed}", seed=seed, per_class=50)
            tuner = tk.FineTuner("mobilenet", weights=str(MOBILENET_NOTOP), seed=seed)
            tuner.fit(tk.load_folder(train, image_size=96, seed=seed), verbose=0)
            files = tk.scan_folder(test)
            calibrated = tuner.predict(list(files.paths)).probabilities
            calibration = tuner.calibration
            assert calibration is not None
            plain = scale(calibrated, 1 / calibration.temperature)
            rows.append({"seed": seed, "temperature": f"{calibration.temperature:.3f}",
                         "test ECE before": reliability(plain, files.labels).expected_calibration_error,
                         "test ECE after": reliability(calibrated, files.labels).expected_calibration_error})
            print(rows[-1], flush=True)
    for column in ("test ECE before", "test ECE after"):
        values = [float(r[column]) for r in rows]
        print(f"{column}: mean {np.mean(values):.3f}")
        for r in rows:
            r[column] = f"{float(r[column]):.3f}"
    print(markdown_table(rows, ["seed", "temperature", "test ECE before", "test ECE after"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
