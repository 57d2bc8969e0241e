"""When to keep the fine-tune phase: both arms of the choice, scored on held-out test images.

    .venv/bin/python benchmarks/phase_choice.py [--datasets fashion50 fashion200 digits stamps5 pool
                                                 stamps5-more pool-more] [--json F]

For every task of the accuracy suite (see accuracy.py), and for a pool the suite never uses
(``pool``: 50 Fashion-MNIST images per class from images 40,000–49,999, seeds 1–3), and for more
tasks of the same kinds (``stamps5-more``: stamps5 cut into 5 folds again with seeds 1 and 2;
``pool-more``: the pool with seeds 4–8), this runs
``transferkit train`` twice as a user would:

  head       ``--fine-tune-epochs 0``: the head phase alone (then the refit on every image)
  fine-tune  ``--keep-last``: both phases, the fine-tune phase kept (then the refit)

and ``transferkit evaluate`` on the test images for each. It records the validation accuracy and
loss at the end of each phase (from the second run's metrics.json) and each arm's calibrated
validation loss (after temperature scaling, before the refit: metrics.json's ``validation``), so
that any rule for choosing between the phases can be scored afterwards against what each choice
gives on the test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import selection
from accuracy import command, link_split, tasks
from common import MOBILENET_NOTOP, SHARED, markdown_table, shared_missing, stratified_folds

import transferkit as tk

POOL = 40_000


DATASETS = ["fashion50", "fashion200", "digits", "stamps5", "pool", "stamps5-more", "pool-more"]


def pool_tasks(tmp: Path, seeds: tuple[int, ...]) -> list[tuple[Path, Path, int]]:
    selection.POOL_START = POOL
    try:
        return [(*selection.write_task(tmp / f"pool_{s}", seed=s, per_class=50), 96) for s in seeds]
    finally:
        selection.POOL_START = 50_000


def stamps5_tasks(tmp: Path, fold_seeds: tuple[int, ...]) -> list[tuple[Path, Path, int]]:
    files = tk.scan_folder(SHARED / "data" / "stamps5")
    everything, chosen = np.arange(len(files)), []
    for s in fold_seeds:
        for k, test in enumerate(stratified_folds(files.labels, 5, seed=s)):
            root = tmp / f"stamps5_seed{s}_fold{k}"
            chosen.append((*link_split(files, np.setdiff1d(everything, test), test, root), 224))
    return chosen


def all_tasks(dataset: str, tmp: Path) -> list[tuple[Path, Path, int]]:
    if dataset == "pool":
        return pool_tasks(tmp, (1, 2, 3))
    if dataset == "pool-more":
        return pool_tasks(tmp, (4, 5, 6, 7, 8))
    if dataset == "stamps5-more":
        return stamps5_tasks(tmp, (1, 2))
    return tasks(dataset, tmp)


def both_arms(train: Path, test: Path, size: int, seed: int) -> dict[str, float | int]:
    common = ["train", str(train), "--backbone", "mobilenet", "--weights", str(MOBILENET_NOTOP),
              "--image-size", str(size), "--seed", str(seed)]
    result: dict[str, float | int] = {}
    for arm, extra in (("head", ["--fine-tune-epochs", "0"]), ("fine_tune", ["--keep-last"])):
        run = train.parent / f"run_{arm}"
        command(*common, "--out", str(run), *extra)
        result[f"test_{arm}"] = float(json.loads(command("evaluate", str(run), str(test), "--json"))["accuracy"])
        result[f"calibrated_loss_{arm}"] = float(json.loads((run / "metrics.json").read_text())["validation"]["loss"])
    metrics = json.loads((train.parent / "run_fine_tune" / "metrics.json").read_text())
    for phase in ("head", "fine_tune"):
        epochs = metrics["history"][phase]
        result[f"val_loss_{phase}"] = float(epochs["val_loss"][-1])
        result[f"val_accuracy_{phase}"] = float(epochs["val_accuracy"][-1])
    result["validation_images"] = int(sum(map(sum, metrics["validation"]["confusion_matrix"])))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS[:5], choices=DATASETS)
    parser.add_argument("--json", help="also write the results here (one record per task)")
    args = parser.parse_args()
    if shared_missing():
        return 2
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            chosen = all_tasks(dataset, Path(tmp))
            for k, (train, test, size) in enumerate(chosen, start=1):
                record = {"dataset": dataset, "task": k, **both_arms(train, test, size, k)}
                records.append(record)
                print(json.dumps(record), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(records, indent=2))
    rows = [{key: (f"{value:.3f}" if isinstance(value, float) else value) for key, value in r.items()}
            for r in records]
    print()
    print(markdown_table(rows, list(records[0])))
    for arm in ("head", "fine_tune"):
        print(f"mean test accuracy, {arm} always: {np.mean([r[f'test_{arm}'] for r in records]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
