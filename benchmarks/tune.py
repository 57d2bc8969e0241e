"""A head search as a whole command, against one run of the keras.io guide's recipe timed beside it.

    .venv/bin/python benchmarks/tune.py [--per-class 200] [--trials 20] [--epochs 10] [--repeats 2]

Writes ``--per-class`` Fashion-MNIST images per class (10 classes, 2,000 by default) from ../shared
as PNG files, then runs, alternating, ``--repeats`` times each, from process start to files written:

  guide  python benchmarks/guide_recipe.py DATA --image-size 96 --epochs N --out DIR
  tune   python -m transferkit.cli tune DATA --backbone mobilenet --weights FILE --image-size 96
         --max-trials T --epochs N --out DIR   (head trials; then the best one retrained and saved)

and prints each command's median wall time, peak resident memory (its process, from wait4) and the
ratio tune / guide.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    MOBILENET_NOTOP,
    alternate,
    markdown_table,
    median_seconds,
    shared_missing,
    timing_row,
    write_fashion_subset,
)

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if shared_missing():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_fashion_subset(Path(tmp) / "data", per_class=args.per_class))
        epochs = str(args.epochs)
        out = {"guide": Path(tmp) / "guide", "tune": Path(tmp) / "tune"}
        commands = {
            "guide": [sys.executable, str(HERE / "guide_recipe.py"), data, "--image-size", "96", "--epochs", epochs,
                      "--out", str(out["guide"])],
            "tune": [sys.executable, "-m", "transferkit.cli", "tune", data, "--backbone", "mobilenet",
                     "--weights", str(MOBILENET_NOTOP), "--image-size", "96", "--max-trials", str(args.trials),
                     "--epochs", epochs, "--out", str(out["tune"])],
        }
        # a fresh search each time, not a resumed one
        runs = alternate(commands, args.repeats, before=lambda name: shutil.rmtree(out[name], ignore_errors=True))
    guide = median_seconds(runs["guide"])
    rows = [{**timing_row(name, runs[name]), "peak RSS": f"{max(run[1] for run in runs[name]):.0f} MB",
             "this / guide": f"{median_seconds(runs[name]) / guide:.2f}×"} for name in commands]
    print()
    print(markdown_table(rows, ["command", "median wall time", "runs", "peak RSS", "this / guide"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
