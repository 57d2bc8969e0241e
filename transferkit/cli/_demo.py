"""``transferkit demo``: the whole job offline, on the MobileNet and photos shipped with the package."""

from __future__ import annotations

import argparse
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    from transferkit._demo import run_demo

    run_demo(Path(args.out), per_class=args.per_class, image_size=args.image_size, seed=args.seed)
    return 0
