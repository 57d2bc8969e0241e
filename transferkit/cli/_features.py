"""The feature cache as train, extract and tune use it: the folder, the arrays, what the run does about them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit._defaults import REFIT_MAX_IMAGES
from transferkit.cli._options import UsageError, refit_choice, weights

if TYPE_CHECKING:
    import keras

    from transferkit import BackboneSpec, FeatureCache, FreezePolicy, ImageData, Phase
    from transferkit._cache_plan import FeatureSet


def feature_cache(value: Any) -> FeatureCache:
    """--cache DIR as a FeatureCache on that folder (created here), or a one-line usage error."""
    import transferkit as tk

    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"cache = {value!r}: expected the path of a folder for the feature cache.")
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--cache {str(value)!r} is a file, not a folder: give a folder for the feature cache "
                         "(it is created if missing).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied")
    except OSError as error:
        raise UsageError(f"--cache {str(value)!r}: cannot write to this folder ({error.strerror or error}). "
                         "Choose another folder.") from None
    return tk.FeatureCache(folder)


def head_feature_sets(options: dict[str, Any], spec: BackboneSpec, data: ImageData, policy: FreezePolicy
                      ) -> tuple[keras.Model, list[FeatureSet]] | None:
    """The extractor and feature arrays of train's head phase (and its refit), or None (augmented data)."""
    from transferkit._cache_plan import head_feature_sets as feature_sets

    choice = refit_choice(options["refit"])
    refit = choice is True or (choice == "auto" and data.num_train + data.num_validation <= REFIT_MAX_IMAGES)
    return feature_sets(spec, weights=weights(str(options["weights"])), data=data, policy=policy, refit=refit)


def images(sets: Sequence[FeatureSet]) -> str:
    """``"2400 training + 600 validation images"``."""
    return " + ".join(f"{s.count} {s.name}" for s in sets) + " images"


def features_line(cache: FeatureCache, options: dict[str, Any], spec: BackboneSpec, data: ImageData,
                  head_phase: Phase) -> str:
    """What `train --cache` does about the head phase's features: load them, or extract and store them."""
    where = f"cache {cache.directory}"
    head = "Features for the head phase:"
    if head_phase.epochs == 0:
        return f"{head} none from {where}: the head phase runs no epochs"
    found = head_feature_sets(options, spec, data, head_phase.policy)
    if found is None:
        return f"{head} none from {where}: with augment the head trains on new augmented images every epoch"
    sets = found[1]
    loaded = [s for s in sets if cache.get(s.key) is not None]  # get() merges a complete set of shards
    missing = [s for s in sets if s not in loaded]
    if not missing:
        return f"{head} loaded from {where} ({images(loaded)}), no extraction"
    line = (f"{head} loaded {images(loaded)} from {where}; extracting {images(missing)} and storing them there"
            if loaded else f"{head} extracting {images(missing)} and storing them in {where}")
    partial = [f"{s.name}: shards {', '.join(map(str, present))} of {count}"
               for s in missing for count, present in cache.shards(s.key).items()]
    if partial:
        line += f" (an incomplete set of shards is not used — {'; '.join(partial)})"
    return line
