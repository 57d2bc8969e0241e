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
    # --out: one prediction per file gives the metrics and the page's images
    evaluation = tuner.evaluate(args.data_dir, **_tta(args)) if args.out is None else _evaluate_into(tuner, args)
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
        return 0
    print(f"accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}")
    rows = [{"class": name, **{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in m.items()}}
            for name, m in evaluation.per_class.items()]
    print(table(rows, ("class", "precision", "recall", "f1", "support")))
    return 0


def _evaluate_into(tuner: Any, args: argparse.Namespace) -> Any:
    """Evaluate on ``args.data_dir`` from one prediction per file, and write report.html and
    metrics.json for those images into ``args.out``."""
    from pathlib import Path

    from transferkit._atomic import write_text_atomic
    from transferkit._errors import DataError
    from transferkit._report_page import write_report_page
    from transferkit.data._images import printable
    from transferkit.data._sources import scan_folder

    run = tuner.result
    files = scan_folder(args.data_dir)
    if files.class_names != run.class_names:
        raise DataError(f"The classes in {printable(str(args.data_dir))!r} {list(files.class_names)} differ from "
                        f"the model's {list(run.class_names)}.")
    predictions = tuner.predict(list(files.paths), **_tta(args))
    evaluation = run.evaluation(predictions.probabilities, files.labels)
    out = Path(args.out)
    write_report_page(out, class_names=run.class_names, history=run.history, evaluation=evaluation,
                      examples=predictions, truth=files.labels, image_settings=run.image_settings, split="test",
                      title=f"Evaluation of {Path(args.run_dir).name} on {Path(args.data_dir).name}")
    metrics = {"run": str(args.run_dir), "data": str(args.data_dir), "tta": args.tta, "test": evaluation.to_dict()}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    if not args.json:
        print(f"Wrote {out / 'report.html'} and {out / 'metrics.json'}")
    return evaluation


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
