"""The ``transferkit`` command.

    transferkit [--verbose] backbones [--filter TEXT] [--json]
    transferkit train DATA_DIR --backbone NAME --weights imagenet|none|PATH [--out RUN_DIR] [--config F]
                      [--cache DIR] …
    transferkit extract DATA_DIR --backbone NAME --weights W --cache DIR [--shard I/N] [--config F]
                        [--image-size S] [--batch-size N] [--validation-split F] [--seed N] [--refit R]
    transferkit demo [--out DIR]
    transferkit lr-find DATA_DIR --backbone NAME --weights W [--phase head|fine-tune] [--out DIR]
    transferkit tune DATA_DIR --backbone NAME --weights W [--max-trials 20] [--tuner random|bayesian|hyperband]
                     [--cache DIR] [--worker-timeout S]   (KERASTUNER_* set: chief or worker of a distributed search)
    transferkit evaluate RUN_DIR DATA_DIR [--tta N [--no-flip]] [--json]
    transferkit predict RUN_DIR|EXPORT IMAGE_OR_DIR [--top-k 3] [--tta N [--no-flip]] [--json]
    transferkit export RUN_DIR --out PATH [--format saved_model|tflite|onnx]
                       [--quantize none|float16|dynamic|int8|int8-mixed] [--check DIR] [--calibration DIR] [--json]

Every mistake a user can make prints one line starting with ``error:`` and exits with status 2.

The parser (:mod:`._parser`) imports nothing that imports TensorFlow, and each subcommand's
handler module is imported only when that subcommand runs, after TensorFlow has been imported
with its log lines hidden (``--verbose`` shows them): ``--help`` and argument errors answer at
once.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence

from transferkit.cli._options import UsageError
from transferkit.cli._parser import build_parser

__all__ = ["main"]

# subcommand → (handler module in this package, function): imported only when it runs
HANDLERS = {
    "backbones": ("_backbones", "backbones"),
    "train": ("_train", "train"),
    "extract": ("_train", "extract"),
    "lr-find": ("_train", "lr_find"),
    "tune": ("_tune", "tune"),
    "demo": ("_demo", "demo"),
    "evaluate": ("_saved", "evaluate"),
    "predict": ("_saved", "predict"),
    "export": ("_saved", "export"),
    "review": ("_review", "review"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transferkit`` command with ``argv`` (``sys.argv[1:]`` when None); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from transferkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from transferkit import TransferkitError
    from transferkit.cli._logs import native_lines_filtered, quiet_tensorflow, terminal_output

    # export and predict run TFLite interpreters, whose runtime prints a line to standard error
    # for each; their other output goes to standard output, so holding standard error back costs nothing
    filtered = not args.verbose and args.command in ("export", "predict")
    try:
        if not args.verbose:
            quiet_tensorflow()
        with terminal_output(verbose=args.verbose), (
                native_lines_filtered() if filtered else contextlib.nullcontext()):
            return int(_handler(args.command)(args))
    except (TransferkitError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command again to resume from the last epoch" if args.command == "train" else ""
        print(f"error: interrupted{hint}", file=sys.stderr)
        return 130


def _handler(command: str) -> Callable[..., int]:
    module, function = HANDLERS[command]
    handler: Callable[..., int] = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return handler
