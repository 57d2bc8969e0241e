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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MOBILENET_NOTOP, markdown_table, shared_missing, write_fashion_subset

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    found = re.findall(r"Validation accuracy: ([0-9.]+)", done.stdout)
    return seconds, float(found[-1]) if found else float("nan")


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
        times: dict[str, list[float]] = {name: [] for name in commands}
        accuracy: dict[str, float] = {}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                seconds, accuracy[name] = timed(command)
                times[name].append(seconds)
                print(f"run {repeat + 1}, {name}: {seconds:.1f} s, validation accuracy {accuracy[name]:.3f}",
                      flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = [{"command": name, "median wall time": f"{median[name]:.1f} s",
             "runs": ", ".join(f"{t:.1f}" for t in times[name]), "validation accuracy": f"{accuracy[name]:.3f}",
             "guide / this": f"{median['guide'] / median[name]:.1f}×"} for name in commands]
    print()
    print(markdown_table(rows, ["command", "median wall time", "runs", "validation accuracy", "guide / this"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
