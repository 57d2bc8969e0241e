"""The command line's grammar: every subcommand, its options and their defaults.

It imports nothing that imports TensorFlow, so ``--help`` and a mistyped option answer at once;
the defaults shown come from :mod:`transferkit._defaults`.
"""

from __future__ import annotations

import argparse

from transferkit._defaults import (
    BATCH_SIZE,
    CLUSTER_TIMEOUT,
    DEFAULT_BACKBONE,
    DEMO_IMAGE_SIZE,
    DEMO_PER_CLASS,
    DEMO_SEED,
    DUPLICATE_THRESHOLD,
    EXPORT_FORMATS,
    FINE_TUNE_EPOCHS,
    FINE_TUNE_LEARNING_RATE,
    FINE_TUNE_UNFREEZE_BLOCKS,
    HEAD_COPIES,
    HEAD_EPOCHS,
    HEAD_LEARNING_RATE,
    MAX_TRIALS,
    QUANTIZATIONS,
    REFIT_MAX_IMAGES,
    SEARCH_EPOCHS,
    SEED,
    SOLVE_MAX_IMAGES,
    TOP_K,
    TUNERS,
    VALIDATION_SPLIT,
    WORKER_TIMEOUT,
)

BACKBONE_HELP = (f"registry name, KerasHub preset name, kaggle:// or hf:// handle, or a local KerasHub/timm preset "
                 f"folder (`transferkit backbones` lists them; default: {DEFAULT_BACKBONE})")
