"""``transferkit tune``: a keras-tuner search, alone or as the chief or a worker of a distributed one."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit._defaults import DEFAULT_BACKBONE
from transferkit.cli._features import feature_cache, features_line
from transferkit.cli._options import UsageError, weights

if TYPE_CHECKING:
    from transferkit import BackboneSpec, FeatureCache, ImageData, SearchResult
    from transferkit._tuning import Distributed


def tune(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit._atomic import RunLock, remove_stale_temporaries
    from transferkit._tuning import Distributed

    distributed = Distributed.from_environment()  # keras-tuner's variables: chief or worker, else None
    if not args.worker_timeout > 0:
        raise UsageError(f"--worker-timeout {args.worker_timeout:g}: expected a number of seconds above 0.")
    spec = tk.get_backbone(args.backbone or DEFAULT_BACKBONE)
    chosen_weights = weights(args.weights)
    seeded = {} if args.seed is None else {"seed": args.seed}  # else the library's default seed
    options = {"image_size": args.image_size or spec.input_size, **seeded}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    out = Path(args.out)
    # Distributed, the workers share one disk cache: the first extracts the features, the others load them.
    folder = args.cache if args.cache is not None else out / "features" if distributed is not None else None
    cache = feature_cache(folder) if folder is not None else tk.FeatureCache()
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
            return _search(args, data, spec, chosen_weights, seeded, out, cache, distributed)
    with RunLock(out):  # a second `transferkit tune --out` (or chief) on this folder stops with one line
        if distributed is None:  # (a chief's workers may be writing temporaries in out/ right now)
            remove_stale_temporaries(out)
        return _search(args, data, spec, chosen_weights, seeded, out, cache, distributed)


def _search(args: argparse.Namespace, data: ImageData, spec: BackboneSpec, chosen_weights: str | None,
            seeded: dict[str, Any], out: Path, cache: FeatureCache, distributed: Distributed | None) -> int:
    import transferkit as tk

    what = (f"a {args.tuner} search of {args.max_trials} trials over the head"
            f"{' and the fine-tune depth' if args.fine_tune else ''} of {spec.name} ({out / 'search'})")
    if distributed is None:
        print(f"{'Resuming' if (out / 'search').is_dir() else 'Starting'} {what}")
    elif distributed.chief:
        print(f"Chief of {what}: serving the oracle on {distributed.address} to the workers, which run this same "
              "command with their own KERASTUNER_TUNER_ID (tuner0, tuner1, …)")
    else:
        print(f"Worker {distributed.tuner_id} of {what}: asking the chief at {distributed.address} for trials")
    result = tk.search(data, spec, weights=chosen_weights, max_trials=args.max_trials, tuner=args.tuner,
                       epochs=args.epochs, fine_tune=args.fine_tune, directory=out / "search", cache=cache,
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
    _plot_scores(result, out / "search_scores.png")
    print(f"Best trial: validation accuracy {result.best_score:.4f} with "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in result.best_values.items() if not k.startswith("tuner/")))
    best = result.best_tuner(cache=cache)
    if cache.directory is not None:
        line = features_line(cache, {"refit": "auto", "weights": args.weights}, spec, data, best.settings.head_phase)
        print(f"Retraining the best trial. {line}")
    best.fit(data, verbose=0)
    best.save(out)
    best.write_report(data, out)
    print(f"Retrained the best trial and saved it with its report, trials.csv and search_scores.png to {out}")
    return 0


def _plot_scores(result: SearchResult, path: Path) -> None:
    """search_scores.png: the one place this command hands a search's trials to the report module."""
    from transferkit.report import plot_scores

    plot_scores(result.rows, path)
