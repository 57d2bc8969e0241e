"""The ``transferkit`` command.

    transferkit backbones [--filter TEXT] [--json]
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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from transferkit import BackboneSpec, FeatureCache, FreezePolicy, ImageData, Phase
    from transferkit._cache_plan import FeatureSet
    from transferkit._tuning import Distributed

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from transferkit._atomic import RunLock, remove_stale_temporaries, write_text_atomic
from transferkit._finetuner import DEFAULT_BACKBONE, REFIT_MAX_IMAGES
from transferkit._multiworker import cluster_spec, is_chief, strategy_from_environment

CHECKPOINT_DIR = "checkpoint"  # in RUN_DIR while `transferkit train` runs: what a rerun resumes from


class _UsageError(Exception):
    pass


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _cmd_backbones(args: argparse.Namespace) -> int:
    import transferkit as tk

    rows = [tk.get_backbone(n).describe() for n in tk.list_backbones(args.filter, include_test=args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(_backbone_markdown(rows))
    else:
        print(_table(rows, ("name", "family", "input_size", "params", "feature_dim", "preprocessing")))
        print(f"\n{len(rows)} backbones")
    return 0


def _backbone_markdown(rows: list[dict[str, Any]]) -> str:
    """The backbone table as Markdown (docs/backbones.md holds this output)."""
    lines = ["| name | family | input size | parameters | feature size | preprocessing | constructor |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{r['name']}` | {r['family']} | {r['input_size']} | {r['params']} | {r['feature_dim']} | "
              f"{r['preprocessing']} | `{r['description']}` |" for r in rows]
    return "\n".join(lines)


def _weights(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value != "imagenet" and not Path(value).is_file():
        raise _UsageError(f"--weights {value!r}: expected 'imagenet', 'none' or an existing weights file.")
    return value


def _train_defaults() -> dict[str, Any]:
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


TRAIN_OPTIONS = tuple(_train_defaults())


def _read_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise _UsageError(f"--config {path!r}: file not found.")
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
            raise _UsageError(f"--config {path!r}: expected a .toml, .yaml or .yml file.")
    except _UsageError:
        raise
    except Exception as error:  # a parse error of either format
        raise _UsageError(f"--config {path!r} cannot be parsed: {error}".replace("\n", " ")) from None
    if not isinstance(config, dict):
        raise _UsageError(f"--config {path!r}: expected a table of options at the top level.")
    options = {key.replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(options) - set(TRAIN_OPTIONS) - {"data_dir"})
    if unknown:
        raise _UsageError(f"--config {path!r}: unknown option(s) {unknown}. Known: {sorted(TRAIN_OPTIONS)}.")
    return options


def _train_options(args: argparse.Namespace, *, command: str = "train") -> dict[str, Any]:
    """Command-line flags over the config file over the defaults (``extract`` reads train's options)."""
    config = _read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in TRAIN_OPTIONS and v is not None}
    options = {**_train_defaults(), **config, **given}
    options["data_dir"] = args.data_dir or config.get("data_dir")
    if not options["data_dir"]:
        raise _UsageError(f"{command}: give DATA_DIR on the command line or data_dir in --config.")
    return options


def _training_data(options: dict[str, Any]) -> tuple[BackboneSpec, ImageData]:
    """The backbone and the data of a train (or extract) command."""
    import transferkit as tk

    spec = tk.get_backbone(options["backbone"] or DEFAULT_BACKBONE)
    data = tk.load_folder(options["data_dir"], augment=tk.Augment() if _flag(options, "augment") else None,
                          progress=True, **_pipeline_options(options, spec))
    return spec, data


def _feature_cache(value: Any) -> FeatureCache:
    """--cache DIR as a FeatureCache on that folder (created here), or a one-line usage error."""
    import transferkit as tk

    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise _UsageError(f"cache = {value!r}: expected the path of a folder for the feature cache.")
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise _UsageError(f"--cache {str(value)!r} is a file, not a folder: give a folder for the feature cache "
                          "(it is created if missing).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied")
    except OSError as error:
        raise _UsageError(f"--cache {str(value)!r}: cannot write to this folder ({error.strerror or error}). "
                          "Choose another folder.") from None
    return tk.FeatureCache(folder)