IMAGE_SIZE_HELP = "pixels per side the images are resized to (default: the backbone's input size)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: …)" to an option's help where the default is a value a user would type.

    Options whose default is None stand for the library's own default (a config file may set
    them too), and their help says what it is; flags (default False) need no default shown.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` parser; each subcommand's name is ``args.command``."""
    parser = argparse.ArgumentParser(prog="transferkit", description="Transfer learning for images with Keras 3.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and every Python warning (hidden by default)")
    # --verbose after the subcommand too; SUPPRESS keeps a subcommand from resetting the one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's log lines and every Python warning (hidden by default)")
    sub = parser.add_subparsers(dest="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=HelpFormatter)

    p = command("backbones", "list the registered backbones and the KerasHub presets keras-hub knows")
    p.add_argument("--filter", help="only names or families containing this text")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--all", action="store_true", help="include the tiny test backbones")

    _train_options(command("train", "fine-tune a backbone on DATA_DIR/<class>/<images>"))
    _extract_options(command("extract", "store the features `train --cache DIR` trains its head on, in parallel "
                                        "with --shard I/N"))
    _tune_options(command("tune", "search the head (and fine-tune depth) with keras-tuner"))

    p = command("lr-find", "sweep the learning rate and suggest one (writes lr_find.png)")
    p.add_argument("data_dir")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--phase", default="head", choices=["head", "fine-tune"], help="which phase's learning rate")
    p.add_argument("--steps", type=int, default=100, help="batches in the sweep")
    p.add_argument("--unfreeze-blocks", type=int,
                   help=f"blocks the fine-tune phase unfreezes (default: {FINE_TUNE_UNFREEZE_BLOCKS})")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--batch-size", type=int, help=f"images per batch (default: {BATCH_SIZE})")
    p.add_argument("--seed", type=int, help=f"seeds the split and the shuffling (default: {SEED})")
    p.add_argument("--out", default="lr_find", help="folder for lr_find.png and lr_find.json")

    p = command("demo", "the whole job offline: fine-tune the shipped MobileNet on shipped photos")
    p.add_argument("--out", default="transferkit-demo", help="folder for the data, the run and its report")
    p.add_argument("--per-class", type=int, default=DEMO_PER_CLASS,
                   help=f"images per class (at most {DEMO_PER_CLASS})")
    p.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE, help="pixels per side")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="seeds the sample, the split and the training")

    p = command("review", "find suspected label errors, duplicates and outliers in DATA_DIR (a class folder or a "
                          ".csv) and write review.html; --apply carries out the page's decisions.csv")
    p.add_argument("data_dir", help="folder of class sub-folders, or a CSV file (path,label)")
    p.add_argument("--out", help="folder for label_issues.csv, duplicates.csv, outliers.csv and review.html")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=BACKBONE_HELP)
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--run", help="a run folder: use its fine-tuned network's features instead of the backbone's")
    p.add_argument("--against", metavar="OTHER_DIR",
                   help="another folder (a test set): also find duplicates across the two (leaks)")
    p.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold probabilities")
    p.add_argument("--ranking", choices=("self_confidence", "normalized_margin"), default="self_confidence",
                   help="how suspected label errors are ordered")
    p.add_argument("--threshold", type=float, default=DUPLICATE_THRESHOLD,
                   help="cosine similarity of two images' features from which they count as duplicates (across "
                   "--against also from 0.10 below, for two images that are each other's clear nearest neighbour)")
    p.add_argument("--seed", type=int, default=0, help="seeds the folds")
    p.add_argument("--apply", metavar="DECISIONS_CSV",
                   help="carry out decisions.csv from review.html on DATA_DIR (prints the plan; needs --yes)")
    p.add_argument("--yes", action="store_true", help="make the changes --apply prints")
    p.add_argument("--undo", action="store_true", help="put back everything the last --apply changed")

    p = command("evaluate", "metrics of a saved run on DATA_DIR/<class>/<images>")
    p.add_argument("run_dir", help="the run folder (`transferkit train --out`)")
    p.add_argument("data_dir", help="folder of class sub-folders, with the run's classes")
    _tta_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", metavar="DIR",
                   help="also write report.html (per-class table, confusion matrix with its images, top losses) "
                        "and metrics.json for these images into DIR")

    p = command("predict", "top classes of an image or a folder of images")
    p.add_argument("run_dir",
                   help="a run folder, or an export of one: a SavedModel folder, a .tflite or an .onnx file")
    p.add_argument("images", help="an image file or a folder of images")
    p.add_argument("--top-k", type=int, default=TOP_K, help="classes shown per image")
    _tta_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of one line per image")

    p = command("export", "write a saved run as a SavedModel, TFLite or ONNX file, verified against it")
    p.add_argument("run_dir", help="the run folder (`transferkit train --out`)")
    p.add_argument("--out", required=True,
                   help="the SavedModel folder to write (for TF Serving: MODELS/NAME/1), a .tflite or an .onnx file")
    p.add_argument("--format", default="saved_model", choices=EXPORT_FORMATS, help="the file format")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="TFLite weights: none (float32), float16, dynamic (int8 weights), int8 (uint8 in and out; "
                        "needs --check or --calibration), int8-mixed (int8 but the layers it hurts most; float32 "
                        "in and out; needs --check or --calibration)")
    p.add_argument("--check", help="DIR/<class>/<images> with the run's classes to verify on (default: the "
                                   "validation images kept with the run; random pixels for runs saved without them)")
    p.add_argument("--calibration", help="DIR/<class>/<images> like the training data, for --quantize int8 or "
                                         "int8-mixed (default: --check)")
    p.add_argument("--calibration-images", type=int, default=300, help="at most this many calibration images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _train_options(p: argparse.ArgumentParser) -> None:
    # Options default to None so that a --config file can set them; the help says what None means.
    p.add_argument("data_dir", nargs="?", help="folder of class sub-folders (or data_dir in --config)")
    p.add_argument("--config", help="a .toml or .yaml file with any of the options below")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--weights", help="'imagenet', 'none' or a weights file (default: imagenet)")
    p.add_argument("--epochs", type=int,
                   help="head-training epochs; giving it trains the head with the optimizer (default: the linear "
                        f"head is solved where it can be, on up to {SOLVE_MAX_IMAGES:,} training images, else "
                        f"trained for {HEAD_EPOCHS} epochs)")
    p.add_argument("--learning-rate", type=float,
                   help=f"learning rate of a trained head (default: {HEAD_LEARNING_RATE:g})")
    p.add_argument("--fine-tune-epochs", type=int,
                   help=f"fine-tuning epochs (default: {FINE_TUNE_EPOCHS}; 0 skips fine-tuning)")
    p.add_argument("--fine-tune-learning-rate", type=float,
                   help=f"peak learning rate of the fine-tune phase (default: {FINE_TUNE_LEARNING_RATE:g})")
    p.add_argument("--unfreeze-blocks", type=int,
                   help=f"blocks to unfreeze when fine-tuning (default: {FINE_TUNE_UNFREEZE_BLOCKS})")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--batch-size", type=int, help=f"images per batch (default: {BATCH_SIZE})")
    p.add_argument("--validation-split", type=float,
                   help=f"fraction of the images held out for validation (default: {VALIDATION_SPLIT:g})")
    p.add_argument("--augment", action="store_true", default=None, help="random flips, rotation, zoom, contrast")
    p.add_argument("--balanced", action="store_true", default=None, help="weight classes by inverse frequency")
    p.add_argument("--keep-last", action="store_true", default=None,
                   help="keep the last epoch's weights instead of the best validated phase end's")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of both phases (default: 0)")
    p.add_argument("--mix", choices=["mixup", "cutmix"], help="MixUp or CutMix in the fine-tune phase (default: none)")
    p.add_argument("--lr-decay", type=float,
                   help="discriminative learning rates in the fine-tune phase: each lower block group trains at "
                        "this factor times the rate of the one above (default: 1)")
    p.add_argument("--gradual", action="store_true", default=None,
                   help="fine-tune with gradual unfreezing: one more block per stage")
    p.add_argument("--heads", type=int,
                   help="copies of a linear head trained side by side in the head phase and averaged into one "
                        f"(default: {HEAD_COPIES}; 1 trains one)")
    solve = p.add_mutually_exclusive_group()
    solve.add_argument("--solve-head", dest="solve_head", action="store_true", default=None,
                       help="solve the linear head on the cached features (softmax regression, L2 strength by "
                            "5-fold cross-validation) instead of training it; the default solves it on up to "
                            f"{SOLVE_MAX_IMAGES:,} training images")
    solve.add_argument("--train-head", dest="solve_head", action="store_false", default=None,
                       help="train the head with the optimizer for --epochs instead of solving it")
    p.add_argument("--no-calibration", dest="calibrate", action="store_false", default=None,
                   help="skip temperature scaling of the probabilities")
    p.add_argument("--refit", choices=["auto", "always", "never"],
                   help="train again on training + validation images for the epochs kept (default: auto, up to "
                        f"{REFIT_MAX_IMAGES} images)")
    p.add_argument("--seed", type=int, help=f"seeds the split, the shuffling and the training (default: {SEED})")
    p.add_argument("--out", help="folder for the model, labels, metrics and plots (default: run); running the "
                                 "same command again after a kill resumes from the last epoch")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming an interrupted run")
    p.add_argument("--cluster-timeout", type=float, metavar="SECONDS",
                   help="with TF_CONFIG naming a cluster: how long a worker waits for the others to start (and at "
                        f"the other points where they meet outside training) before it stops (default: "
                        f"{CLUSTER_TIMEOUT:g})")
    p.add_argument("--cache", metavar="DIR", help="keep the head phase's backbone features in this folder and "
                                                  "load them from it (filled by an earlier run or by `transferkit "
                                                  "extract`; default: they last as long as the run)")
    p.add_argument("--distribute", choices=["none", "mirrored"],
                   help="mirrored: train on every local GPU at once (tf.distribute.MirroredStrategy; --batch-size "
                        "is the global batch; default: none)")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="compute in float16, keep variables float32 (Keras mixed_float16; for GPUs: slower on a CPU)")
    p.add_argument("--xla", action="store_true", default=None,
                   help="compile the training and prediction steps with XLA (jit_compile=True; without it Keras "
                        "decides: off on a CPU, on with a GPU)")


