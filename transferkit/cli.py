"""The ``transferkit`` command.

    transferkit backbones [--filter TEXT] [--json]
    transferkit train DATA_DIR --backbone NAME --weights imagenet|none|PATH [--out RUN_DIR] …
    transferkit evaluate RUN_DIR DATA_DIR
    transferkit predict RUN_DIR IMAGE_OR_DIR [--top-k 3] [--json]

Every mistake a user can make prints one line starting with ``error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _UsageError(Exception):
    pass


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _cmd_backbones(args: argparse.Namespace) -> int:
    from transferkit.backbones import describe, get_backbone, list_backbones

    rows = [describe(get_backbone(n)) for n in list_backbones(include_test=args.all)]
    if args.filter:
        needle = args.filter.lower()
        rows = [r for r in rows if needle in r["name"] or needle in r["family"]]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(backbone_markdown(rows))
    else:
        print(_table(rows, ("name", "family", "input_size", "feature_dim", "preprocessing")))
        print(f"\n{len(rows)} backbones")
    return 0


def backbone_markdown(rows: list[dict[str, Any]]) -> str:
    """The backbone table as Markdown (docs/backbones.md holds this output)."""
    lines = ["| name | family | input size | feature size | preprocessing | constructor |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{r['name']}` | {r['family']} | {r['input_size']} | {r['feature_dim']} | {r['preprocessing']} | "
              f"`{r['description']}` |" for r in rows]
    return "\n".join(lines)


def _weights(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value != "imagenet" and not Path(value).is_file():
        raise _UsageError(f"--weights {value!r}: expected 'imagenet', 'none' or an existing weights file.")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import transferkit as tk

    data = tk.load_folder(args.data_dir, image_size=args.image_size or tk.get_backbone(args.backbone).input_size,
                          validation_split=args.validation_split, seed=args.seed, batch_size=args.batch_size,
                          augment=tk.Augment() if args.augment else None)
    head_phase = dataclasses.replace(tk.HEAD_PHASE, epochs=args.epochs, **(
        {"learning_rate": args.learning_rate} if args.learning_rate else {}))
    fine = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=args.fine_tune_epochs,
                               policy=tk.UnfreezeTop(args.unfreeze_blocks), **(
        {"learning_rate": args.fine_tune_learning_rate} if args.fine_tune_learning_rate else {}))
    if fine.warmup_epochs >= max(fine.epochs, 1):
        fine = dataclasses.replace(fine, warmup_epochs=0.0)
    tuner = tk.FineTuner(args.backbone, weights=_weights(args.weights), head_phase=head_phase,
                         fine_tune_phase=fine if args.fine_tune_epochs else None, seed=args.seed,
                         class_weight="balanced" if args.balanced else None)
    print(f"Training {args.backbone} on {data.num_train} images ({data.num_validation} for validation), "
          f"classes: {', '.join(data.class_names)}")
    tuner.fit(data)
    out = Path(args.out)
    tuner.save(out)
    (out / "labels.txt").write_text("\n".join(data.class_names) + "\n")
    metrics: dict[str, Any] = {"history": tuner.history, "skipped": [list(s) for s in data.skipped]}
    if data.validation is not None:
        evaluation = tuner.evaluate(data.validation)
        metrics["validation"] = evaluation.to_dict()
        print(f"Validation accuracy: {evaluation.accuracy:.4f}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"Saved to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import transferkit as tk

    tuner = tk.FineTuner.load(args.run_dir)
    evaluation = tuner.evaluate(args.data_dir)
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
        return 0
    print(f"accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}")
    rows = [{"class": name, **{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in m.items()}}
            for name, m in evaluation.per_class.items()]
    print(_table(rows, ("class", "precision", "recall", "f1", "support")))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import transferkit as tk

    tuner = tk.FineTuner.load(args.run_dir)
    predictions = tuner.predict(args.images)
    paths = predictions.paths or ()
    tops = predictions.top(args.top_k)
    if args.json:
        print(json.dumps([{"path": p, "top": [{"class": c, "probability": q} for c, q in t]}
                          for p, t in zip(paths, tops)], indent=2))
        return 0
    for path, top in zip(paths, tops):
        print(f"{path}: " + ", ".join(f"{c} {q:.3f}" for c, q in top))
    return 0


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    from transferkit.data import SkippedFilesWarning

    if issubclass(category, SkippedFilesWarning):
        print(f"warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferkit", description="Transfer learning for images with Keras 3.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--filter", help="only names or families containing this text")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--all", action="store_true", help="include the tiny test backbones")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("train", help="fine-tune a backbone on DATA_DIR/<class>/<images>")
    p.add_argument("data_dir")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--epochs", type=int, default=None, help="head-training epochs")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--fine-tune-epochs", type=int, default=None, help="fine-tuning epochs (0 skips fine-tuning)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=None)
    p.add_argument("--unfreeze-blocks", type=int, default=None, help="blocks to unfreeze when fine-tuning")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--validation-split", type=float, default=0.2)
    p.add_argument("--augment", action="store_true", help="random flips, rotation, zoom and contrast")
    p.add_argument("--balanced", action="store_true", help="weight classes by inverse frequency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="run", help="folder for the model, labels and metrics")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a saved run on DATA_DIR/<class>/<images>")
    p.add_argument("run_dir")
    p.add_argument("data_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top classes of an image or a folder of images")
    p.add_argument("run_dir")
    p.add_argument("images")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)
    return parser


def _fill_defaults(args: argparse.Namespace) -> None:
    if args.command != "train":
        return
    from transferkit.finetuner import FINE_TUNE_PHASE, HEAD_PHASE

    if args.epochs is None:
        args.epochs = HEAD_PHASE.epochs
    if args.fine_tune_epochs is None:
        args.fine_tune_epochs = FINE_TUNE_PHASE.epochs
    if args.unfreeze_blocks is None:
        args.unfreeze_blocks = getattr(FINE_TUNE_PHASE.policy, "blocks", 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from transferkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from transferkit.errors import TransferkitError

    try:
        _fill_defaults(args)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except (TransferkitError, _UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