def _shard(value: str) -> tuple[int, int]:
    """--shard I/N as ``(I, N)``: this process's share, numbered from 0."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if match is None:
        raise _UsageError(f"--shard {value!r}: expected I/N, this process's shard I of N numbered from 0 "
                          "(--shard 0/4, --shard 1/4, … --shard 3/4).")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        shards = f"--shard 0/{count} … --shard {count - 1}/{count}" if count > 1 else "--shard 0/1"
        raise _UsageError(f"--shard {value}: expected I/N with N >= 1 and 0 <= I < N; shards are numbered from "
                          f"0 ({shards}).")
    return index, count


def _head_feature_sets(options: dict[str, Any], spec: BackboneSpec, data: ImageData, policy: FreezePolicy
                       ) -> tuple[keras.Model, list[FeatureSet]] | None:
    """The extractor and feature arrays of train's head phase (and its refit), or None (augmented data)."""
    from transferkit._cache_plan import head_feature_sets

    choice = _refit_choice(options["refit"])
    refit = choice is True or (choice == "auto" and data.num_train + data.num_validation <= REFIT_MAX_IMAGES)
    return head_feature_sets(spec, weights=_weights(str(options["weights"])), data=data, policy=policy,
                             refit=refit)


def _images(sets: Sequence[FeatureSet]) -> str:
    return " + ".join(f"{s.count} {s.name}" for s in sets) + " images"


def _features_line(cache: FeatureCache, options: dict[str, Any], spec: BackboneSpec, data: ImageData,
                   head_phase: Phase) -> str:
    """What `train --cache` does about the head phase's features: load them, or extract and store them."""
    where = f"cache {cache.directory}"
    head = "Features for the head phase:"
    if head_phase.epochs == 0:
        return f"{head} none from {where}: the head phase runs no epochs"
    found = _head_feature_sets(options, spec, data, head_phase.policy)
    if found is None:
        return f"{head} none from {where}: with augment the head trains on new augmented images every epoch"
    sets = found[1]
    loaded = [s for s in sets if cache.get(s.key) is not None]  # get() merges a complete set of shards
    missing = [s for s in sets if s not in loaded]
    if not missing:
        return f"{head} loaded from {where} ({_images(loaded)}), no extraction"
    line = (f"{head} loaded {_images(loaded)} from {where}; extracting {_images(missing)} and storing them there"
            if loaded else f"{head} extracting {_images(missing)} and storing them in {where}")
    partial = [f"{s.name}: shards {', '.join(map(str, present))} of {count}"
               for s in missing for count, present in cache.shards(s.key).items()]
    if partial:
        line += f" (an incomplete set of shards is not used — {'; '.join(partial)})"
    return line


