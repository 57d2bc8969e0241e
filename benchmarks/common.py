"""Helpers shared by the benchmark scripts (folds, data subsets, tables)."""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
MOBILENET_NOTOP = SHARED / "weights" / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"
LITE0 = SHARED / "weights" / "efficientnet_lite0_timm"  # timm-format folder; KerasHub converts it on load
# --backbone and --weights of `transferkit train` for the backbones the benchmarks compare (weights None: the
# preset's own ImageNet weights, no --weights flag)
BACKBONES: dict[str, tuple[str, str | None]] = {"mobilenet": ("mobilenet", str(MOBILENET_NOTOP)),
                                                 "lite0": (str(LITE0), None)}
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Split indices into k folds keeping each class's share (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        for i, index in enumerate(members):
            folds[i % k].append(int(index))
    return [np.sort(np.asarray(f)) for f in folds]


def write_fashion_subset(out: Path, per_class: int, seed: int = 0) -> Path:
    """Write ``per_class`` Fashion-MNIST training images per class as PNG files under out/<class>/."""
    folder = SHARED / "data" / "fashion-mnist"
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    images = images.reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(FASHION_NAMES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in rng.choice(np.flatnonzero(labels == c), per_class, replace=False):
            Image.fromarray(images[i], "L").save(out / name / f"{i}.png")
    return out


def shared_missing(*needed: Path) -> bool:
    """True, after one error line, when ../shared's MobileNet weights (or any of ``needed``) are not there."""
    for path in (MOBILENET_NOTOP, *needed):
        if not path.exists():
            print(f"error: {path} not found; this benchmark needs ../shared", file=sys.stderr)
            return True
    return False


def backbone_args(backbone: str) -> list[str]:
    """The ``--backbone`` (and ``--weights``) options of `transferkit train` for a name of BACKBONES."""
    name, weights = BACKBONES[backbone]
    return ["--backbone", name, *(["--weights", weights] if weights else [])]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def print_report(rows: list[dict], columns: list[str], json_path: str | None, payload: object) -> None:
    """Print the Markdown table of ``rows``; also write ``payload`` as JSON when asked."""
    print()
    print(markdown_table(rows, columns))
    if json_path:
        Path(json_path).write_text(json.dumps(payload, indent=2))


def run_timed(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` to completion: wall seconds, peak resident memory of its process in MB (from
    ``wait4``) and its standard output. Exits with the command's error output if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode(errors="replace")


Run = tuple[float, float, str]  # wall seconds, peak RSS in MB, standard output (run_timed)


def alternate(commands: dict[str, list[str]], repeats: int, *, before: Callable[[str], None] | None = None,
              describe: Callable[[Run], str] = lambda run: f"peak RSS {run[1]:.0f} MB"
              ) -> dict[str, list[Run]]:
    """Run each command in turn, ``repeats`` rounds, printing one line a run (``before(name)`` first)."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for repeat in range(repeats):
        for name, command in commands.items():
            if before is not None:
                before(name)
            runs[name].append(run_timed(command))
            print(f"run {repeat + 1}, {name}: {runs[name][-1][0]:.1f} s, {describe(runs[name][-1])}", flush=True)
    return runs


def median_seconds(runs: list[Run]) -> float:
    return statistics.median(run[0] for run in runs)


def timing_row(name: str, runs: list[Run]) -> dict[str, str]:
    """A table row's command, median wall time and every run's wall time."""
    return {"command": name, "median wall time": f"{median_seconds(runs):.1f} s",
            "runs": ", ".join(f"{run[0]:.1f}" for run in runs)}
