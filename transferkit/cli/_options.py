"""The command's options: config files, their merge with the flags, and checks of single values.

Nothing here imports TensorFlow: an option a user got wrong is reported before it is imported.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A mistake in the command's arguments: printed as one ``error:`` line, exit status 2."""


def train_defaults() -> dict[str, Any]:
    """The train command's options; None means "the library's default" for that option."""
    return {
        "backbone": None,  # FineTuner's default backbone
        "weights": "imagenet",
        "epochs": None,  # None: the default Phase of each phase
        "learning_rate": None,
        "fine_tune_epochs": None,
        "fine_tune_learning_rate": None,
        "unfreeze_blocks": None,
        "image_size": None,  # the backbone's own input size
        "batch_size": None,  # PipelineSettings' defaults
        "validation_split": None,
        "augment": False,
        "balanced": False,
        "keep_last": False,
        "refit": "auto",
        "label_smoothing": None,  # None: the phases' own (0)
        "mix": None,
        "lr_decay": None,
        "gradual": False,
        "heads": None,  # None: the head phase's own (5 averaged copies)
        "solve_head": None,  # None: the head phase's own ("auto"); true/false: solve the linear head or train it
        "calibrate": True,
        "seed": None,
        "out": "run",
        "cache": None,  # a folder: the head phase's features are kept there across runs (`transferkit extract`)
        "distribute": None,  # "mirrored": every local GPU (tf.distribute.MirroredStrategy)
        "mixed_precision": False,  # FineTuner(mixed_precision=True): float16 compute, for GPUs
        "xla": False,  # True: FineTuner(jit_compile=True); else Keras decides (off on a CPU, on with a GPU)
    }


TRAIN_OPTIONS = tuple(train_defaults())


def read_config(path: str) -> dict[str, Any]:
    """The options in a ``--config`` file (.toml, .yaml or .yml), keys with ``_`` for ``-``."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path!r}: file not found.")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]

            config = tomllib.loads(text)
        elif file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"--config {path!r}: expected a .toml, .yaml or .yml file.")
    except UsageError:
        raise
    except Exception as error:  # a parse error of either format
        raise UsageError(f"--config {path!r} cannot be parsed: {error}".replace("\n", " ")) from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path!r}: expected a table of options at the top level.")
    options = {key.replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(options) - set(TRAIN_OPTIONS) - {"data_dir"})
    if unknown:
        raise UsageError(f"--config {path!r}: unknown option(s) {unknown}. Known: {sorted(TRAIN_OPTIONS)}.")
    return options


def train_options(args: argparse.Namespace, *, command: str = "train") -> dict[str, Any]:
    """Command-line flags over the config file over the defaults (``extract`` reads train's options)."""
    config = read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in TRAIN_OPTIONS and v is not None}
    options = {**train_defaults(), **config, **given}
    options["data_dir"] = args.data_dir or config.get("data_dir")
    if not options["data_dir"]:
        raise UsageError(f"{command}: give DATA_DIR on the command line or data_dir in --config.")
    return options


def number(options: dict[str, Any], key: str) -> float:
    """A numeric option (from a flag or a config file), or a one-line usage error."""
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{key} = {value!r}: expected a number.")
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{key} = {value!r}: expected a number.") from None


def flag(options: dict[str, Any], key: str) -> bool:
    """A true/false option: flags give booleans; a config file must too (\"no\" is not false)."""
    value = options[key]
    if not isinstance(value, bool):
        raise UsageError(f"{key} = {value!r}: expected true or false.")
    return value


def refit_choice(value: Any) -> bool | str:
    """--refit auto|always|never (or a config file's true/false) as FineTuner's ``refit``."""
    choices: dict[Any, bool | str] = {"auto": "auto", "always": True, "never": False, True: True, False: False}
    if not isinstance(value, (str, bool)) or value not in choices:
        raise UsageError(f"--refit {value!r}: expected auto, always or never.")
    return choices[value]


def weights(value: str) -> str | None:
    """--weights imagenet|none|FILE as FineTuner's ``weights``."""
    if value.lower() == "none":
        return None
    if value != "imagenet" and not Path(value).is_file():
        raise UsageError(f"--weights {value!r}: expected 'imagenet', 'none' or an existing weights file.")
    return value


def shard(value: str) -> tuple[int, int]:
    """--shard I/N as ``(I, N)``: this process's share, numbered from 0."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if match is None:
        raise UsageError(f"--shard {value!r}: expected I/N, this process's shard I of N numbered from 0 "
                         "(--shard 0/4, --shard 1/4, … --shard 3/4).")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        shards = f"--shard 0/{count} … --shard {count - 1}/{count}" if count > 1 else "--shard 0/1"
        raise UsageError(f"--shard {value}: expected I/N with N >= 1 and 0 <= I < N; shards are numbered from "
                         f"0 ({shards}).")
    return index, count