def _pipeline_options(options: dict[str, Any], spec: BackboneSpec) -> dict[str, Any]:
    """The loader keywords the user set; the rest keep PipelineSettings' defaults."""
    chosen = {"image_size": options["image_size"] or spec.input_size}
    for key in ("batch_size", "validation_split", "seed"):
        if options.get(key) is not None:
            chosen[key] = options[key]
    return chosen


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import transferkit as tk

    o = _train_options(args)
    # TF_CONFIG naming a cluster: every worker runs this command; the strategy comes first, before
    # TensorFlow runs anything else, and only the chief writes RUN_DIR
    cluster = cluster_spec()
    strategy = strategy_from_environment() if cluster is not None else None
    chief = cluster is None or is_chief(cluster)
    cache = _feature_cache(o["cache"]) if o["cache"] is not None else None
    # the phases and settings first: a bad value is reported before the images are scanned
    head_phase = tk.HEAD_PHASE
    if o["epochs"] is not None:
        head_phase = dataclasses.replace(head_phase, epochs=o["epochs"])
    if o["learning_rate"] is not None:
        head_phase = dataclasses.replace(head_phase, learning_rate=o["learning_rate"])
    fine = tk.FINE_TUNE_PHASE
    if o["fine_tune_epochs"] is not None:
        fine = dataclasses.replace(fine, epochs=o["fine_tune_epochs"])
    if o["fine_tune_learning_rate"] is not None:
        fine = dataclasses.replace(fine, learning_rate=o["fine_tune_learning_rate"])
    if o["unfreeze_blocks"] is not None:
        fine = dataclasses.replace(fine, policy=tk.UnfreezeTop(o["unfreeze_blocks"]))
    if o["label_smoothing"] is not None:
        head_phase = dataclasses.replace(head_phase, label_smoothing=_number(o, "label_smoothing"))
        fine = dataclasses.replace(fine, label_smoothing=_number(o, "label_smoothing"))
    if o["mix"] is not None:  # the fine-tune phase only: the head phase keeps training on cached features
        fine = dataclasses.replace(fine, mix=str(o["mix"]))
    if o["lr_decay"] is not None:
        fine = dataclasses.replace(fine, lr_decay=_number(o, "lr_decay"))
    if _flag(o, "gradual"):
        fine = dataclasses.replace(fine, gradual=True)
    if o["heads"] is not None:
        head_phase = dataclasses.replace(head_phase, heads=o["heads"])
    if o["solve_head"] is None and any(o[key] is not None for key in ("epochs", "learning_rate", "heads")):
        head_phase = dataclasses.replace(head_phase, solve=False)  # asked for an optimizer's head phase: train it
    if o["solve_head"] is not None:
        if o["solve_head"] not in (True, False, "auto") or not isinstance(o["solve_head"], (bool, str)):
            raise _UsageError(f'solve_head = {o["solve_head"]!r}: expected true, false or "auto".')
        head_phase = dataclasses.replace(head_phase, solve=o["solve_head"])
    chosen: dict[str, Any] = dict(
        class_weight="balanced" if _flag(o, "balanced") else None, keep_best=not _flag(o, "keep_last"),
        refit=_refit_choice(o["refit"]), temperature_scaling=_flag(o, "calibrate"),
        mixed_precision=_flag(o, "mixed_precision"), jit_compile=True if _flag(o, "xla") else "auto")
    spec, data = _training_data(o)
    tuner = tk.FineTuner(spec, weights=_weights(str(o["weights"])), head_phase=head_phase,
                         fine_tune_phase=fine if fine.epochs else None, seed=data.settings.seed,
                         cache=cache if cache is not None else True,
                         distribute=strategy or (None if o["distribute"] in (None, "none") else str(o["distribute"])),
                         **chosen)
    if cluster is not None:
        task = cluster["task"]
        print(f"Multi-worker training (TF_CONFIG): this is {task['type']} {task['index']}; "
              + (f"it writes {o['out']}" if chief else "the chief writes the run, this worker keeps nothing"))
    out = Path(o["out"]) if chief else Path(tempfile.mkdtemp(prefix="transferkit-worker-"))
    try:
        return _train_into(args, tuner, data, spec, o, out, cache, head_phase, chief)
    finally:
        if not chief:  # it trained in step with the chief (same steps, saves and report) into a scratch folder
            shutil.rmtree(out, ignore_errors=True)


