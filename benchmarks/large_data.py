"""`transferkit train` on 6,000, 20,000 and 60,000 Fashion-MNIST images: wall time and peak memory.

    .venv/bin/python benchmarks/large_data.py [--sizes 6000 20000 60000] [--epochs 10]

For each size, writes that many Fashion-MNIST training images (an equal share per class, 28 px
grayscale PNG files from ../shared) and runs, as a user would, from process start to files written:

  python -m transferkit.cli train DATA --backbone mobilenet --weights FILE --image-size 96
         --epochs N --fine-tune-epochs 0 --out RUN

(frozen backbone: one pass of the backbone over the images into the feature cache, which spills
to memory-mapped files on disk past 2 GB, then N head epochs on the cached features). Prints the
wall time, the peak resident memory of the command's process (from wait4) and, sampled every
0.2 s from /proc, the peaks of its anonymous memory (RssAnon: what it allocated) and of its
file-backed resident pages (RssFile: mapped files such as memory-mapped features and libraries,
which the kernel can drop and read again), images per second of wall time and the validation
accuracy it printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import FASHION_NAMES, MOBILENET_NOTOP, markdown_table, shared_missing, write_fashion_subset


def run_sampled(command: list[str]) -> tuple[float, dict[str, float], str]:
    """Wall seconds, peak memory in MB (``VmHWM``, ``RssAnon``, ``RssFile`` of the process) and stdout."""
    peaks = {"VmHWM": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def sample() -> None:
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]) / 1024)
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    printed, _ = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}")
    return seconds, peaks, printed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 20000, 60000])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    if shared_missing():
        return 2
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_fashion_subset(Path(tmp) / "data", per_class=size // len(FASHION_NAMES))
            command = [sys.executable, "-m", "transferkit.cli", "train", str(data), "--backbone", "mobilenet",
                       "--weights", str(MOBILENET_NOTOP), "--image-size", "96", "--epochs", str(args.epochs),
                       "--fine-tune-epochs", "0", "--out", str(Path(tmp) / "run")]
            seconds, peak, printed = run_sampled(command)
            shutil.rmtree(data)
        found = re.findall(r"Validation accuracy: ([0-9.]+)", printed)
        rows.append({"images": f"{size:,}", "wall time": f"{seconds:.0f} s", "images/s": f"{size / seconds:.0f}",
                     "peak RSS": f"{peak['VmHWM']:,.0f} MB", "peak RssAnon": f"{peak['RssAnon']:,.0f} MB",
                     "peak RssFile": f"{peak['RssFile']:,.0f} MB",
                     "validation accuracy": found[-1] if found else "?"})
        print(rows[-1], flush=True)
    print()
    print(markdown_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
