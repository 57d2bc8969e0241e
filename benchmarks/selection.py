"""Which weights to keep: the best validated epoch against the last one, on held-out test images.

    .venv/bin/python benchmarks/selection.py [--seeds 1 2 3] [--per-class 50]

For each seed, draws a Fashion-MNIST task from images 50,000–59,999 of ../shared's training file:
``--per-class`` images per class to train on (transferkit holds 20 % of them out for validation)
and 100 other images per class to test on. Runs ``transferkit train`` (MobileNet v1, real ImageNet
weights, 96 px, default phases) as a user would, once keeping the best validated epoch (the
default) and once with ``--keep-last``, then ``transferkit evaluate`` on the test images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import FASHION_NAMES, MOBILENET_NOTOP, SHARED, markdown_table, shared_missing
from PIL import Image

POOL_START = 50_000  # the other benchmarks draw from the whole file; this pool keeps tasks apart


def write_task(root: Path, *, seed: int, per_class: int, test_per_class: int = 100) -> tuple[Path, Path]:
    folder = SHARED / "data" / "fashion-mnist"
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(100 + seed)
    for c, name in enumerate(FASHION_NAMES):
        pool = np.flatnonzero(labels[POOL_START:] == c) + POOL_START
        chosen = rng.permutation(pool)[: per_class + test_per_class]
        for split, indices in (("train", chosen[:per_class]), ("test", chosen[per_class:])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i], "L").save(root / split / name / f"{i}.png")
    return root / "train", root / "test"


def command(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "transferkit.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=50)
    args = parser.parse_args()
    if shared_missing():
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            train, test = write_task(Path(tmp) / f"task{seed}", seed=seed, per_class=args.per_class)
            row: dict[str, object] = {"seed": seed}
            for label, extra in (("best validated epoch", []), ("last epoch", ["--keep-last"])):
                run = Path(tmp) / f"run{seed}_{len(extra)}"
                printed = command("train", str(train), "--backbone", "mobilenet", "--weights", str(MOBILENET_NOTOP),
                                  "--image-size", "96", "--out", str(run), *extra)
                kept = next((line for line in printed.splitlines() if line.startswith("Kept")), "")
                result = json.loads(command("evaluate", str(run), str(test), "--json"))
                row[label] = f"{result['accuracy']:.3f}"
                found = re.search(r"epoch (\d+) \(([a-z ]+) phase", kept)
                if found:
                    row["kept"] = f"{found.group(2)}, epoch {found.group(1)}"
                print(f"seed {seed}, {label}: test accuracy {result['accuracy']:.3f} {kept}", flush=True)
            rows.append(row)
    for label in ("best validated epoch", "last epoch"):
        values = [float(r[label]) for r in rows]
        print(f"{label}: mean {np.mean(values):.3f} ± {np.std(values):.3f}")
    print()
    print(markdown_table(rows, ["seed", "best validated epoch", "last epoch", "kept"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