def _train_into(args: argparse.Namespace, tuner: Any, data: Any, spec: BackboneSpec, o: dict[str, Any], out: Path,
                cache: Any, head_phase: Any, chief: bool) -> int:
    with RunLock(out):  # a second `transferkit train --out` on this folder stops with one line
        remove_stale_temporaries(out)  # half-written files of a killed run: never loaded, removed
        checkpoint = out / CHECKPOINT_DIR
        resume = None if args.restart else tuner.resume_point(checkpoint, data)
        if resume is not None:
            print(f"Resuming from {resume} (checkpoint in {checkpoint}; --restart starts over)")
        print(f"Training {spec.name} on {data.num_train} images ({data.num_validation} for validation), "
              f"classes: {', '.join(data.class_names)}")
        if tuner.strategy is not None:
            devices = ", ".join(tuner.strategy.extended.worker_devices)
            import tensorflow as tf

            kind = ("MultiWorkerMirroredStrategy"  # TensorFlow's class is called CollectiveAllReduceStrategy
                    if isinstance(tuner.strategy, tf.distribute.MultiWorkerMirroredStrategy)
                    else type(tuner.strategy).__name__)
            print(f"Distributed with {kind} over {tuner.strategy.num_replicas_in_sync} "
                  f"replica(s) ({devices}); a batch of {data.settings.batch_size} is split between them")
        if cache is not None:
            print(_features_line(cache, o, spec, data, head_phase))
        tuner.fit(data, checkpoint_dir=checkpoint, restart=args.restart)
        tuner.save(out)
        metrics = tuner.write_report(data, out)
        (checkpoint / "state.json").unlink(missing_ok=True)  # first: a kill while deleting leaves no stale state
        shutil.rmtree(checkpoint, ignore_errors=True)  # everything is written: nothing left to resume
    solved = tuner.solutions.get("head")
    if solved is not None:
        how = (f"chosen by {solved.folds}-fold cross-validation" if solved.folds
               else "(too few images to cross-validate)")
        print(f"Solved the head on the backbone's features: softmax regression, C = {solved.c:g} {how}, "
              f"{solved.seconds:.1f} s.")
    if tuner.best_epoch is not None:
        print(f"Kept the weights of the best validated {tuner.best_epoch.describe()}.")
    if tuner.refitted is not None:
        print(f"Then {tuner.refitted.describe()}; the validation figures are those before the refit.")
    if tuner.calibration is not None:
        print(f"Calibrated the probabilities: {tuner.calibration.describe()}.")
    if "validation" in metrics:
        print(f"Validation accuracy: {metrics['validation']['accuracy']:.4f}")
    print(f"Saved the model, metrics.json and plots to {out}" if chief else "Done; the chief saved the run.")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    import transferkit as tk

    shard = _shard(args.shard) if args.shard is not None else None
    o = _train_options(args, command="extract")
    if o["cache"] is None:
        raise _UsageError("extract: give --cache DIR (or cache in --config), the folder to store the features in; "
                          "`transferkit train … --cache DIR` then loads them.")
    cache = _feature_cache(o["cache"])
    spec, data = _training_data(o)
    found = _head_feature_sets(o, spec, data, tk.HEAD_PHASE.policy)
    if found is None:
        raise _UsageError("extract: with augment, `transferkit train` trains the head on new augmented images "
                          "every epoch, so it caches no features and there is nothing to extract. Drop augment "
                          "(--config), or train without --cache.")
    extractor, sets = found
    share = f"shard {shard[0]}/{shard[1]} of " if shard is not None else ""
    print(f"Extracting {share}the {spec.name} features that `transferkit train` trains its head on "
          f"({_images(sets)}) into {cache.directory}")
    complete = True
    for features in sets:
        if shard is None:
            stored = cache.compute(features.key, extractor, features.batches(), features.count, progress=True)
            print(f"{features.name}: {features.count} images "
                  f"{'were in the cache already' if stored.hit else 'extracted and stored'}")
            continue
        rows = features.shard(*shard)
        state = cache.compute_shard(features.key, extractor, features.batches(rows) if len(rows) else (),
                                    shard=shard, rows=rows, total=features.count, progress=True)
        complete = complete and state.merged
        what = (f"images {rows.start}–{rows.stop - 1} of {features.count}" if len(rows) else
                f"no images (more shards than batches of {features.batch} of its {features.count})")
        if state.merged and not state.written:
            print(f"{features.name}: {features.count} images were in the cache already")
        elif state.merged:
            print(f"{features.name}: {what} extracted as shard {shard[0]}/{shard[1]}; every shard is there, so "
                  "they are merged into the cache")
        else:
            done = "extracted" if state.written else "were extracted already"
            print(f"{features.name}: {what} {done} as shard {shard[0]}/{shard[1]}; shards there: "
                  f"{', '.join(map(str, state.present))} of {shard[1]}")
    if complete:
        print(f"Every feature array is in {cache.directory}: `transferkit train {o['data_dir']} --cache "
              f"{cache.directory}` with the same options loads them without extracting.")
    else:
        print("The other shards are still to come: whichever process completes a set merges it (so does "
              "`transferkit train --cache` when it finds a complete set).")
    return 0


def _number(options: dict[str, Any], key: str) -> float:
    """A numeric option (from a flag or a config file), or a one-line usage error."""
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _UsageError(f"{key} = {value!r}: expected a number.")
    try:
        return float(value)
    except ValueError:
        raise _UsageError(f"{key} = {value!r}: expected a number.") from None


