"""A real `kill -9` during fine-tuning, the same command again, and the result against a run never killed.

    .venv/bin/python benchmarks/resume.py [--data ../shared/data/stamps5] [--kill-after-fine-tune-epochs 2]

Runs, from process start to files written:

  reference  transferkit train DATA --backbone mobilenet --weights imagenet --out REF
  killed     the same with --out RUN, sent SIGKILL once RUN/checkpoint records the given number of
             fine-tune epochs (the first fine-tune phase, not the refit's)
  resumed    the same command again on RUN (it prints "Resuming from fine_tune epoch N")

then `transferkit evaluate RUN DATA`, and prints the wall times, the resume line, and the largest
difference between the weights (and whether the histories are equal) of RUN and REF.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import shared_missing

HERE = Path(__file__).resolve().parent
TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def _fine_tune_epochs(state: Path) -> int:
    try:
        stages = json.loads(state.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return 0
    last = stages[-1] if stages else None
    if last is None or last["name"] != "fine_tune" or last["refit"] or last["done"]:
        return 0
    return int(last["epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "stamps5"))
    parser.add_argument("--kill-after-fine-tune-epochs", type=int, default=2)
    args = parser.parse_args()
    if shared_missing() or not Path(args.data).is_dir():
        raise SystemExit(f"needs ../shared (real weights) and {args.data}")
    train = [*TRANSFERKIT, "train", args.data, "--backbone", "mobilenet", "--weights", "imagenet"]
    with tempfile.TemporaryDirectory() as tmp:
        ref, run = Path(tmp) / "reference", Path(tmp) / "run"
        start = time.perf_counter()
        subprocess.run([*train, "--out", str(ref)], check=True, capture_output=True)
        reference_s = time.perf_counter() - start

        start = time.perf_counter()
        killed = subprocess.Popen([*train, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while killed.poll() is None:
            if _fine_tune_epochs(run / "checkpoint" / "state.json") >= args.kill_after_fine_tune_epochs:
                os.kill(killed.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        killed.wait()
        killed_s = time.perf_counter() - start
        if killed.returncode != -signal.SIGKILL:
            raise SystemExit(f"the first run ended by itself (status {killed.returncode}) before it could be killed")

        start = time.perf_counter()
        resumed = subprocess.run([*train, "--out", str(run)], check=True, capture_output=True, text=True)
        resumed_s = time.perf_counter() - start
        line = re.search(r"Resuming from [^\n]*", resumed.stdout)
        evaluated = subprocess.run([*TRANSFERKIT, "evaluate", str(run), args.data], check=True, capture_output=True,
                                   text=True)

        import numpy as np

        import transferkit as tk

        ours, theirs = tk.FineTuner.load(run), tk.FineTuner.load(ref)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours.model.get_weights(),
                                                                 theirs.model.get_weights(), strict=True))
        same_history = ours.history == theirs.history
    print(f"reference run        {reference_s:6.1f} s")
    print(f"killed run (SIGKILL) {killed_s:6.1f} s")
    print(f"resumed run          {resumed_s:6.1f} s   {line.group(0) if line else 'NO RESUME LINE'}")
    print(f"evaluate on the run: {evaluated.stdout.splitlines()[0]}")
    print(f"largest weight difference to the reference: {diff:g}; histories equal: {same_history}")


if __name__ == "__main__":
    main()
