"""``transferkit evaluate``, ``predict`` and ``export``: the commands that use a saved run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from transferkit.cli._options import UsageError
from transferkit.cli._text import table


def evaluate(args: argparse.Namespace) -> int:
    import transferkit as tk

    tuner = tk.FineTuner.load(args.run_dir)
    evaluation = tuner.evaluate(args.data_dir, **_tta(args))
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
        return 0
    print(f"accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}")
    rows = [{"class": name, **{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in m.items()}}
            for name, m in evaluation.per_class.items()]
    print(table(rows, ("class", "precision", "recall", "f1", "support")))
    return 0


def _tta(args: argparse.Namespace) -> dict[str, Any]:
    """--tta N [--no-flip] as evaluate/predict keywords."""
    import transferkit as tk

    if args.tta < 0:
        raise UsageError(f"--tta {args.tta}: expected the number of augmented views, 0 or more.")
    return {"tta": args.tta, "augment": tk.Augment(flip=None) if args.no_flip else None}


def predict(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit.data._images import printable
    from transferkit.export import export_format, load_exported

    if export_format(args.run_dir) is not None:  # a SavedModel folder, a .tflite or .onnx file
        if args.tta:
            raise UsageError(f"--tta {args.tta}: test-time augmentation needs the run folder; an exported "
                             "model predicts on the plain images. Drop --tta, or give the run folder.")
        predictions = load_exported(args.run_dir).predict(args.images)
    else:
        tuner = tk.FineTuner.load(args.run_dir)
        predictions = tuner.predict(args.images, **_tta(args))
    paths = predictions.paths or ()
    tops = predictions.top(args.top_k)
    if args.json:
        print(json.dumps([{"path": printable(p), "top": [{"class": c, "probability": q} for c, q in t]}
                          for p, t in zip(paths, tops)], indent=2))
        return 0
    for path, top in zip(paths, tops):
        print(f"{printable(path)}: " + ", ".join(f"{c} {q:.3f}" for c, q in top))
    return 0


def export(args: argparse.Namespace) -> int:
    from transferkit.export import export_run

    report = export_run(args.run_dir, args.out, format=args.format, quantize=args.quantize, check=args.check,
                        calibration=args.calibration, calibration_images=args.calibration_images)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.describe())
    return 0