def _flag(options: dict[str, Any], key: str) -> bool:
    """A true/false option: flags give booleans; a config file must too (\"no\" is not false)."""
    value = options[key]
    if not isinstance(value, bool):
        raise _UsageError(f"{key} = {value!r}: expected true or false.")
    return value


def _refit_choice(value: Any) -> bool | str:
    """--refit auto|always|never (or a config file's true/false) as FineTuner's ``refit``."""
    choices: dict[Any, bool | str] = {"auto": "auto", "always": True, "never": False, True: True, False: False}
    if not isinstance(value, (str, bool)) or value not in choices:
        raise _UsageError(f"--refit {value!r}: expected auto, always or never.")
    return choices[value]


def _cmd_tune(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit._tuning import Distributed

    distributed = Distributed.from_environment()  # keras-tuner's variables: chief or worker, else None
    if not args.worker_timeout > 0:
        raise _UsageError(f"--worker-timeout {args.worker_timeout:g}: expected a number of seconds above 0.")
    spec = tk.get_backbone(args.backbone or DEFAULT_BACKBONE)
    weights = _weights(args.weights)
    seeded = {} if args.seed is None else {"seed": args.seed}  # else the library's default seed
    options = {"image_size": args.image_size or spec.input_size, **seeded}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    out = Path(args.out)
    # Distributed, the workers share one disk cache: the first extracts the features, the others load them.
    folder = args.cache if args.cache is not None else out / "features" if distributed is not None else None
    cache = _feature_cache(folder) if folder is not None else tk.FeatureCache()
    data = tk.load_folder(args.data_dir, progress=True, **options)
    if distributed is not None and not distributed.chief:
        # A worker writes only its trials' folders in RUN_DIR/search (and the shared cache), so RUN_DIR's
        # lock is the chief's; a lock per worker id keeps two workers from running as the same id (the
        # oracle would hand both the same trial).
        lock = RunLock(out / "search" / ".workers" / re.sub(r"[^\w.-]", "_", distributed.tuner_id))
        try:
            lock.acquire()
        except tk.RunInUseError:
            raise tk.RunInUseError(f"Another process is already worker {distributed.tuner_id} of the search in "
                                   f"{out} ({lock.directory} is locked): give each worker its own "
                                   "KERASTUNER_TUNER_ID (tuner0, tuner1, …).") from None
        with lock:
            return _search(args, data, spec, weights, seeded, out, cache, distributed)
    with RunLock(out):  # a second `transferkit tune --out` (or chief) on this folder stops with one line
        if distributed is None:  # (a chief's workers may be writing temporaries in out/ right now)
            remove_stale_temporaries(out)
        return _search(args, data, spec, weights, seeded, out, cache, distributed)


def _search(args: argparse.Namespace, data: Any, spec: BackboneSpec, weights: str | None, seeded: dict[str, Any],
            out: Path, cache: FeatureCache, distributed: Distributed | None) -> int:
    import transferkit as tk
    from transferkit.report import plot_scores

    what = (f"a {args.tuner} search of {args.max_trials} trials over the head"
            f"{' and the fine-tune depth' if args.fine_tune else ''} of {spec.name} ({out / 'search'})")
    if distributed is None:
        print(f"{'Resuming' if (out / 'search').is_dir() else 'Starting'} {what}")
    elif distributed.chief:
        print(f"Chief of {what}: serving the oracle on {distributed.address} to the workers, which run this same "
              "command with their own KERASTUNER_TUNER_ID (tuner0, tuner1, …)")
    else:
        print(f"Worker {distributed.tuner_id} of {what}: asking the chief at {distributed.address} for trials")
    result = tk.search(data, spec, weights=weights, max_trials=args.max_trials, tuner=args.tuner, epochs=args.epochs,
                       fine_tune=args.fine_tune, directory=out / "search", cache=cache,
                       worker_timeout=args.worker_timeout, **seeded)
    if result.role == "worker":
        trials = ", ".join(str(row["trial"]) for row in result.rows)
        seconds = sum(row["seconds"] for row in result.rows)
        features = result.features.describe() if result.features is not None else "no shared features"
        print(f"Worker {result.tuner_id} (pid {os.getpid()}) done: ran {len(result.rows)} trial(s)"
              f"{f' ({trials})' if trials else ''} in {seconds:.1f} s; {features}. The chief writes trials.csv "
              f"and the best model to {out}")
        return 0
    if result.features is not None:
        print(f"Features: {result.features.describe()}")
    print(result.table())
    result.write_csv(out / "trials.csv")
    plot_scores(result, out / "search_scores.png")
    print(f"Best trial: validation accuracy {result.best_score:.4f} with "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in result.best_values.items() if not k.startswith("tuner/")))
    best = result.best_tuner(cache=cache)
    if cache.directory is not None:
        line = _features_line(cache, {"refit": "auto", "weights": args.weights}, spec, data, best.head_phase)
        print(f"Retraining the best trial. {line}")
    best.fit(data, verbose=0)
    best.save(out)
    best.write_report(data, out)
    print(f"Retrained the best trial and saved it with its report, trials.csv and search_scores.png to {out}")
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    import dataclasses

    import transferkit as tk
    from transferkit.report import plot_lr_find

    spec = tk.get_backbone(args.backbone or DEFAULT_BACKBONE)
    options: dict[str, Any] = {"image_size": args.image_size or spec.input_size}
    for key in ("batch_size", "seed"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    weights = _weights(args.weights)
    if args.steps < 2:
        raise _UsageError(f"--steps {args.steps}: a sweep needs at least 2 steps.")
    fine = tk.FINE_TUNE_PHASE
    if args.unfreeze_blocks is not None:
        fine = dataclasses.replace(fine, policy=tk.UnfreezeTop(args.unfreeze_blocks))
    data = tk.load_folder(args.data_dir, progress=True, **options)
    tuner = tk.FineTuner(spec, weights=weights, seed=data.settings.seed, fine_tune_phase=fine)
    phase = args.phase.replace("-", "_")
    if phase == "fine_tune":  # fine-tuning starts from a trained head: sweep from one
        print(f"Training the head first ({tuner.head_phase.epochs} epochs), as `transferkit train` does")
        tuner.train_head(data, verbose=0)
    print(f"Sweeping the learning rate of the {args.phase} phase of {spec.name} over {args.steps} batches "
          f"({data.num_train} training images)")
    result = tuner.find_lr(data, phase=phase, steps=args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, out / "lr_find.png")
    write_text_atomic(out / "lr_find.json", json.dumps(result.to_dict(), indent=2))
    print(f"suggested learning rate: {result.suggestion:.3g}")
    flag = "--learning-rate" if phase == "head" else "--fine-tune-learning-rate"
    print(f"Wrote {out / 'lr_find.png'} and lr_find.json; pass it to `transferkit train` as {flag}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from transferkit._demo import run_demo

    run_demo(Path(args.out), per_class=args.per_class, image_size=args.image_size, seed=args.seed)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import transferkit as tk

    tuner = tk.FineTuner.load(args.run_dir)
    evaluation = tuner.evaluate(args.data_dir, **_tta(args))
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
        return 0
    print(f"accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}")
    rows = [{"class": name, **{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in m.items()}}
            for name, m in evaluation.per_class.items()]
    print(_table(rows, ("class", "precision", "recall", "f1", "support")))
    return 0


def _tta(args: argparse.Namespace) -> dict[str, Any]:
    """--tta N [--no-flip] as evaluate/predict keywords."""
    import transferkit as tk

    if args.tta < 0:
        raise _UsageError(f"--tta {args.tta}: expected the number of augmented views, 0 or more.")
    return {"tta": args.tta, "augment": tk.Augment(flip=None) if args.no_flip else None}


def _cmd_predict(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit.data._images import printable
    from transferkit.export import export_format, load_exported

    if export_format(args.run_dir) is not None:  # a SavedModel folder, a .tflite or .onnx file
        if args.tta:
            raise _UsageError(f"--tta {args.tta}: test-time augmentation needs the run folder; an exported "
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


def _cmd_export(args: argparse.Namespace) -> int:
    from transferkit.export import export_run

    report = export_run(args.run_dir, args.out, format=args.format, quantize=args.quantize, check=args.check,
                        calibration=args.calibration, calibration_images=args.calibration_images)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.describe())
    return 0


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    from transferkit import SkippedFilesWarning

    if issubclass(category, SkippedFilesWarning):
        print(f"warning: {message}", file=sys.stderr)


def _build_parser() -> argparse.ArgumentParser:
    from transferkit._demo import IMAGE_SIZE, PER_CLASS, SEED
    from transferkit._metrics import TOP_K
    from transferkit._tuning import EPOCHS, MAX_TRIALS, TUNERS, WORKER_TIMEOUT
    from transferkit.export import FORMATS as EXPORT_FORMATS
    from transferkit.export import QUANTIZATIONS

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
    p.add_argument("data_dir", nargs="?", help="folder of class sub-folders (or data_dir in --config)")
    p.add_argument("--config", help="a .toml or .yaml file with any of the options below")
    p.add_argument("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", help="'imagenet' (default), 'none' or a weights file")
    p.add_argument("--epochs", type=int, help="head-training epochs")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--fine-tune-epochs", type=int, help="fine-tuning epochs (0 skips fine-tuning)")
    p.add_argument("--fine-tune-learning-rate", type=float)
    p.add_argument("--unfreeze-blocks", type=int, help="blocks to unfreeze when fine-tuning")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--validation-split", type=float)
    p.add_argument("--augment", action="store_true", default=None, help="random flips, rotation, zoom, contrast")
    p.add_argument("--balanced", action="store_true", default=None, help="weight classes by inverse frequency")
    p.add_argument("--keep-last", action="store_true", default=None,
                   help="keep the last epoch's weights instead of the best validated phase end's")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of both phases (default 0)")
    p.add_argument("--mix", choices=["mixup", "cutmix"], help="MixUp or CutMix in the fine-tune phase")
    p.add_argument("--lr-decay", type=float,
                   help="discriminative learning rates in the fine-tune phase: each lower block group trains at "
                        "this factor times the rate of the one above (default 1)")
    p.add_argument("--gradual", action="store_true", default=None,
                   help="fine-tune with gradual unfreezing: one more block per stage")
    p.add_argument("--heads", type=int,
                   help="copies of a linear head trained side by side in the head phase and averaged into one "
                        "(default 5; 1 trains one)")
    solve = p.add_mutually_exclusive_group()
    solve.add_argument("--solve-head", dest="solve_head", action="store_true", default=None,
                       help="solve the linear head on the cached features (softmax regression, L2 strength by "
                            "5-fold cross-validation) instead of training it; the default solves it on up to "
                            "2,000 training images")
    solve.add_argument("--train-head", dest="solve_head", action="store_false", default=None,
                       help="train the head with the optimizer for --epochs instead of solving it")
    p.add_argument("--no-calibration", dest="calibrate", action="store_false", default=None,
                   help="skip temperature scaling of the probabilities")
    p.add_argument("--refit", choices=["auto", "always", "never"],
                   help="train again on training + validation images for the epochs kept (auto: up to "
                        f"{REFIT_MAX_IMAGES} images)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="folder for the model, labels, metrics and plots (default ./run); running the "
                                 "same command again after a kill resumes from the last epoch")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming an interrupted run")
    p.add_argument("--cache", metavar="DIR", help="keep the head phase's backbone features in this folder and "
                                                  "load them from it (filled by an earlier run or by `transferkit "
                                                  "extract`)")
    p.add_argument("--distribute", choices=["none", "mirrored"],
                   help="mirrored: train on every local GPU at once (tf.distribute.MirroredStrategy; --batch-size "
                        "is the global batch)")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="compute in float16, keep variables float32 (Keras mixed_float16; for GPUs: slower on a CPU)")
    p.add_argument("--xla", action="store_true", default=None,
                   help="compile the training and prediction steps with XLA (jit_compile=True; without it Keras "
                        "decides: off on a CPU, on with a GPU)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("extract", help="store the features `train --cache DIR` trains its head on, in parallel "
                                       "with --shard I/N")
    p.add_argument("data_dir", nargs="?", help="folder of class sub-folders (or data_dir in --config)")
    p.add_argument("--config", help="train's .toml or .yaml file (options that do not change the features are "
                                    "ignored)")
    p.add_argument("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", help="'imagenet' (default), 'none' or a weights file")
    p.add_argument("--cache", metavar="DIR", help="the feature cache folder (created if missing), shared by the shards")
    p.add_argument("--shard", metavar="I/N", help="extract only shard I of N (0 <= I < N): a contiguous block of "
                                                  "each split; the process that completes the set merges it")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, help="as given to train: images go through the network 4x this many "
                                                  "at a time (at most 128), and shards are whole such batches")
    p.add_argument("--validation-split", type=float)
    p.add_argument("--refit", choices=["auto", "always", "never"],
                   help="as given to train: also extract the features of the refit on all images (auto: up to "
                        f"{REFIT_MAX_IMAGES} images)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("tune", help="search the head (and fine-tune depth) with keras-tuner")
    p.add_argument("data_dir")
    p.add_argument("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--max-trials", type=int, default=MAX_TRIALS)
    p.add_argument("--tuner", default=TUNERS[0], choices=TUNERS)
    p.add_argument("--epochs", type=int, default=EPOCHS, help="head-training epochs per trial")
    p.add_argument("--fine-tune", action="store_true", help="also search the fine-tune depth and learning rate")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="tune", help="run folder; running again on it resumes the search")
    p.add_argument("--cache", metavar="DIR", help="keep the backbone features in this folder and load them from it "
                                                  "(default: in memory; in a distributed search OUT/features, which "
                                                  "the workers share)")
    p.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT, metavar="SECONDS",
                   help="distributed search (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
                        "set): the chief fails the trial of a worker it has not heard from for this long, and a "
                        f"worker gives up on a chief that does not answer for this long (default {WORKER_TIMEOUT:g})")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("lr-find", help="sweep the learning rate and suggest one (writes lr_find.png)")
    p.add_argument("data_dir")
    p.add_argument("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--phase", default="head", choices=["head", "fine-tune"], help="which phase's learning rate")
    p.add_argument("--steps", type=int, default=100, help="batches in the sweep")
    p.add_argument("--unfreeze-blocks", type=int, help="blocks the fine-tune phase unfreezes (default 2)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="lr_find", help="folder for lr_find.png and lr_find.json")
    p.set_defaults(func=_cmd_lr_find)

    p = sub.add_parser("demo", help="the whole job offline: fine-tune the shipped MobileNet on shipped photos")
    p.add_argument("--out", default="transferkit-demo", help="folder for the data, the run and its report")
    p.add_argument("--per-class", type=int, default=PER_CLASS, help=f"images per class (at most {PER_CLASS})")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--seed", type=int, default=SEED)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="metrics of a saved run on DATA_DIR/<class>/<images>")
    p.add_argument("run_dir")
    p.add_argument("data_dir")
    _tta_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top classes of an image or a folder of images")
    p.add_argument("run_dir",
                   help="a run folder, or an export of one: a SavedModel folder, a .tflite or an .onnx file")
    p.add_argument("images")
    p.add_argument("--top-k", type=int, default=TOP_K)
    _tta_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write a saved run as a SavedModel, TFLite or ONNX file, verified against it")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True,
                   help="the SavedModel folder to write (for TF Serving: MODELS/NAME/1), a .tflite or an .onnx file")
    p.add_argument("--format", default="saved_model", choices=EXPORT_FORMATS)
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="TFLite weights: none (float32), float16, dynamic (int8 weights), int8 (uint8 in and out; "
                        "needs --check or --calibration), int8-mixed (int8 but the layers it hurts most; float32 "
                        "in and out; needs --check or --calibration)")
    p.add_argument("--check", help="DIR/<class>/<images> with the run's classes to verify on (default: random pixels)")
    p.add_argument("--calibration", help="DIR/<class>/<images> like the training data, for --quantize int8 or "
                                         "int8-mixed (default: --check)")
    p.add_argument("--calibration-images", type=int, default=300, help="at most this many calibration images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_export)
    return parser


def _tta_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", type=int, default=0,
                   help="test-time augmentation: average over the image and N augmented copies (default 0: off)")
    p.add_argument("--no-flip", action="store_true", help="no flips in the --tta copies (text, digits, …)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from transferkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from transferkit import TransferkitError

    handler = logging.StreamHandler(sys.stderr)  # the library's warnings (a diverged phase, …) as one line each
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    library_log = logging.getLogger("transferkit")
    library_log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except (TransferkitError, _UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command again to resume from the last epoch" if args.command == "train" else ""
        print(f"error: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        library_log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
