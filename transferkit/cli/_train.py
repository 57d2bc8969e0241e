"""``transferkit train``, ``extract`` and ``lr-find``: the commands that train on (or prepare) a data folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit._defaults import CLUSTER_TIMEOUT, DEFAULT_BACKBONE
from transferkit.cli._features import feature_cache, features_line, head_feature_sets, images
from transferkit.cli._options import UsageError, flag, train_options, weights
from transferkit.cli._recipe import finetuner_options, phases_from_options

if TYPE_CHECKING:
    from transferkit import BackboneSpec, FeatureCache, FineTuner, ImageData, Phase


def training_data(options: dict[str, Any]) -> tuple[BackboneSpec, ImageData]:
    """The backbone and the data of a train (or extract) command."""
    import transferkit as tk

    spec = tk.get_backbone(options["backbone"] or DEFAULT_BACKBONE)
    data = tk.load_folder(options["data_dir"], augment=tk.Augment() if flag(options, "augment") else None,
                          progress=True, **pipeline_options(options, spec))
    return spec, data


def pipeline_options(options: dict[str, Any], spec: BackboneSpec) -> dict[str, Any]:
    """The loader keywords the user set; the rest keep PipelineSettings' defaults."""
    chosen = {"image_size": options["image_size"] or spec.input_size}
    for key in ("batch_size", "validation_split", "seed"):
        if options.get(key) is not None:
            chosen[key] = options[key]
    return chosen


