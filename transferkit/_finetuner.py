"""The ``FineTuner`` facade: the two-phase transfer-learning recipe, evaluation, prediction, saving.

Each phase is a public method (:meth:`FineTuner.train_head`, :meth:`FineTuner.fine_tune`);
:meth:`FineTuner.fit` runs one after the other. The work lives in the modules that own it:
phases and schedules in ``_phases``, freezing in ``_freezing``, the model's parts in ``_model``,
cached training in ``_cache_plan``, inputs in ``_inference``, metrics in ``_metrics`` and the
on-disk format in ``_saving``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit._cache_plan import cached_datasets, plan_cache
from transferkit._calibration import Calibration, calibrate, calibrated_loss, fold_temperature
from transferkit._checkpoint import Checkpoint, EpochRecorder, StageResume, assign, restore_epoch, skip_epochs
from transferkit._errors import ConfigError, DataError, NotFittedError, TrainingDivergedError, check_choice
from transferkit._features import FeatureCache, files_digest
from transferkit._freezing import FreezeState
from transferkit._heads import OUTPUT_LAYER, Head
from transferkit._inference import (
    TestTimeAugmentation,
    evaluation_batches,
    labelled_batches,
    outputs_and_labels,
    predict_outputs,
    prediction_input,
)
from transferkit._lr_find import LearningRateSweep, constant_rate_optimizer, sweep, sweep_batches, sweep_values
from transferkit._members import FoldMembers, linear_output, members_model, pooled_features, repeat_labels
from transferkit._metrics import Evaluation, Predictions, evaluate_outputs
from transferkit._model import (
    MIXED_PRECISION,
    assemble_model,
    backbone_of,
    build_model,
    computes_in_float16,
    dtype_policy,
    model_parts,
)
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE, SOLVE_MAX_IMAGES, Phase, steps_per_epoch
from transferkit._run import TrainedRun
from transferkit._saving import FORMAT, RunMetadata, load_run, save_run
from transferkit._selection import BestEpoch, BestWeights, Divergence, DivergenceGuard, Refit, Snapshot
from transferkit._solve import HeadSolution, solve_head
from transferkit._types import Callbacks, Color, History, PathLike, Verbose, Weights
from transferkit.backbones._groups import layer_groups
from transferkit.backbones._registry import BackboneSpec, get_backbone, list_backbones
from transferkit.data._augment import Augment
from transferkit.data._images import WHITE
from transferkit.data._kinds import EvalData, Images, TrainData, ValidationData
from transferkit.data._loaders import ImageData, all_images, load_folder
from transferkit.data._pipelines import PipelineSettings

log = logging.getLogger("transferkit")

DEFAULT_BACKBONE = "mobilenet_v2"
KEEP_BEST = ("phase", "epoch")
REFIT_MAX_IMAGES = 2000  # refit="auto" trains again on all images up to this many (docs/benchmarks.md)


DISTRIBUTE = ("mirrored",)


def _strategy(distribute: str | tf.distribute.Strategy | None) -> tf.distribute.Strategy | None:
    if distribute is None or isinstance(distribute, tf.distribute.Strategy):
        return distribute
    check_choice("distribute", distribute, DISTRIBUTE)
    return tf.distribute.MirroredStrategy()


def _in_scope(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` in the FineTuner's distribution strategy's scope (if it has one)."""
    @functools.wraps(method)
    def scoped(self: FineTuner, *args: Any, **kwargs: Any) -> Any:
        with self.strategy.scope() if self.strategy is not None else contextlib.nullcontext():
            return method(self, *args, **kwargs)
    return scoped