def _extract_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", nargs="?", help="folder of class sub-folders (or data_dir in --config)")
    p.add_argument("--config", help="train's .toml or .yaml file (options that do not change the features are "
                                    "ignored)")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--weights", help="'imagenet', 'none' or a weights file (default: imagenet)")
    p.add_argument("--cache", metavar="DIR", help="the feature cache folder (created if missing), shared by the shards")
    p.add_argument("--shard", metavar="I/N", help="extract only shard I of N (0 <= I < N): a contiguous block of "
                                                  "each split; the process that completes the set merges it")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--batch-size", type=int, help="as given to train: images go through the network 4x this many "
                                                  f"at a time (at most 128), and shards are whole such batches "
                                                  f"(default: {BATCH_SIZE})")
    p.add_argument("--validation-split", type=float,
                   help=f"as given to train (default: {VALIDATION_SPLIT:g})")
    p.add_argument("--refit", choices=["auto", "always", "never"],
                   help="as given to train: also extract the features of the refit on all images (default: auto, "
                        f"up to {REFIT_MAX_IMAGES} images)")
    p.add_argument("--seed", type=int, help=f"as given to train (default: {SEED})")


def _tune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="folder of class sub-folders")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--max-trials", type=int, default=MAX_TRIALS, help="trials in the search")
    p.add_argument("--tuner", default=TUNERS[0], choices=TUNERS, help="keras-tuner's search algorithm")
    p.add_argument("--epochs", type=int, default=SEARCH_EPOCHS, help="head-training epochs per trial")
    p.add_argument("--fine-tune", action="store_true", help="also search the fine-tune depth and learning rate")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--batch-size", type=int, help=f"images per batch (default: {BATCH_SIZE})")
    p.add_argument("--seed", type=int, help=f"seeds the split, the search and the training (default: {SEED})")
    p.add_argument("--out", default="tune", help="run folder; running again on it resumes the search")
    p.add_argument("--cache", metavar="DIR", help="keep the backbone features in this folder and load them from it "
                                                  "(default: in memory; in a distributed search OUT/features, which "
                                                  "the workers share)")
    p.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT, metavar="SECONDS",
                   help="distributed search (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
                        "set): the chief fails the trial of a worker it has not heard from for this long, and a "
                        f"worker gives up on a chief that does not answer for this long (default: {WORKER_TIMEOUT:g})")


def _tta_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", type=int, default=0,
                   help="test-time augmentation: average over the image and N augmented copies (default: 0, off)")
    p.add_argument("--no-flip", action="store_true", help="no flips in the --tta copies (text, digits, …)")
