"""Peak memory of a 20-trial head search: do trials leak?

Runs a search one trial at a time (each call resumes the same keras-tuner project) and prints the
process's peak resident memory after the first trial and after the last, and their ratio.

    python benchmarks/search_memory.py [--trials 20] [--per-class 50]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import MOBILENET_NOTOP, shared_missing, write_fashion_subset

import transferkit as tk


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=50)
    args = parser.parse_args()
    if shared_missing():
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = tk.load_folder(write_fashion_subset(Path(tmp) / "data", per_class=args.per_class), image_size=96)
        cache = tk.FeatureCache()
        peaks = []
        for n in range(1, args.trials + 1):
            tk.search(data, "mobilenet", weights=str(MOBILENET_NOTOP), max_trials=n, epochs=5,
                   directory=Path(tmp) / "search", cache=cache)
            peaks.append(peak_rss_mb())
            print(f"after trial {n:2d}: peak RSS {peaks[-1]:.0f} MB", flush=True)
    print(f"\npeak RSS after trial 1: {peaks[0]:.0f} MB; after trial {args.trials}: {peaks[-1]:.0f} MB; "
          f"ratio {peaks[-1] / peaks[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