@dataclass(frozen=True)
class _Batches:
    """The batches one phase trains and validates on, and the ImageData behind them (for caching)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    data: ImageData | None


class FineTuner:
    """Fine-tune a pretrained backbone on your images with the proven two-phase recipe.

    1. :meth:`train_head`: the backbone is frozen and only the new head learns (fast, safe).
    2. :meth:`fine_tune`: the top blocks of the backbone are unfrozen and trained at a lower
       learning rate with warm-up and cosine decay, BatchNorm kept in inference mode.

    Args:
        backbone: Registry name (see ``transferkit backbones``) or a :class:`BackboneSpec`.
        weights: ``"imagenet"``, ``None`` (random) or a path to a weights file. Required, so
            that nothing is downloaded behind a default and a random network is never a surprise.
        num_classes: Number of classes; taken from the data when omitted.
        class_names: Names of the classes; taken from the data when omitted.
        head: The head to put on the backbone (``Head()`` by default).
        image_size: Input size; taken from the data, else the backbone's default.
        head_phase: Settings of phase 1 (default ``HEAD_PHASE``: the linear head solved on up to 2,000
            training images, else 50 epochs at 1e-3 as five averaged copies).
        fine_tune_phase: Settings of phase 2 (default ``FINE_TUNE_PHASE``: 10 epochs at 1e-4,
            top 2 blocks, cosine with 1 warm-up epoch). ``None`` skips fine-tuning in :meth:`fit`.
        class_weight: ``None``, ``"balanced"`` (weights from the training split) or a dict.
        seed: Seeds Python, NumPy and TensorFlow for repeatable runs.
        cache: Train on cached features wherever that gives the same result as running the
            frozen layers every epoch (ImageData without augmentation; see docs/speed.md).
            ``True``: in memory; a folder path or :class:`FeatureCache`: on disk, reused across
            runs; ``False``: never.
        augment_views: With augmented data, cache this many augmented views of each image for
            the head phase instead of augmenting afresh every epoch (0, the default, leaves
            augmented data uncached). Faster, but not the same result: see docs/speed.md.
        keep_best: Which weights to keep after each phase. ``"phase"`` (default, or ``True``):
            the best validated end of a phase so far — the lowest validation loss after
            temperature scaling (with fewer than 20 validation images, or where a phase gets
            every one right: highest validation accuracy, ties to the lower loss; multi-label
            and regression heads: the lowest loss) — so a fine-tune phase that ends worse than
            the head phase leaves the head phase's weights. ``"epoch"``: the best validated
            epoch of any phase (on a small validation split this picks noise; see
            docs/benchmarks.md). ``False``: the last epoch. :attr:`best_epoch` says which was kept.
        refit: After the phases, train again from the pretrained weights on the training and
            validation images together, for the epochs of the phases kept (the fine-tune phase
            only if it was kept). ``"auto"`` (default) does this for ImageData from files of at
            most ``REFIT_MAX_IMAGES`` images, where holding a fifth of the images out costs the
            most; ``True`` always (ImageData from files only); ``False`` never. Only a
            :meth:`fit` on an untrained model refits (one that continues a trained or loaded
            model does not: the refit builds the model again from the pretrained weights, so
            changes made to the built model by hand are not in the refitted one), and the
            user's callbacks do not run during the refit. The validation figures (report,
            ``metrics.json``), :attr:`best_epoch` and the temperature are those of the model
            before refitting, measured on images it had not seen; :attr:`refitted` says what was
            refitted. A refit after ``keep_best="epoch"`` runs every epoch the phases ran.
        temperature_scaling: At the end of :meth:`fit`, fit a temperature on the validation
            split and fold it into the output layer, so that predicted probabilities match how
            often the model is right (single-label heads with validation data; accuracy does
            not change). :attr:`calibration` holds the temperature and the expected calibration
            error before and after; see :meth:`calibrate`.
        distribute: ``None`` (one device), ``"mirrored"`` (``tf.distribute.MirroredStrategy``:
            every local GPU, or the CPU) or a ``tf.distribute.Strategy``. The model is built
            and every phase compiled and trained in its scope; a batch of the data is the
            global batch, split across the replicas, so the loss and the gradients are those of
            one device on the same batch. See docs/scaling.md.
        mixed_precision: Build the model under Keras' ``"mixed_float16"`` dtype policy: layers
            compute in float16, variables stay float32, the output layer (and so softmax, sigmoid
            and the loss) runs in float32, and every optimizer is wrapped in a
            ``keras.optimizers.LossScaleOptimizer``. Faster and lighter on GPUs with float16
            units; on a CPU it works but runs slower. A saved run keeps the policy of its layers.
            See docs/scaling.md.
        jit_compile: ``True``: compile the training, evaluation and prediction steps of every
            phase and the feature extraction with XLA; ``False``: never. ``"auto"`` (default)
            leaves it to Keras: off on a CPU (where XLA was measured slower) and under a
            distribution strategy, on where a GPU is present.

    Example:
        >>> data = load_folder("photos", image_size=224)
        >>> tuner = FineTuner("mobilenet_v2", weights="imagenet")
        >>> tuner.fit(data)
        >>> tuner.evaluate(data.validation).accuracy
        >>> tuner.save("run/")
    """

    def __init__(
        self,
        backbone: str | BackboneSpec = DEFAULT_BACKBONE,
        *,
        weights: Weights,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        head: Head | None = None,
        image_size: int | None = None,
        head_phase: Phase = HEAD_PHASE,
        fine_tune_phase: Phase | None = FINE_TUNE_PHASE,
        class_weight: str | dict[int, float] | None = None,
        seed: int | None = None,
        cache: bool | PathLike | FeatureCache = True,
        augment_views: int = 0,
        keep_best: bool | str = "phase",
        refit: bool | str = "auto",
        temperature_scaling: bool = True,
        distribute: str | tf.distribute.Strategy | None = None,
        mixed_precision: bool = False,
        jit_compile: bool | str = "auto",
    ) -> None:
        self.spec = get_backbone(backbone)
        self.strategy = _strategy(distribute)
        if not isinstance(mixed_precision, bool):
            raise ConfigError(f"Expected mixed_precision to be True or False. Received: "
                              f"mixed_precision={mixed_precision!r}.")
        if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
            raise ConfigError(f'Expected jit_compile to be True, False or "auto". '
                              f"Received: jit_compile={jit_compile!r}.")
        self.mixed_precision = mixed_precision
        self.jit_compile = jit_compile
        if mixed_precision and not tf.config.list_physical_devices("GPU"):
            log.warning("mixed_precision=True is meant for GPUs: this machine has none, and float16 runs slower "
                        "than float32 on a CPU.")
        self.weights = weights
        if image_size is not None:
            self.spec.check_size(image_size)
        self.image_size = image_size
        self._size_given = image_size is not None  # else the data's (or the backbone's default)
        self._names_given = class_names is not None
        self.head = head
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(f"num_classes={num_classes} but {len(class_names)} class_names were given.")
        self.class_names: tuple[str, ...] | None = tuple(class_names) if class_names is not None else None
        self.num_classes = num_classes if num_classes is not None else (
            len(self.class_names) if self.class_names else None)
        self.head_phase = head_phase
        self.fine_tune_phase = fine_tune_phase
        if isinstance(class_weight, str):
            check_choice("class_weight", class_weight, ("balanced",))
        self.class_weight = class_weight
        self.seed = seed
        self.resize = "pad"
        self.background: Color = WHITE
        self.augment: Augment | None = None  # the training data's augmentation, the default for tta
        self.model: keras.Model | None = None
        self.history: dict[str, History] = {}
        self._class_weight_from_data: dict[int, float] | None = None
        if not isinstance(augment_views, int) or augment_views < 0:
            raise ConfigError(f"Expected augment_views to be an integer >= 0. Received: {augment_views!r}.")
        self.augment_views = augment_views
        if keep_best is True:
            keep_best = "phase"
        if keep_best is not False:
            check_choice("keep_best", keep_best, KEEP_BEST)
        self.keep_best: str | bool = keep_best
        if refit not in (True, False, "auto"):
            raise ConfigError(f'Expected refit to be True, False or "auto". Received: refit={refit!r}.')
        self.refit = refit
        self.refitted: Refit | None = None
        self.temperature_scaling = temperature_scaling
        self.calibration: Calibration | None = None
        # validation predictions and evaluation made once after fit, for the report (and kept
        # through a refit, which trains on those images)
        self._held_out: tuple[Predictions | None, Evaluation | None] | None = None
        self._cached_validation: tuple[keras.Model, tf.data.Dataset] | None = None
        # a frozen headless network to build on instead of a new one (search trials that train only
        # the head share one: it never changes)
        self._network: keras.Model | None = None
        self._trained = False  # the model holds trained (or loaded) weights: a refit would throw them away
        self._best: Snapshot | None = None
        self._loaded_best: BestEpoch | None = None
        self._checkpoint: Checkpoint | None = None  # set during a fit with checkpoint_dir
        self._refitting = False
        self.divergences: list[Divergence] = []  # phases stopped on a non-finite loss
        self.solutions: dict[str, HeadSolution] = {}  # phases whose head was solved (Phase(solve=True))
        if cache is True:
            self.cache: FeatureCache | None = FeatureCache()
        elif cache is False or cache is None:
            self.cache = None
        else:
            self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)

    # ------------------------------------------------------------------ model

    @_in_scope
    def build(self, num_classes: int | None = None, *, image_size: int | None = None) -> keras.Model:
        """Build the model now (``fit`` does this for you); returns it.

        The input size is ``image_size``, else the FineTuner's, else the backbone's default. A
        model built here and not trained yet is built again at the data's size if :meth:`fit`
        gets images loaded at another size (unless ``image_size`` was given to the FineTuner).
        """
        if self.model is not None:
            return self.model
        if image_size is not None:
            self.spec.check_size(image_size)
            self.image_size = image_size
        n = num_classes or self.num_classes
        if n is None:
            raise ConfigError("The number of classes is unknown: pass num_classes=… or fit on data first.")
        if self.class_names is None:
            self.class_names = tuple(str(i) for i in range(n))
        if len(self.class_names) != n:
            raise ConfigError(f"num_classes={n} but the model has {len(self.class_names)} class names.")
        self.num_classes = n
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        self.head = self.head or Head()
        network = self._network
        with dtype_policy(MIXED_PRECISION if self.mixed_precision else None):
            if network is not None and self.image_size in (None, int(network.input_shape[1])):
                self.model = assemble_model(self.spec, network, num_outputs=n, head=self.head)
            else:
                self.model = build_model(self.spec, num_outputs=n, weights=self.weights, head=self.head,
                                         image_size=self.image_size)
        self._trained = False
        self.image_size = int(self.model.input_shape[1])
        log.info("Built %s (%s weights) at %d px with %d outputs", self.spec.name,
                 "random" if self.weights is None else self.weights, self.image_size, n)
        return self.model

    @property
    def result(self) -> TrainedRun:
        """The trained result: the model and what is known about it (what :meth:`save` writes)."""
        return TrainedRun(model=self._require_model(), spec=self.spec,
                          weights=None if self.weights is None else str(self.weights),
                          class_names=self._require_classes(), head=self._head(), image_settings=self._image_settings(),
                          history=self.history, best=self.best_epoch, refit=self.refitted, calibration=self.calibration,
                          solutions=self.solutions, divergences=self.divergences, trained=self._trained)

    def _require_model(self) -> keras.Model:
        if self.model is None:
            raise NotFittedError("This FineTuner has no model yet: call fit() (or build()) first.")
        return self.model

    def _require_classes(self) -> tuple[str, ...]:
        if self.class_names is None:
            raise NotFittedError("This FineTuner has no classes yet: call fit() (or build()) first.")
        return self.class_names

    def _head(self) -> Head:
        return self.head or Head()

    def _image_settings(self) -> PipelineSettings:
        """How new images are fitted to the model's input, as the training data was."""
        return PipelineSettings(image_size=int(self._require_model().input_shape[1]), resize=self.resize,
                                background=self.background)

    # ------------------------------------------------------------------ data

    def _bind(self, train: TrainData, validation: ValidationData | None) -> _Batches:
        """The batches a phase runs on; ImageData also tells the tuner its classes and image settings."""
        if isinstance(train, (str, os.PathLike)):
            train = load_folder(train, image_size=self.image_size or self.spec.input_size, seed=self.seed or 0)
        if isinstance(train, ImageData):
            self._take_settings_of(train)
            if validation is None:
                return _Batches(train.train, train.validation, train)  # features are cached for ImageData only
            return _Batches(train.train, labelled_batches(validation), None)
        if isinstance(train, tf.data.Dataset):
            return _Batches(train, labelled_batches(validation) if validation is not None else None, None)
        raise DataError(
            f"Expected training data as ImageData (from load_folder/load_csv/from_arrays), a tf.data.Dataset "
            f"of (images, labels) batches, or a folder path. Received: {type(train).__name__}."
        )

    def _take_settings_of(self, data: ImageData) -> None:
        """Adopt the classes, image size, resize mode, background and class weights of ``data``."""
        size = data.settings.image_size
        if self.image_size is not None and size != self.image_size:
            if self._size_given or self._trained:
                raise DataError(
                    f"The data was loaded at image_size={size} but this FineTuner uses "
                    f"image_size={self.image_size}. Load the data with image_size={self.image_size}."
                )
            if self.model is not None:  # built by build() at a default size and not trained: build at the data's
                log.warning("Building the model again at the data's image size %d: build() made it at %d. "
                            "Changes made to that model are not in the new one; pass image_size= to "
                            "FineTuner or build() to choose the size.", size, self.image_size)
                self.model = None
        # a model built by build(n) with numbered classes and not trained yet takes the data's names
        renamable = not (self._trained or self._names_given) and len(data.class_names) == len(self.class_names or ())
        if (self.class_names is not None and self.model is not None and tuple(data.class_names) != self.class_names
                and not renamable):
            raise DataError(f"The data's classes {list(data.class_names)} differ from the model's "
                            f"{list(self.class_names)}.")
        self.class_names = tuple(data.class_names)
        self.num_classes = len(self.class_names)
        self.image_size = size
        self.resize, self.background = data.settings.resize, data.settings.background
        self.augment = data.settings.augment
        self._class_weight_from_data = data.class_weight
        if data.multi_label and self.head is None:
            self.head = Head(task="multi_label")

    def _resolve_class_weight(self) -> dict[int, float] | None:
        if isinstance(self.class_weight, dict):
            return self.class_weight
        if self.class_weight == "balanced":
            if self._class_weight_from_data is None:
                raise ConfigError('class_weight="balanced" needs ImageData (from a loader) to count classes.')
            return self._class_weight_from_data
        return None

    # ------------------------------------------------------------------ training

    @_in_scope
    def _run(self, name: str, phase: Phase, train: TrainData, validation: ValidationData | None, callbacks: Callbacks,
             verbose: Verbose) -> History:
        stages = phase.stages()
        if len(stages) == 1:
            return self._run_stage(name, stages[0], train, validation, callbacks, verbose)
        merged: History = {}
        for number, stage in enumerate(stages, start=1):
            log.info("Phase %s, gradual unfreezing stage %d of %d: %s for %d epochs", name, number, len(stages),
                     stage.policy, stage.epochs)
            for key, values in self._run_stage(name, stage, train, validation, callbacks, verbose).items():
                merged.setdefault(key, []).extend(values)
            self.history[name] = merged  # the next stage's epochs count on from these
        return merged

    def _run_stage(self, name: str, phase: Phase, train: TrainData, validation: ValidationData | None,
                   callbacks: Callbacks, verbose: Verbose) -> History:
        batches = self._bind(train, validation)
        model = self.build()
        summary = phase.policy.apply(model, self.spec, clamp=True)
        stage = self._checkpoint.next_stage(name, refit=self._refitting) if self._checkpoint is not None else None
        if stage is not None and stage.done:
            return self._restore_stage(model, phase, batches, stage)
        self._compile(model, phase, batches.train)
        log.info("Phase %s: %d epochs, lr %g (%s), %s: %d of %d backbone parameters train", name, phase.epochs,
                 phase.learning_rate, phase.schedule, summary.policy, summary.trainable_params, summary.total_params)
        if phase.epochs == 0:
            self._record_stage(model, name, stage)
            return {}
        if phase.mix is not None:
            if self._head().task != "single_label":
                raise ConfigError(f"Phase(mix={phase.mix!r}) mixes single-label classes; this head is "
                                  f"{self._head().task!r}.")
            trained, train_ds, val_ds = model, batches.train, batches.validation  # mixed images: no cached features
        else:
            trained, train_ds, val_ds = self._what_trains(name, model, batches, callbacks, verbose)
        resuming = stage is not None and stage.epochs > 0
        self.solutions.pop(name, None)  # an earlier fit's solution is not this phase's
        images = batches.data.num_train if batches.data is not None else None
        solved = bool(phase.solve) and self._solve_head(name, phase, model, trained, train_ds, resuming=resuming,
                                                        images=images)
        if solved:  # one epoch at rate 0: the phase's history, kept epoch and checkpoint as for any phase
            phase = dataclasses.replace(phase, epochs=1, heads=1)
        if phase.dense_labels:
            train_ds, val_ds = self._dense_labels(phase, train_ds, val_ds)
        head, folding = trained, self._copies(name, phase, model, trained)
        if folding:
            trained, train_ds = folding[0].trained, repeat_labels(train_ds, phase.heads)
        if trained is not model or phase.dense_labels or solved:
            self._compile(trained, phase, train_ds, frozen=solved)
        keeper = BestWeights(model, phase=name, previous=self._best, by_accuracy=self._ranks_by_accuracy(),
                             every_epoch=self.keep_best == "epoch")
        guard = keeper.guard = DivergenceGuard(name)
        started_trained = self._trained
        done = sum(len(next(iter(h.values()), [])) for h in self.history.values())
        recorded: dict[str, list[float]] = {}  # this stage's epochs from a checkpoint
        own: list[keras.callbacks.Callback] = [guard, *self._phase_callbacks(name, phase, keeper, val_ds)]
        if self._checkpoint is not None:
            if stage is not None and stage.epochs:
                restore_epoch(self._checkpoint, stage, trained, keeper if self.keep_best else None)
                recorded = stage.history.get(name, {})  # this stage's epochs (not earlier stages')
                skip_epochs(train_ds, stage.epochs)
                guard.good_epoch = done + stage.epochs
                log.info("Resuming from %s epoch %d%s", name, stage.epochs,
                            " of the refit on all images" if self._refitting else "")
            else:
                stage = StageResume(index=self._checkpoint.current, name=name, done=False, epochs=0,
                                    refit=self._refitting)
            others = {k: v for k, v in self.history.items() if k != name}
            own.append(EpochRecorder(self._checkpoint, stage, trained, keeper if self.keep_best else None, guard,
                                     recorded, others))
        first = done + (stage.epochs if stage is not None else 0)
        result = trained.fit(train_ds, validation_data=val_ds, epochs=done + phase.epochs, initial_epoch=first,
                             callbacks=[*folding, *callbacks, *own], class_weight=self._resolve_class_weight(),
                             verbose=verbose, shuffle=False)  # the pipeline shuffles itself
        trained = head  # the copies are folded into it (FoldMembers)
        ran = {k: [float(v) for v in values] for k, values in result.history.items()}
        self.history[name] = {k: [*recorded.get(k, []), *ran.get(k, [])] for k in (recorded.keys() | ran.keys())}
        self._trained = True
        if guard.diverged is not None:
            self._diverged(guard.diverged, started_trained)
        if phase.dense_labels or phase.lr_decay != 1.0:
            # leave the model compiled as every other phase does: integer labels, one optimizer
            self._compile(model, dataclasses.replace(phase, label_smoothing=0.0, mix=None, lr_decay=1.0),
                          batches.train)
        if self.keep_best and self.keep_best != "epoch" and val_ds is not None and self._ranks_by_accuracy():
            keeper.rate(self._calibrated_loss(trained, val_ds))
        self._best = keeper.restore() if self.keep_best else None  # None: the last epoch's weights
        self._loaded_best = None  # the weights no longer come from the saved run
        self.refitted = self._held_out = self.calibration = None
        # the validation features of a cached phase give the whole model's outputs through the part
        # above them: the report and the calibration need no second pass over the images
        cached = trained is not model and val_ds is not None and not phase.dense_labels
        self._cached_validation = (trained, val_ds) if cached else None
        self._record_stage(model, name, stage)
        return self.history[name]

    @staticmethod
    def _calibrated_loss(trained: keras.Model, validation: tf.data.Dataset) -> float | None:
        """The validation loss of the weights a phase ended with, after the temperature that suits
        them best; ``None`` where no temperature can be fitted (the phases are then ranked by
        accuracy, then plain loss)."""
        outputs, labels = outputs_and_labels(trained, validation)
        if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot labels of a label-smoothing or mixing phase
            labels = labels.argmax(axis=1)
        return calibrated_loss(outputs, labels.reshape(-1))

    def _copies(self, name: str, phase: Phase, model: keras.Model, trained: keras.Model) -> list[FoldMembers]:
        """The callback that folds ``phase.heads`` copies of the head into it, with the model that trains
        them (``[]`` for one head, or where copies cannot be averaged)."""
        if phase.heads <= 1:
            return []
        if self.strategy is not None:
            # Keras builds a distributed model's metrics from its inference output, one row per image,
            # against the training batches' labels, repeated for every copy
            log.info("Phase %s trains one head, not %d averaged copies: copies are not trained under a "
                     "distribution strategy.", name, phase.heads)
            return []
        copies = members_model(trained, phase.heads) if trained is not model and phase.mix is None else None
        if copies is None:
            log.info("Phase %s trains one head, not %d averaged copies: copies are averaged for a linear head "
                     "(no hidden layers) trained on cached features alone.", name, phase.heads)
            return []
        log.info("Phase %s trains %d copies of the head side by side and keeps their average.", name, phase.heads)
        return [FoldMembers(copies, trained)]

    def _solve_head(self, name: str, phase: Phase, model: keras.Model, trained: keras.Model,
                    train: tf.data.Dataset, *, resuming: bool, images: int | None) -> bool:
        """Solve a phase's linear head on its cached features (``Phase(solve=…)``) and write it into
        the output layer; ``False`` where the phase trains its head instead."""
        output = linear_output(trained) if trained is not model else None
        if output is None or self._head().task != "single_label":
            log.info("Phase %s trains its head instead of solving it: a head is solved where it is linear, "
                     "single-label and trained on cached features alone.", name)
            return False

        def too_many(count: int | None) -> bool:
            if phase.solve != "auto" or count is None or count <= SOLVE_MAX_IMAGES:
                return False
            log.info("Phase %s trains its head: solve=\"auto\" solves it on up to %d training images, and "
                     "there are %d.", name, SOLVE_MAX_IMAGES, count)
            return True

        if too_many(images):  # known from the data: decided without reading the features
            return False
        if resuming:  # the solved head is in the checkpoint's epoch, restored below
            return True
        features, labels = pooled_features(trained, train)
        if too_many(len(labels)):  # a tf.data input, or augmented views of the images
            return False
        labels = labels.astype(int).ravel()
        weights = self._resolve_class_weight()
        solution = solve_head(features, labels, int(self.num_classes or output.units),
                              label_smoothing=phase.label_smoothing, seed=self.seed or 0,
                              sample_weight=None if weights is None else np.array([weights[i] for i in labels]))
        output.kernel.assign(solution.kernel.astype(output.kernel.dtype))
        output.bias.assign(solution.bias.astype(output.bias.dtype))
        self.solutions[name] = solution
        how = (f"C = {solution.c:g}, chosen by {solution.folds}-fold cross-validation" if solution.folds
               else "C = 1: too few images of a class to cross-validate")
        log.info("Phase %s: solved the linear head on %d cached feature vectors (%s) in %.1f s.", name,
                 len(labels), how, solution.seconds)
        return True

    def _diverged(self, divergence: Divergence, started_trained: bool) -> None:
        """After a phase stopped on a non-finite loss: carry on with good weights, or stop the fit."""
        if divergence.good_epoch is None and not started_trained:
            raise TrainingDivergedError(
                f"Phase {divergence.phase} diverged at {divergence.where()} before any epoch ended with finite "
                "losses: there are no good weights to keep. A learning rate too high is the usual cause: try one "
                "about 10x lower (Phase(learning_rate=…); --learning-rate or --fine-tune-learning-rate).")
        log.warning("%s", divergence.describe())
        self.divergences.append(divergence)

    def _record_stage(self, model: keras.Model, name: str, stage: StageResume | None) -> None:
        """Record a finished stage in the checkpoint: every variable of the model and the best epoch kept."""
        if self._checkpoint is None:
            return
        best = self._best.best.to_dict() if self._best is not None else None
        finished = StageResume(index=self._checkpoint.current, name=name, done=True,
                               epochs=len(next(iter(self.history.get(name, {}).values()), [])),
                               history=dict(self.history), best=best, refit=self._refitting,
                               solved=self.solutions[name].summary() if name in self.solutions else None)
        self._checkpoint.record_done(finished, [keras.ops.convert_to_numpy(v) for v in model.variables])

    def _restore_stage(self, model: keras.Model, phase: Phase, batches: _Batches, stage: StageResume) -> History:
        """Take a stage that finished in an earlier process from the checkpoint instead of running it."""
        assert self._checkpoint is not None
        assign(model.variables, self._checkpoint.arrays(stage), what="variables", where=self._checkpoint.directory)
        self._compile(model, dataclasses.replace(phase, label_smoothing=0.0, mix=None, lr_decay=1.0), batches.train)
        self.history = {k: dict(v) for k, v in stage.history.items()}
        self._best = Snapshot(BestEpoch.from_dict(stage.best), model.get_weights()) if stage.best is not None else None
        self._trained = True
        self._loaded_best = None
        self.refitted = self._held_out = self.calibration = None
        self._cached_validation = None
        self.solutions.pop(stage.name, None)
        if stage.solved is not None:  # the solution is the output layer the stage ended with
            output = self._output_layer()
            self.solutions[stage.name] = HeadSolution.from_summary(
                stage.solved, keras.ops.convert_to_numpy(output.kernel), keras.ops.convert_to_numpy(output.bias))
        log.info("Phase %s: taken from the checkpoint in %s (finished in an earlier run)", stage.name,
                 self._checkpoint.directory)
        return self.history.get(stage.name, {})

    def _what_trains(self, name: str, model: keras.Model, batches: _Batches, callbacks: Callbacks,
                     verbose: Verbose) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset | None]:
        """The model a phase fits and its batches: the part above a feature cache where that gives the
        same result, else the whole model."""
        plan = plan_cache(model, batches.data, self.cache, augment_views=self.augment_views, callbacks=callbacks)
        if plan is None or batches.data is None or self.cache is None:
            return model, batches.train, batches.validation
        if self.jit_compile != "auto":  # the extractor is never compiled: else Keras' "auto" decides for it
            plan.extractor.jit_compile = bool(self.jit_compile)
        train_ds, val_ds, hit = cached_datasets(plan, batches.data, self.cache, progress=verbose not in (0, False))
        log.info("Phase %s trains on cached features (%s): the frozen layers below run once, not every "
                 "epoch. FineTuner(cache=False) turns this off.", name, plan.where)
        log.info("Features for phase %s: %s", name, "from the cache" if hit else "computed and cached")
        return plan.trainable, train_ds, val_ds

    def _ranks_by_accuracy(self) -> bool:
        """Whether epochs are ranked by validation accuracy (single-label heads) or by loss (the others:
        a multi-label head's accuracy is per label)."""
        return self._head().task == "single_label"

    def _phase_callbacks(self, name: str, phase: Phase, keeper: BestWeights, validation: tf.data.Dataset | None
                         ) -> list[keras.callbacks.Callback]:
        """transferkit's own callbacks for one phase: the best-epoch keeper and early stopping."""
        chosen: list[keras.callbacks.Callback] = [keeper] if self.keep_best else []
        if phase.patience is not None:
            if validation is None:
                raise ConfigError(f"Phase(patience={phase.patience}) stops on validation results, but phase {name!r} "
                                  "has no validation data. Load data with validation_split > 0, pass validation=…, "
                                  "or leave patience=None.")
            monitor = "val_accuracy" if self._ranks_by_accuracy() else "val_loss"
            chosen.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=phase.patience))
        return chosen

    @_in_scope
    def find_lr(self, train: TrainData, *, phase: str = "head", start: float = 1e-7, end: float = 10.0,
                steps: int = 100, beta: float = 0.98, stop_factor: float = 4.0) -> LearningRateSweep:
        """Sweep the learning rate exponentially over ``steps`` batches and suggest one.

        The model is built (if needed) and frozen as ``phase`` would freeze it, trained one batch
        per learning rate from ``start`` to ``end`` (on cached features where the phase would use
        them), and put back as it was: variables (random-number states included), trainable flags,
        compiled state, history and best epoch. With ImageData the sweep draws its own shuffled,
        unaugmented batches and leaves the training pipeline alone, so a later :meth:`fit` on
        unaugmented data gives exactly the result it would have without the sweep; a
        ``tf.data.Dataset`` is iterated as given (its shuffling moves on).

        For ``phase="fine_tune"``, train the head first (:meth:`train_head`): a sweep that starts
        from a random head measures the head, not the fine-tuning (``transferkit lr-find --phase
        fine-tune`` does this for you).

        Args:
            train: Training data, as for :meth:`fit`.
            phase: ``"head"`` (the head phase's freezing and optimizer) or ``"fine_tune"``.
            start: The first learning rate of the sweep.
            end: The last learning rate of the sweep (it stops earlier if the loss diverges).
            steps: Batches in the sweep (the data repeats as needed).
            beta: Smoothing of the recorded loss (exponential moving average).
            stop_factor: Stop once the smoothed loss exceeds this many times the best.

        Example:
            >>> tuner.find_lr(data).suggestion
            0.0012
        """
        check_choice("phase", phase, ("head", "fine_tune"))
        if not (0 < start < end) or not isinstance(steps, int) or steps < 2:
            raise ConfigError(f"Expected 0 < start < end and steps >= 2. Received: start={start!r}, end={end!r}, "
                              f"steps={steps!r}.")
        chosen = self.head_phase if phase == "head" else (self.fine_tune_phase or FINE_TUNE_PHASE)
        batches = self._bind(train, None)
        model = self.build()
        # everything the sweep touches, to put back: variables (random-number states included),
        # trainable flags, and the compiled state
        variables = [v.numpy() for v in model.variables]
        flags = FreezeState.of(model)
        compiled = model.get_compile_config() if getattr(model, "compiled", False) else None
        chosen.policy.apply(model, self.spec, clamp=True)
        own = dataclasses.replace(batches, train=sweep_batches(batches.train, batches.data))
        trained, train_ds, _ = self._what_trains(f"{phase} (learning-rate sweep)", model, own, (), 0)
        trained.compile(optimizer=self._scaled(trained, constant_rate_optimizer(chosen.make_optimizer(1))),
                        loss=self._head().loss(), jit_compile=self.jit_compile)
        try:
            rates, losses = sweep(trained, train_ds, start=start, end=end, steps=steps, beta=beta,
                                  stop_factor=stop_factor)
        finally:
            for variable, value in zip(model.variables, variables):
                variable.assign(value)
            flags.restore()
            if compiled is not None:
                model.compile_from_config(compiled)
        result = sweep_values(rates, losses, phase=phase)
        log.info("Learning-rate sweep (%s phase, %d steps): suggested learning rate %.3g", phase, len(rates),
                 result.suggestion)
        return result

    @property
    def best_epoch(self) -> BestEpoch | None:
        """The epoch whose weights the model holds, when they were chosen on validation results."""
        if self._best is not None:
            return self._best.best
        return self._loaded_best

    def _compile(self, model: keras.Model, phase: Phase, train: tf.data.Dataset, *, frozen: bool = False) -> None:
        """Compile ``model`` for ``phase`` (``frozen``: at learning rate 0, for a solved head)."""
        head = self._head()
        dense = phase.dense_labels and head.task == "single_label"
        optimizer = (keras.optimizers.SGD(learning_rate=0.0) if frozen
                     else self._optimizer(phase, steps_per_epoch(train)))
        model.compile(optimizer=self._scaled(model, optimizer),
                      loss=head.loss(label_smoothing=phase.label_smoothing, dense_labels=dense),
                      metrics=head.metrics(dense_labels=dense, label_smoothing=phase.label_smoothing),
                      jit_compile=self.jit_compile)

    @staticmethod
    def _scaled(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        """``optimizer`` with dynamic loss scaling where ``model`` computes in float16 (mixed precision).

        Keras wraps the optimizer itself only when the compiled model's own policy is mixed_float16;
        the head and the part above a feature cache are compiled on their own, the latter built outside
        that policy, so transferkit wraps wherever a layer computes in float16.
        """
        if computes_in_float16(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def _optimizer(self, phase: Phase, steps: int) -> keras.optimizers.Optimizer:
        """The phase's optimizer; with ``lr_decay`` < 1 one per trainable block group, the rate falling
        by ``lr_decay`` per group from the top down (the head and the top group at the full rate)."""
        if phase.lr_decay == 1.0:
            return phase.make_optimizer(steps)
        backbone = backbone_of(self._require_model())
        groups = layer_groups(backbone, self.spec.groups)
        mapping = keras.optimizers.OptimizerMap(default_optimizer=phase.make_optimizer(steps))
        for depth, group in enumerate(reversed(list(groups)), start=0):
            trained = [n for n in groups[group] if backbone.get_layer(n).trainable_weights]
            if depth == 0 or not trained:
                continue  # the top group trains with the head; frozen groups need no optimizer
            pattern = "(" + "|".join(re.escape(n) for n in trained) + ")/.*"
            mapping[pattern] = phase.make_optimizer(steps, scale=phase.lr_decay ** depth)
        return keras.optimizers.MultiOptimizer(mapping)

    def _dense_labels(self, phase: Phase, train: tf.data.Dataset, validation: tf.data.Dataset | None
                      ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        """One-hot labels for a smoothing or mixing phase (single-label), and the mixing itself."""
        if self._head().task != "single_label":
            return train, validation  # multi-hot rows already; BinaryCrossentropy smooths them
        classes = int(self.num_classes or 0)

        def one_hot(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return x, tf.one_hot(tf.cast(y, tf.int32), classes)

        train = train.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        mixer = phase.mixer(seed=self.seed)
        if mixer is not None:
            def mix(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                mixed = mixer({"images": tf.cast(x, tf.float32), "labels": y}, training=True)
                return mixed["images"], mixed["labels"]

            train = train.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
        if validation is not None:
            validation = validation.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        return train.prefetch(tf.data.AUTOTUNE), validation

    def train_head(self, train: TrainData, validation: ValidationData | None = None, *, phase: Phase | None = None,
                   callbacks: Callbacks = (), verbose: Verbose = "auto") -> History:
        """Phase 1: train the head with the backbone frozen.

        Args:
            train: ``ImageData``, a ``tf.data.Dataset`` of ``(images, labels)`` batches, or a folder.
            validation: Validation batches (``ImageData.validation`` is used when omitted).
            phase: Overrides ``self.head_phase`` for this call.
            callbacks: Keras callbacks, passed to ``model.fit``.
            verbose: Keras' ``verbose``.

        Returns:
            The Keras history of this phase (``{"loss": [...], "val_accuracy": [...], …}``).
        """
        return self._run("head", phase or self.head_phase, train, validation, callbacks, verbose)

    def fine_tune(self, train: TrainData, validation: ValidationData | None = None, *, phase: Phase | None = None,
                  callbacks: Callbacks = (), verbose: Verbose = "auto") -> History:
        """Phase 2: unfreeze the top of the backbone and train it at a low learning rate."""
        chosen = phase or self.fine_tune_phase
        if chosen is None:
            raise ConfigError("fine_tune_phase is None: pass phase=Phase(...) to fine_tune().")
        return self._run("fine_tune", chosen, train, validation, callbacks, verbose)

    def fit(self, train: TrainData, validation: ValidationData | None = None, *, callbacks: Callbacks = (),
            verbose: Verbose = "auto", checkpoint_dir: PathLike | None = None,
            restart: bool = False) -> dict[str, History]:
        """Run :meth:`train_head`, then :meth:`fine_tune` (unless ``fine_tune_phase`` is None).

        Args:
            train: Training data (see :meth:`train_head`).
            validation: Validation batches (``ImageData.validation`` is used when omitted).
            callbacks: Keras callbacks, passed to every ``model.fit``.
            verbose: Keras' ``verbose``.
            checkpoint_dir: Record every epoch here so that a fit killed at any point (Ctrl-C,
                ``kill -9``, power loss) and called again with the same folder, settings and data
                carries on after the last epoch recorded: stages that finished are restored,
                the one running resumes with its optimizer state, schedule position, best
                weights so far and shuffling order. Features are cached on disk in
                ``checkpoint_dir/features`` (unless ``cache`` is already a folder). The folder
                stays after the fit (a later fit with it restores everything at once); delete it
                when the model is saved. See docs/reliability.md.
            restart: Ignore what ``checkpoint_dir`` holds and start over.

        Returns:
            ``{"head": history, "fine_tune": history}``.
        """
        if isinstance(train, (str, os.PathLike)):  # load once: calibration and refit need the ImageData
            train = load_folder(train, image_size=self.image_size or self.spec.input_size, seed=self.seed or 0)
        if checkpoint_dir is None:
            return self._fit(train, validation, callbacks, verbose)
        if self._trained:
            raise ConfigError("fit(checkpoint_dir=…) resumes a fit that starts from the pretrained weights; this "
                              "FineTuner already holds a trained (or loaded) model. Use a new FineTuner.")
        directory = Path(checkpoint_dir)
        cache = self.cache
        self._checkpoint = Checkpoint(directory, self._fingerprint(train, validation), restart=restart)
        from_files = isinstance(train, ImageData) and train.train_files is not None
        if cache is not None and cache.directory is None and from_files:  # on disk: a resumed fit reuses them
            self.cache = FeatureCache(directory / "features", memory_limit=cache.memory_limit)
        try:
            return self._fit(train, validation, callbacks, verbose)
        finally:
            self._checkpoint, self.cache = None, cache

    def resume_point(self, checkpoint_dir: PathLike, data: TrainData | None = None) -> str | None:
        """Where :meth:`fit` with ``checkpoint_dir`` would carry on (``"fine_tune epoch 3"``), or ``None``.

        With ``data``, first check that the checkpoint belongs to a fit of this FineTuner on that
        data (the ``ConfigError`` :meth:`fit` would raise otherwise).
        """
        state = Path(checkpoint_dir) / "state.json"
        if not state.is_file():
            return None
        if data is not None:
            Checkpoint(Path(checkpoint_dir), self._fingerprint(data, None))
        return Checkpoint.peek(state)

    def _fit(self, train: TrainData, validation: ValidationData | None, callbacks: Callbacks,
             verbose: Verbose) -> dict[str, History]:
        everything = self._refit_data(train, validation, fresh=not self._trained)  # checked before training
        self.train_head(train, validation, callbacks=callbacks, verbose=verbose)
        if self.fine_tune_phase is not None and self.fine_tune_phase.epochs:
            self.fine_tune(train, validation, callbacks=callbacks, verbose=verbose)
        self._after_training(train, validation)
        if everything is not None and isinstance(train, ImageData):
            self._refit(train, everything, verbose)
        return self.history

    def _fingerprint(self, train: TrainData, validation: ValidationData | None) -> dict[str, Any]:
        """What a checkpoint's run depends on: a checkpoint of another is refused."""
        data: dict[str, Any] = {"kind": type(train).__name__, "validation": validation is not None}
        if isinstance(train, ImageData):
            for split, files in (("train_files", train.train_files), ("validation_files", train.validation_files)):
                data[split] = files_digest(files.paths, files.labels) if files is not None else None
            data["settings"] = repr(train.settings)
            data["images"] = [train.num_train, train.num_validation]
        return {
            "backbone": self.spec.name, "weights": None if self.weights is None else str(self.weights),
            "image_size": self.image_size, "head": repr(self.head), "head_phase": repr(self.head_phase),
            "fine_tune_phase": repr(self.fine_tune_phase), "class_weight": repr(self.class_weight),
            "seed": self.seed, "augment_views": self.augment_views, "keep_best": self.keep_best,
            "refit": self.refit, "temperature_scaling": self.temperature_scaling, "data": data,
            # float16 layers and a loss-scaled optimizer (more optimizer variables); only when on, so that
            # checkpoints written before the option existed still resume. XLA changes neither: not recorded.
            **({"mixed_precision": True} if self.mixed_precision else {}),
        }

    def _refit_data(self, train: TrainData, validation: ValidationData | None, *, fresh: bool) -> ImageData | None:
        """The training and validation images as one training set, when :meth:`fit` refits."""
        if self.refit is False:
            return None
        usable = (isinstance(train, ImageData) and validation is None and train.train_files is not None
                  and train.validation_files is not None and len(train.validation_files) > 0)
        if not usable or not fresh:
            if self.refit is True:
                reason = ("needs ImageData from files with a validation split (load_folder, load_csv or from_files)"
                          if usable is False else "starts again from the pretrained weights, and this FineTuner "
                          "already holds a trained (or loaded) model that fit() continues")
                raise ConfigError(f"refit=True trains again on the training and validation images together, which "
                                  f"{reason}. Pass refit=False, or \"auto\" to refit only where it applies.")
            if not fresh:
                log.info("Not refitting: fit() continued a model that was already built, trained or loaded.")
            return None
        assert isinstance(train, ImageData)
        if self.refit == "auto" and train.num_train + train.num_validation > REFIT_MAX_IMAGES:
            return None
        return all_images(train)

    @_in_scope
    def _refit(self, data: ImageData, everything: ImageData, verbose: Verbose) -> None:
        """Train again from the pretrained weights on ``everything``, for the epochs of the phases kept.

        The user's callbacks do not run again: the refit has no validation data and its epochs would
        restart from the beginning in their logs.
        """
        ran = {name: len(next(iter(h.values()), [])) for name, h in self.history.items()}
        best = self.best_epoch
        phases = [("head", dataclasses.replace(self.head_phase, epochs=ran.get("head", 0), patience=None))]
        fine = self.fine_tune_phase
        if fine is not None and ran.get("fine_tune") and (best is None or best.phase == "fine_tune"):
            phases.append(("fine_tune", dataclasses.replace(fine, epochs=ran["fine_tune"], patience=None)))
        # measured before the model sees these images
        held_out = self._held_out or self._validation_results(data)
        history, keep, calibration = self.history, self.keep_best, self.calibration
        log.info("Refitting on all %d images (training and validation): %s", len(everything.train_files or ()),
                 ", then ".join(f"{name} phase {phase.epochs} epochs" for name, phase in phases))
        validated, snapshot = self.model, self._best
        self.model, self.history, self.keep_best, self._best = None, {}, False, None
        self._refitting = True
        try:
            for name, phase in phases:
                self._run(name, phase, everything, None, (), verbose)
        except TrainingDivergedError as error:  # keep the validated model rather than lose the run
            log.warning("The refit diverged, so the model trained with validation is kept: %s", error)
            self.model = validated
            self._best, self._held_out, self.calibration = snapshot, held_out, calibration
            return
        finally:
            self.history, self.keep_best, self._refitting = history, keep, False
        self._best, self._loaded_best = None, best
        self._held_out, self.calibration = held_out, calibration
        if calibration is not None:  # the refitted model is scaled by the temperature fitted before
            fold_temperature(self._output_layer(), calibration.temperature)
        self.refitted = Refit(phases=tuple(name for name, _ in phases),
                              epochs=tuple(phase.epochs for _, phase in phases),
                              images=len(everything.train_files or ()))

    def _after_training(self, train: TrainData, validation: ValidationData | None) -> None:
        """One pass over the validation images after the phases: calibrate on it (if asked) and keep
        the predictions and evaluation for the report."""
        if validation is not None:
            outputs, labels = outputs_and_labels(self._require_model(), labelled_batches(validation))
            examples = None
        elif isinstance(train, ImageData) and train.validation_files is not None and len(train.validation_files):
            files = train.validation_files
            outputs, labels = self._validation_outputs(train, files.labels)
            examples = Predictions(outputs, self._require_classes(), files.paths)
        elif isinstance(train, ImageData) and train.validation is not None:
            outputs, labels = outputs_and_labels(self._require_model(), labelled_batches(train))
            examples = None
        else:
            return  # no validation data: nothing to calibrate on or to report
        if self.temperature_scaling and self._head().task == "single_label":
            outputs = self._fold(*calibrate(outputs, labels))
            if examples is not None:
                examples = dataclasses.replace(examples, probabilities=outputs)
        if validation is None:  # the report's data is train's validation split
            self._held_out = (examples, self._evaluation(outputs, labels))

    def _validation_outputs(self, data: ImageData, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's outputs for the validation split of the data just trained on: from its cached
        features when the last phase had them, else by running the network over the images."""
        if self._cached_validation is not None:
            part, features = self._cached_validation
            outputs, cached_labels = outputs_and_labels(part, features)
            if cached_labels.shape == labels.shape and np.array_equal(cached_labels, labels):
                return outputs, labels
        return outputs_and_labels(self._require_model(), labelled_batches(data))

    def _fold(self, calibration: Calibration, scaled: np.ndarray) -> np.ndarray:
        """Fold a fitted temperature into the output layer; returns the scaled probabilities."""
        fold_temperature(self._output_layer(), calibration.temperature)
        if self.calibration is not None:  # scaled twice: the temperatures multiply
            calibration = dataclasses.replace(calibration, temperature=self.calibration.temperature
                                              * calibration.temperature)
        self.calibration = calibration
        log.info("Calibrated the probabilities: %s", calibration.describe())
        return scaled

    def calibrate(self, data: EvalData) -> Calibration:
        """Fit a temperature on ``data`` (validation images) and fold it into the output layer.

        :meth:`fit` does this for you (``temperature_scaling=True``); call it yourself after
        training with :meth:`train_head`/:meth:`fine_tune`, or with other held-out images. Only
        for single-label heads. The accuracy does not change; the probabilities do.

        Args:
            data: ``ImageData`` (its validation split), a ``tf.data.Dataset`` of
                ``(images, labels)`` batches, or a class folder with the model's classes.

        Returns:
            The :class:`Calibration` (also in :attr:`calibration`, saved with the run).
        """
        if self._head().task != "single_label":
            raise ConfigError(f"Temperature scaling is for single-label heads; this head is {self._head().task!r}.")
        batches = evaluation_batches(data, class_names=self._require_classes(), settings=self._image_settings())
        self._fold(*calibrate(*outputs_and_labels(self._require_model(), batches)))
        self._held_out = None
        assert self.calibration is not None
        return self.calibration

    def _output_layer(self) -> keras.layers.Dense:
        model = self._require_model()
        head = model_parts(model).head
        return (head or model).get_layer(OUTPUT_LAYER)

    def _validation_results(self, data: ImageData) -> tuple[Predictions | None, Evaluation | None]:
        """Predictions for the validation files (for the report's grid) and the evaluation, in one pass."""
        files = data.validation_files
        if files is not None and len(files):
            examples = self.predict(list(files.paths))
            return examples, self._evaluation(examples.probabilities, files.labels)
        if data.validation is not None:  # arrays: no files to show
            return None, self.evaluate(data)
        return None, None

    # ------------------------------------------------------------------ inference

    def evaluate(self, data: EvalData, *, tta: int = 0, augment: Augment | None = None) -> Evaluation:
        """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on ``data``.

        Args:
            data: ``ImageData`` (its validation split), a ``tf.data.Dataset`` of
                ``(images, labels)`` batches, or a class folder with the model's classes.
            tta: Test-time augmentation: average the outputs of the plain images and this many
                randomly augmented copies (0: off). See :meth:`predict`.
            augment: The augmentation for ``tta``.
        """
        batches = evaluation_batches(data, class_names=self._require_classes(), settings=self._image_settings())
        return self._evaluation(*outputs_and_labels(self._require_model(), batches, tta=self._tta(tta, augment)))

    def _tta(self, views: int, augment: Augment | None) -> TestTimeAugmentation | None:
        if views == 0:
            return None
        return TestTimeAugmentation(views, augment or self.augment or Augment(), seed=self.seed)

    def _evaluation(self, outputs: np.ndarray, labels: np.ndarray) -> Evaluation:
        head = self._head()
        return evaluate_outputs(outputs, labels, task=head.task, loss=head.loss(), class_names=self._require_classes())

    def predict(self, images: Images, *, batch_size: int = 32, tta: int = 0, augment: Augment | None = None
                ) -> Predictions:
        """Class probabilities for image files, a folder of images, arrays or a dataset.

        Args:
            images: A path (file or folder), a list of paths, an array ``(n, h, w, 3)`` or
                ``(h, w, 3)`` of raw 0–255 pixels, or a ``tf.data.Dataset`` of image batches.
            batch_size: Images per forward pass.
            tta: Test-time augmentation: average the probabilities of the plain images and this
                many randomly augmented copies (0: off; each view costs one more forward pass).
            augment: The augmentation for ``tta``: by default the one the training data used
                in this session, else ``Augment()``. Choose one that keeps the label (no flips
                for text or digits).
        """
        model, classes = self._require_model(), self._require_classes()
        prepared = prediction_input(images, settings=self._image_settings())
        outputs = predict_outputs(model, prepared, batch_size=batch_size, tta=self._tta(tta, augment))
        return Predictions(outputs, classes, prepared.paths)

    def write_report(self, data: ImageData, out: PathLike) -> dict[str, Any]:
        """Evaluate on ``data``'s validation split and write metrics.json, labels.txt and the PNGs.

        The validation images go through the network once: the metrics and the grid of examples
        come from the same predictions. See :func:`transferkit.report.write_report` for what is
        written. Returns the metrics.
        """
        from transferkit.report import write_report  # matplotlib is imported only for reports

        files = data.validation_files
        # a refitted model has trained on the validation images: report what it scored before
        if self._held_out is None and self.refitted is not None:
            log.warning("This model was refitted on its training and validation images: the validation figures "
                        "of this report come from images it has trained on and are optimistic.")
        examples, evaluation = self._held_out or self._validation_results(data)
        return write_report(
            out, class_names=self._require_classes(), history=self.history, evaluation=evaluation,
            examples=examples, truth=files.labels if files is not None else None,
            image_settings=self._image_settings(), skipped=data.skipped, best=self.best_epoch,
            refit=self.refitted, calibration=self.calibration,
            solved={name: solution.summary() for name, solution in self.solutions.items()},
        )

    # ------------------------------------------------------------------ persistence

    def save(self, directory: PathLike) -> Path:
        """Write ``model.keras`` and ``transferkit.json`` (classes, settings, history) to ``directory``.

        ``model.keras`` also loads without transferkit, with ``keras.saving.load_model`` alone (its
        preprocessing is written with built-in Keras layers; not for a TensorFlow Hub backbone, whose
        module needs transferkit's ``HubLayer``). It holds no optimizer: training further starts a new phase.
        """
        model = self._require_model()
        meta = RunMetadata(
            format=FORMAT if model_parts(model).head is not None else 1,  # a loaded format-1 model keeps its layout
            backbone=self.spec.name, hub_handle=self.spec.handle,
            weights=None if self.weights is None else str(self.weights), image_size=int(model.input_shape[1]),
            class_names=self._require_classes(), head=self._head().to_config(), resize=self.resize,
            background=self.background, history=self.history,
            best=self.best_epoch.to_dict() if self.best_epoch is not None else None,
            refit=self.refitted.to_dict() if self.refitted is not None else None,
            calibration=self.calibration.to_dict() if self.calibration is not None else None,
        )
        return save_run(directory, model, meta)

    @classmethod
    def load(cls, directory: PathLike, *, safe_mode: bool = True) -> FineTuner:
        """Load a FineTuner written by :meth:`save`; predictions are identical.

        Args:
            directory: The folder :meth:`save` wrote.
            safe_mode: Passed to ``keras.saving.load_model`` for runs of other backbones. A run on a
                TensorFlow Hub module is rebuilt from its recorded handle and only its weights are
                read, so it loads with the default.
        """
        model, meta = load_run(directory, safe_mode=safe_mode)
        backbone = meta.backbone
        if meta.hub_handle and backbone not in list_backbones(family="hub"):
            backbone = meta.hub_handle  # an unregistered Hub module: resolve its handle again
        tuner = cls(backbone, weights=meta.weights, class_names=meta.class_names,
                    head=Head.from_config(meta.head), image_size=meta.image_size)
        tuner.model = model
        tuner.mixed_precision = computes_in_float16(model)  # the layers keep their saved policy
        tuner._trained = True
        tuner.resize, tuner.background, tuner.history = meta.resize, meta.background, meta.history
        if meta.best is not None:  # the saved weights are the best ones: later phases have to beat them
            # where the saved weights came from; new training is judged on its own validation data
            tuner._loaded_best = BestEpoch.from_dict(meta.best)
        if meta.calibration is not None:
            tuner.calibration = Calibration.from_dict(meta.calibration)
        if meta.refit is not None:
            tuner.refitted = Refit(phases=tuple(meta.refit["phases"]), epochs=tuple(meta.refit["epochs"]),
                                   images=int(meta.refit["images"]))
        return tuner

