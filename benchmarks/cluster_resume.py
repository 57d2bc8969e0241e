"""A cluster killed as a user's would be: a worker of a two-worker `train`, the chief of a `tune` search.

    .venv/bin/python benchmarks/cluster_resume.py [--parts train tune] [--data ../shared/data/stamps5]
                                                  [--kill-after-fine-tune-epochs 1] [--max-trials 6]

Whole commands on localhost, from process start to exit (MobileNet v1 with the ImageNet weights
shipped with transferkit, 96 px):

  train  `transferkit train DATA --backbone mobilenet --weights imagenet --image-size 96` as two
         workers (TF_CONFIG on localhost), once to the end (reference); then again into another
         folder, worker 1 sent SIGKILL once the chief's checkpoint records the given number of
         fine-tune epochs; how long the chief takes to stop and its error line; both commands again,
         unchanged: their exit status, their resume lines, the wall time; `transferkit evaluate` on
         the run; the largest weight difference to the reference and whether the histories agree.
  tune   `transferkit tune DATA … --max-trials N` as keras-tuner's chief and two workers; the chief
         sent SIGKILL once its oracle.json shows both workers in a trial, started again 3 s later
         with the same command: every process's exit status, the trial ids in trials.csv (each once?),
         what the chief and the workers printed about it, the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import shared_missing
from resume import _fine_tune_epochs

HERE = Path(__file__).resolve().parent
TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Logged:
    """A process whose output goes to a file, read when asked."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "w") as f:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, env={**os.environ, **QUIET, **env}, stdout=f,
                                            stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def cluster(command: list[str], ports: list[int], logs: Path, tag: str) -> list[Logged]:
    workers = [f"localhost:{p}" for p in ports]
    return [Logged(command, {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": i}})},
                   logs / f"{tag}_worker{i}.log") for i in range(len(ports))]


def lines(text: str, pattern: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(pattern, line)]


def train_part(tmp: Path, data: str, kill_after: int) -> None:
    import numpy as np

    import transferkit as tk

    train = [*TRANSFERKIT, "train", data, "--backbone", "mobilenet", "--weights", "imagenet", "--image-size", "96"]
    reference, run = tmp / "reference", tmp / "run"
    start = time.perf_counter()
    done = cluster([*train, "--out", str(reference)], free_ports(2), tmp, "reference")
    codes = [w.process.wait() for w in done]
    reference_s = time.perf_counter() - start
    if codes != [0, 0]:
        raise SystemExit(f"the reference cluster failed: {codes}\n{done[0].output()[-3000:]}")

    ports = free_ports(2)
    command = [*train, "--out", str(run)]
    start = time.perf_counter()
    first = cluster(command, ports, tmp, "killed")
    while first[1].process.poll() is None:
        if _fine_tune_epochs(run / "checkpoint" / "state.json") >= kill_after:
            first[1].process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    killed_at = time.perf_counter()
    chief_code = first[0].process.wait()
    stopped_s = time.perf_counter() - killed_at
    if first[1].process.wait() != -signal.SIGKILL:
        raise SystemExit("worker 1 ended by itself before it could be killed")
    first_s = time.perf_counter() - start

    start = time.perf_counter()
    again = cluster(command, ports, tmp, "again")
    codes = [w.process.wait() for w in again]
    again_s = time.perf_counter() - start
    evaluated = subprocess.run([*TRANSFERKIT, "evaluate", str(run), data], capture_output=True, text=True,
                               env={**os.environ, **QUIET})
    ours, theirs = tk.FineTuner.load(run), tk.FineTuner.load(reference)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours.model.get_weights(), theirs.model.get_weights(),
                                                             strict=True))
    print(f"reference cluster (2 workers)       {reference_s:6.1f} s")
    print(f"worker 1 killed after {kill_after} fine-tune epoch(s); the cluster ran {first_s:6.1f} s")
    print(f"the chief stopped {stopped_s:.1f} s after the kill, status {chief_code}: "
          f"{(lines(first[0].output(), r'^error:') or ['NO ERROR LINE'])[-1]}")
    print(f"both commands again: status {codes}, {again_s:6.1f} s")
    for i, worker in enumerate(again):
        print(f"  worker {i}: {(lines(worker.output(), 'Resuming from') or ['NO RESUME LINE'])[0]}")
    print(f"evaluate: status {evaluated.returncode}, {(evaluated.stdout.splitlines() or [''])[0]}")
    print(f"largest weight difference to the reference: {diff:g}; histories equal: {ours.history == theirs.history}")


def tune_part(tmp: Path, data: str, max_trials: int) -> None:
    out = tmp / "search"
    [port] = free_ports(1)
    command = [*TRANSFERKIT, "tune", data, "--backbone", "mobilenet", "--weights", "imagenet", "--image-size", "96",
               "--max-trials", str(max_trials), "--out", str(out)]

    def start(tuner_id: str, tag: str) -> Logged:
        return Logged(command, {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                                "KERASTUNER_ORACLE_PORT": str(port)}, tmp / f"{tag}.log")

    begin = time.perf_counter()
    chief = start("chief", "chief_killed")
    workers = [start("tuner0", "tuner0"), start("tuner1", "tuner1")]
    running: dict[str, str] = {}
    while len(running) < 2:
        if chief.process.poll() is not None:
            raise SystemExit(f"the chief ended before both workers were in a trial:\n{chief.output()[-3000:]}")
        for oracle in out.glob("search/*/oracle.json"):
            state = json.loads(oracle.read_text())  # written whole: never half a file
            running = {t: i for t, i in state["ongoing_trials"].items() if i not in state["end_order"]}
        time.sleep(0.05)
    chief.process.send_signal(signal.SIGKILL)
    chief.process.wait()
    killed_s = time.perf_counter() - begin
    time.sleep(3)
    chief = start("chief", "chief_again")
    codes = {"chief": chief.process.wait(), **{f"tuner{i}": w.process.wait() for i, w in enumerate(workers)}}
    total_s = time.perf_counter() - begin
    with open(out / "trials.csv", newline="") as f:
        trials = sorted(int(row["trial"]) for row in csv.DictReader(f))
    print(f"chief killed {killed_s:.1f} s after the start, trials {running} running; started again 3 s later")
    print(f"exit status: {codes}; {total_s:.1f} s in all")
    print(f"trials.csv: trials {trials} (each once: {trials == list(range(max_trials))})")
    for line in lines(chief.output(), "Resuming the search"):
        print(f"  chief: {line[:160]}…")
    for i, worker in enumerate(workers):
        for line in lines(worker.output(), "does not answer|answers again|done: ran"):
            print(f"  tuner{i}: {line[:160]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("train", "tune"), default=["train", "tune"])
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "stamps5"))
    parser.add_argument("--kill-after-fine-tune-epochs", type=int, default=1)
    parser.add_argument("--max-trials", type=int, default=6)
    args = parser.parse_args()
    if shared_missing() or not Path(args.data).is_dir():
        raise SystemExit(f"needs ../shared (real weights) and {args.data}")
    with tempfile.TemporaryDirectory() as name:
        if "train" in args.parts:
            train_part(Path(name), args.data, args.kill_after_fine_tune_epochs)
        if "tune" in args.parts:
            tune_part(Path(name), args.data, args.max_trials)


if __name__ == "__main__":
    main()
