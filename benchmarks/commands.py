"""Whole commands, timed as a user runs them: `transferkit train` against the keras.io guide's recipe.

    .venv/bin/python benchmarks/commands.py [--per-class 500] [--epochs 10] [--repeats 3]

Writes ``--per-class`` Fashion-MNIST images per class (10 classes) from ../shared as PNG files, then
runs, alternating, ``--repeats`` times each, from process start to files written:

  guide        python benchmarks/guide_recipe.py DATA --image-size 96 --epochs N --out DIR
  transferkit  python -m transferkit.cli train DATA --backbone mobilenet --weights FILE
               --image-size 96 --epochs N --fine-tune-epochs 0 --out DIR

and prints the median wall time of each, their ratio and the validation accuracy each printed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from common import (
    MOBILENET_NOTOP,
    Run,
    alternate,
    markdown_table,
    median_seconds,
    shared_missing,
    timing_row,
    write_fashion_subset,
)

HERE = Path(__file__).resolve().parent


def validation_accuracy(run: Run) -> float:
    """The last validation accuracy a command printed (NaN if none)."""
    found = re.findall(r"Validation accuracy: ([0-9.]+)", run[2])
    return float(found[-1]) if found else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shared_missing():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_fashion_subset(Path(tmp) / "data", per_class=args.per_class))
        epochs = str(args.epochs)
        commands = {
            "guide": [sys.executable, str(HERE / "guide_recipe.py"), data, "--image-size", "96", "--epochs", epochs,
                      "--out", str(Path(tmp) / "guide")],
            "transferkit": [sys.executable, "-m", "transferkit.cli", "train", data, "--backbone", "mobilenet",
                            "--weights", str(MOBILENET_NOTOP), "--image-size", "96", "--epochs", epochs,
                            "--fine-tune-epochs", "0", "--out", str(Path(tmp) / "tk")],
        }
        runs = alternate(commands, args.repeats,
                         describe=lambda run: f"validation accuracy {validation_accuracy(run):.3f}")
    guide = median_seconds(runs["guide"])
    rows = [{**timing_row(name, runs[name]), "validation accuracy": f"{validation_accuracy(runs[name][-1]):.3f}",
             "guide / this": f"{guide / median_seconds(runs[name]):.1f}×"} for name in commands]
    print()
    print(markdown_table(rows, ["command", "median wall time", "runs", "validation accuracy", "guide / this"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