def train(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit._multiworker import cluster_spec, describe_task, is_chief, others, strategy_from_environment
    from transferkit._run_folder import checkpoint_folder

    o = train_options(args)
    # TF_CONFIG naming a cluster: every worker runs this command; the strategy comes first, before
    # TensorFlow runs anything else, and only the chief writes RUN_DIR (train_run sees to that)
    cluster = cluster_spec()
    timeout = args.cluster_timeout if args.cluster_timeout is not None else CLUSTER_TIMEOUT
    if cluster is not None:
        if timeout <= 0:
            raise UsageError(f"--cluster-timeout {args.cluster_timeout:g}: give a number of seconds above 0.")
        me = describe_task(cluster["task"]["type"], int(cluster["task"]["index"]), cluster)
        print(f"Multi-worker training (TF_CONFIG): {me} waits up to {timeout:g} s for the rest of the cluster: "
              f"{others(cluster)}", flush=True)
    strategy = strategy_from_environment(timeout=timeout) if cluster is not None else None
    chief = cluster is None or is_chief(cluster)
    cache = feature_cache(o["cache"]) if o["cache"] is not None else None
    # the phases and settings first: a bad value is reported before the images are scanned
    head_phase, fine_phase = phases_from_options(o)
    chosen = finetuner_options(o)
    spec, data = training_data(o)
    tuner = tk.FineTuner(spec, weights=weights(str(o["weights"])), head_phase=head_phase,
                         fine_tune_phase=fine_phase, seed=data.settings.seed,
                         cache=cache if cache is not None else True,
                         distribute=strategy or (None if o["distribute"] in (None, "none") else str(o["distribute"])),
                         **chosen)
    if cluster is not None:
        task = cluster["task"]
        print(f"Multi-worker training (TF_CONFIG): this is {task['type']} {task['index']}; "
              + (f"it writes {o['out']}" if chief else "the chief writes the run, this worker keeps nothing"))

    def starting(resumed_from: str | None) -> None:
        # the run folder is locked now: say where the fit starts, then what it trains on
        if resumed_from is not None and chief:
            print(f"Resuming from {resumed_from} (checkpoint in {checkpoint_folder(o['out'])}; --restart starts "
                  "over)")
        elif resumed_from is not None:
            print(f"Resuming from {resumed_from}, as the chief does (from the chief's checkpoint)")
        _describe_training(tuner, spec, data, cache, o, head_phase)

    run = tk.train_run(tuner, data, o["out"], restart=args.restart, on_start=starting, cluster_timeout=timeout)
    _describe_result(tuner, run.metrics)
    print(f"Saved the model, metrics.json and plots to {run.path}" if run.written
          else "Done; the chief saved the run.")
    return 0


def _describe_training(tuner: FineTuner, spec: BackboneSpec, data: ImageData, cache: FeatureCache | None,
                       options: dict[str, Any], head_phase: Phase) -> None:
    """The lines train prints before the first epoch: the data, the devices, the features."""
    print(f"Training {spec.name} on {data.num_train} images ({data.num_validation} for validation), "
          f"classes: {', '.join(data.class_names)}")
    if tuner.strategy is not None:
        import tensorflow as tf

        devices = ", ".join(tuner.strategy.extended.worker_devices)
        kind = ("MultiWorkerMirroredStrategy"  # TensorFlow's class is called CollectiveAllReduceStrategy
                if isinstance(tuner.strategy, tf.distribute.MultiWorkerMirroredStrategy)
                else type(tuner.strategy).__name__)
        print(f"Distributed with {kind} over {tuner.strategy.num_replicas_in_sync} "
              f"replica(s) ({devices}); a batch of {data.settings.batch_size} is split between them")
    if cache is not None:
        print(features_line(cache, options, spec, data, head_phase))


def _describe_result(tuner: FineTuner, metrics: dict[str, Any]) -> None:
    """What the fit did besides training: the solved head, the epoch kept, the refit, the calibration."""
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


def extract(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit.cli._options import shard as parse_shard

    shard = parse_shard(args.shard) if args.shard is not None else None
    o = train_options(args, command="extract")
    if o["cache"] is None:
        raise UsageError("extract: give --cache DIR (or cache in --config), the folder to store the features in; "
                         "`transferkit train … --cache DIR` then loads them.")
    cache = feature_cache(o["cache"])
    spec, data = training_data(o)
    found = head_feature_sets(o, spec, data, tk.HEAD_PHASE.policy)
    if found is None:
        raise UsageError("extract: with augment, `transferkit train` trains the head on new augmented images "
                         "every epoch, so it caches no features and there is nothing to extract. Drop augment "
                         "(--config), or train without --cache.")
    extractor, sets = found
    share = f"shard {shard[0]}/{shard[1]} of " if shard is not None else ""
    print(f"Extracting {share}the {spec.name} features that `transferkit train` trains its head on "
          f"({images(sets)}) into {cache.directory}")
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


def lr_find(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit._atomic import write_text_atomic
    from transferkit.report import plot_lr_find

    spec = tk.get_backbone(args.backbone or DEFAULT_BACKBONE)
    options: dict[str, Any] = {"image_size": args.image_size or spec.input_size}
    for key in ("batch_size", "seed"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    chosen_weights = weights(args.weights)
    if args.steps < 2:
        raise UsageError(f"--steps {args.steps}: a sweep needs at least 2 steps.")
    fine = tk.FINE_TUNE_PHASE
    if args.unfreeze_blocks is not None:
        fine = dataclasses.replace(fine, policy=tk.UnfreezeTop(args.unfreeze_blocks))
    data = tk.load_folder(args.data_dir, progress=True, **options)
    tuner = tk.FineTuner(spec, weights=chosen_weights, seed=data.settings.seed, fine_tune_phase=fine)
    phase = args.phase.replace("-", "_")
    if phase == "fine_tune":  # fine-tuning starts from a trained head: sweep from one
        print(f"Training the head first ({tuner.settings.head_phase.epochs} epochs), as `transferkit train` does")
        tuner.train_head(data, verbose=0)
    print(f"Sweeping the learning rate of the {args.phase} phase of {spec.name} over {args.steps} batches "
          f"({data.num_train} training images)")
    result = tuner.find_lr(data, phase=phase, steps=args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, out / "lr_find.png")
    write_text_atomic(out / "lr_find.json", json.dumps(result.to_dict(), indent=2))
    print(f"suggested learning rate: {result.suggestion:.3g}")
    flag_name = "--learning-rate" if phase == "head" else "--fine-tune-learning-rate"
    print(f"Wrote {out / 'lr_find.png'} and lr_find.json; pass it to `transferkit train` as {flag_name}")
    return 0
