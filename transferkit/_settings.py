"""What a :class:`~transferkit.FineTuner` was told: its constructor's arguments, checked, then frozen.

The settings never change after the constructor; what the data and training add (classes, image
settings, weights, history) lives in the trained result (``transferkit._run.TrainedRun``), and
what one fit needs only while it runs in ``transferkit._stage.FitContext``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from transferkit._defaults import DEFAULT_BACKBONE, REFIT_MAX_IMAGES
from transferkit._errors import ConfigError, check_choice
from transferkit._features import FeatureCache, files_digest
from transferkit._heads import Head
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE, Phase
from transferkit._types import PathLike, Weights
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.data._kinds import TrainData, ValidationData
from transferkit.data._loaders import ImageData

__all__ = ["DEFAULT_BACKBONE", "REFIT_MAX_IMAGES", "Settings", "fingerprint", "settings", "strategy"]

log = logging.getLogger("transferkit")

KEEP_BEST = ("phase", "epoch")
DISTRIBUTE = ("mirrored",)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A FineTuner's settings, as checked by :func:`settings` (see :class:`~transferkit.FineTuner` for each).

    ``network`` is a built, frozen headless backbone to put the head on instead of building one
    (search trials that train only the head share one: it never changes).
    """

    spec: BackboneSpec
    weights: Weights
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    head: Head | None = None
    image_size: int | None = None
    head_phase: Phase = HEAD_PHASE
    fine_tune_phase: Phase | None = FINE_TUNE_PHASE
    class_weight: str | dict[int, float] | None = None
    seed: int | None = None
    cache: FeatureCache | None = None
    augment_views: int = 0
    keep_best: str | bool = "phase"
    refit: bool | str = "auto"
    temperature_scaling: bool = True
    mixed_precision: bool = False
    jit_compile: bool | str = "auto"
    network: keras.Model | None = None


def settings(backbone: str | BackboneSpec, *, weights: Weights, num_classes: int | None = None,
             class_names: Sequence[str] | None = None, head: Head | None = None, image_size: int | None = None,
             head_phase: Phase = HEAD_PHASE, fine_tune_phase: Phase | None = FINE_TUNE_PHASE,
             class_weight: str | dict[int, float] | None = None, seed: int | None = None,
             cache: bool | PathLike | FeatureCache = True, augment_views: int = 0, keep_best: bool | str = "phase",
             refit: bool | str = "auto", temperature_scaling: bool = True, mixed_precision: bool = False,
             jit_compile: bool | str = "auto", network: keras.Model | None = None) -> Settings:
    """Check the FineTuner's arguments and normalise them (``keep_best=True`` → ``"phase"``, ``cache``
    → a :class:`FeatureCache` or ``None``)."""
    spec = get_backbone(backbone)
    if not isinstance(mixed_precision, bool):
        raise ConfigError(f"Expected mixed_precision to be True or False. Received: "
                          f"mixed_precision={mixed_precision!r}.")
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ConfigError(f'Expected jit_compile to be True, False or "auto". '
                          f"Received: jit_compile={jit_compile!r}.")
    if mixed_precision and not tf.config.list_physical_devices("GPU"):
        log.warning("mixed_precision=True is meant for GPUs: this machine has none, and float16 runs slower "
                    "than float32 on a CPU.")
    if image_size is not None:
        spec.check_size(image_size)
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ConfigError(f"num_classes={num_classes} but {len(class_names)} class_names were given.")
    names = tuple(class_names) if class_names is not None else None
    if isinstance(class_weight, str):
        check_choice("class_weight", class_weight, ("balanced",))
    if not isinstance(augment_views, int) or augment_views < 0:
        raise ConfigError(f"Expected augment_views to be an integer >= 0. Received: {augment_views!r}.")
    if keep_best is True:
        keep_best = "phase"
    if keep_best is not False:
        check_choice("keep_best", keep_best, KEEP_BEST)
    if refit not in (True, False, "auto"):
        raise ConfigError(f'Expected refit to be True, False or "auto". Received: refit={refit!r}.')
    if cache is True:
        chosen: FeatureCache | None = FeatureCache()
    elif cache is False or cache is None:
        chosen = None
    else:
        chosen = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    return Settings(
        spec=spec, weights=weights, num_classes=num_classes if num_classes is not None else (
            len(names) if names else None),
        class_names=names, head=head, image_size=image_size, head_phase=head_phase, fine_tune_phase=fine_tune_phase,
        class_weight=class_weight, seed=seed, cache=chosen, augment_views=augment_views, keep_best=keep_best,
        refit=refit, temperature_scaling=temperature_scaling, mixed_precision=mixed_precision,
        jit_compile=jit_compile, network=network)


def strategy(distribute: str | tf.distribute.Strategy | None) -> tf.distribute.Strategy | None:
    """The distribution strategy ``distribute`` names (``None``: one device)."""
    if distribute is None or isinstance(distribute, tf.distribute.Strategy):
        return distribute
    check_choice("distribute", distribute, DISTRIBUTE)
    return tf.distribute.MirroredStrategy()


def fingerprint(chosen: Settings, train: TrainData, validation: ValidationData | None, *, image_size: int | None,
                head: Head | None) -> dict[str, Any]:
    """What a checkpoint's run depends on: a checkpoint of another is refused.

    ``image_size`` and ``head`` are the FineTuner's at the time (a built model's, else the settings').
    """
    data: dict[str, Any] = {"kind": type(train).__name__, "validation": validation is not None}
    if isinstance(train, ImageData):
        for split, files in (("train_files", train.train_files), ("validation_files", train.validation_files)):
            data[split] = files_digest(files.paths, files.labels) if files is not None else None
        data["settings"] = repr(train.settings)
        data["images"] = [train.num_train, train.num_validation]
    return {
        "backbone": chosen.spec.name, "weights": None if chosen.weights is None else str(chosen.weights),
        "image_size": image_size, "head": repr(head), "head_phase": repr(chosen.head_phase),
        "fine_tune_phase": repr(chosen.fine_tune_phase), "class_weight": repr(chosen.class_weight),
        "seed": chosen.seed, "augment_views": chosen.augment_views, "keep_best": chosen.keep_best,
        "refit": chosen.refit, "temperature_scaling": chosen.temperature_scaling, "data": data,
        # float16 layers and a loss-scaled optimizer (more optimizer variables); only when on, so that
        # checkpoints written before the option existed still resume. XLA changes neither: not recorded.
        **({"mixed_precision": True} if chosen.mixed_precision else {}),
    }


def is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))
