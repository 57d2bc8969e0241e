"""One phase's run, as named steps.

A phase (``Phase``) runs as one stage, or several with gradual unfreezing. :class:`Stage` runs
one, in this order:

1. **prepare** — freeze as the phase says; a stage the checkpoint holds as finished is restored
   instead of run;
2. **choose what trains** — the part above a feature cache where that gives the same result
   (``_cache_plan``), else the whole model;
3. **the head strategy** — solve a linear head on cached features (``Phase(solve=…)``), or train
   averaged copies of it (``Phase(heads=…)``), or one head;
4. **callbacks** — transferkit's own (divergence guard, best-weights keeper, early stopping,
   checkpoint recorder, copies folding), attached in one place beside the user's;
5. **fit** — Keras' ``fit``, resumed at the checkpoint's epoch;
6. **finish** — history, divergence, ranking of the phase end, best weights, checkpoint record.

State that lives for one ``fit`` only — the checkpoint, whether this is a refit, the cached
validation outputs — is a :class:`FitContext`; the trained result is the
:class:`~transferkit._run.TrainedRun` the stage updates.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from transferkit._binding import Bound, class_weight
from transferkit._cache_plan import cached_datasets, plan_cache
from transferkit._calibration import calibrated_loss
from transferkit._checkpoint import Checkpoint, EpochRecorder, StageResume, assign, restore_epoch, skip_epochs
from transferkit._defaults import SOLVE_MAX_IMAGES
from transferkit._errors import ConfigError, TrainingDivergedError
from transferkit._features import FeatureCache
from transferkit._inference import outputs_and_labels
from transferkit._members import FoldMembers, linear_output, members_model, pooled_features, repeat_labels
from transferkit._model import backbone_of, computes_in_float16
from transferkit._phases import Phase, steps_per_epoch
from transferkit._run import TrainedRun
from transferkit._selection import BestEpoch, BestWeights, Divergence, DivergenceGuard, Snapshot
from transferkit._settings import Settings
from transferkit._solve import HeadSolution, solve_head
from transferkit._types import Callbacks, History, Verbose
from transferkit.backbones._groups import layer_groups, members

log = logging.getLogger("transferkit")


@dataclass
class FitContext:
    """What one fit needs while it runs, and drops when it returns.

    Attributes:
        cache: The feature cache of this fit (on disk in the checkpoint folder during a
            checkpointed fit of files).
        keep_best: Which weights to keep (``False`` during a refit, which has no validation data).
        checkpoint: The checkpoint each epoch is recorded in, if any.
        refitting: The stages run are a refit's.
        cached_validation: The part above the cache and the validation features of the last stage,
            which give the whole model's validation outputs without a second pass over the images.
        distributed: A distribution strategy is in use (copies of a head are not trained then).
    """

    cache: FeatureCache | None
    keep_best: str | bool
    checkpoint: Checkpoint | None = None
    refitting: bool = False
    cached_validation: tuple[keras.Model, tf.data.Dataset] | None = field(default=None, repr=False)
    distributed: bool = False

    @classmethod
    def of(cls, settings: Settings, *, distributed: bool) -> FitContext:
        return cls(cache=settings.cache, keep_best=settings.keep_best, distributed=distributed)


def ranks_by_accuracy(run: TrainedRun) -> bool:
    """Whether epochs are ranked by validation accuracy (single-label heads) or by loss (the others:
    a multi-label head's accuracy is per label)."""
    return run.head.task == "single_label"


def scaled(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """``optimizer`` with dynamic loss scaling where ``model`` computes in float16 (mixed precision).

    Keras wraps the optimizer itself only when the compiled model's own policy is mixed_float16;
    the head and the part above a feature cache are compiled on their own, the latter built outside
    that policy, so transferkit wraps wherever a layer computes in float16.
    """
    if computes_in_float16(model) and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def phase_optimizer(phase: Phase, steps: int, run: TrainedRun) -> keras.optimizers.Optimizer:
    """The phase's optimizer; with ``lr_decay`` < 1 one per trainable block group, the rate falling
    by ``lr_decay`` per group from the top down (the head and the top group at the full rate)."""
    if phase.lr_decay == 1.0:
        return phase.make_optimizer(steps)
    backbone = backbone_of(run.model)
    groups = layer_groups(backbone, run.spec.groups)
    found = members(backbone, run.spec.groups)
    mapping = keras.optimizers.OptimizerMap(default_optimizer=phase.make_optimizer(steps))
    for depth, group in enumerate(reversed(list(groups)), start=0):
        trained = [w.path for n in groups[group] for w in found[n].trainable_weights]
        if depth == 0 or not trained:
            continue  # the top group trains with the head; frozen groups need no optimizer
        pattern = "(" + "|".join(re.escape(path) for path in trained) + ")"  # the variables' own paths
        mapping[pattern] = phase.make_optimizer(steps, scale=phase.lr_decay ** depth)
    return keras.optimizers.MultiOptimizer(mapping)


def compile_for(model: keras.Model, phase: Phase, train: tf.data.Dataset, run: TrainedRun, settings: Settings, *,
                frozen: bool = False) -> None:
    """Compile ``model`` for ``phase`` (``frozen``: at learning rate 0, for a solved head)."""
    head = run.head
    dense = phase.dense_labels and head.task == "single_label"
    optimizer = (keras.optimizers.SGD(learning_rate=0.0) if frozen
                 else phase_optimizer(phase, steps_per_epoch(train), run))
    model.compile(optimizer=scaled(model, optimizer),
                  loss=head.loss(label_smoothing=phase.label_smoothing, dense_labels=dense),
                  metrics=head.metrics(dense_labels=dense, label_smoothing=phase.label_smoothing),
                  jit_compile=settings.jit_compile)


def plain(phase: Phase) -> Phase:
    """``phase`` as every model is left compiled after it: integer labels, one optimizer."""
    return dataclasses.replace(phase, label_smoothing=0.0, mix=None, lr_decay=1.0)


def what_trains(name: str, run: TrainedRun, bound: Bound, fit: FitContext, settings: Settings, callbacks: Callbacks,
                verbose: Verbose) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset | None]:
    """The model a phase fits and its batches: the part above a feature cache where that gives the
    same result, else the whole model."""
    model = run.model
    plan = plan_cache(model, bound.data, fit.cache, augment_views=settings.augment_views, callbacks=callbacks)
    if plan is None or bound.data is None or fit.cache is None:
        return model, bound.train, bound.validation
    if settings.jit_compile != "auto":  # the extractor is never compiled: else Keras' "auto" decides for it
        plan.extractor.jit_compile = bool(settings.jit_compile)
    train_ds, val_ds, hit = cached_datasets(plan, bound.data, fit.cache, progress=verbose not in (0, False))
    log.info("Phase %s trains on cached features (%s): the frozen layers below run once, not every "
             "epoch. FineTuner(cache=False) turns this off.", name, plan.where)
    log.info("Features for phase %s: %s", name, "from the cache" if hit else "computed and cached")
    return plan.trainable, train_ds, val_ds


def phase_end_loss(trained: keras.Model, validation: tf.data.Dataset) -> float | None:
    """The validation loss of the weights a phase ended with, after the temperature that suits
    them best; ``None`` where no temperature can be fitted (the phases are then ranked by
    accuracy, then plain loss)."""
    outputs, labels = outputs_and_labels(trained, validation)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot labels of a label-smoothing or mixing phase
        labels = labels.argmax(axis=1)
    return calibrated_loss(outputs, labels.reshape(-1))


def run_phase(name: str, phase: Phase, run: TrainedRun, bound: Bound, fit: FitContext, settings: Settings,
              callbacks: Callbacks, verbose: Verbose, *, rebind: Callable[[], Bound] | None = None) -> History:
    """Run ``phase`` (each of its gradual-unfreezing stages in turn) on ``run``; returns its history.

    ``rebind`` gives each later stage its own batches (a folder is loaded afresh for each, so that
    its shuffling starts again from the seed); by default every stage runs on ``bound``.
    """
    stages = phase.stages()
    if len(stages) == 1:
        return Stage(name, stages[0], run, bound, fit, settings).run(callbacks, verbose)
    merged: History = {}
    for number, stage in enumerate(stages, start=1):
        log.info("Phase %s, gradual unfreezing stage %d of %d: %s for %d epochs", name, number, len(stages),
                 stage.policy, stage.epochs)
        batches = rebind() if rebind is not None and number > 1 else bound
        for key, values in Stage(name, stage, run, batches, fit, settings).run(callbacks, verbose).items():
            merged.setdefault(key, []).extend(values)
        run.history[name] = merged  # the next stage's epochs count on from these
    return merged


@dataclass
class _Trains:
    """What a stage fits: the model (or the part above the cache, or copies of the head) and its batches."""

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset | None


class Stage:
    """One stage of a phase on ``run``: see the module's docstring for the steps."""

    def __init__(self, name: str, phase: Phase, run: TrainedRun, bound: Bound, fit: FitContext,
                 settings: Settings) -> None:
        self.name, self.phase, self.result, self.bound, self.fit, self.settings = name, phase, run, bound, fit, settings
        self.resume: StageResume | None = None

    def run(self, callbacks: Callbacks, verbose: Verbose) -> History:
        if not self.prepare():
            return self.result.history.get(self.name, {})
        if self.phase.epochs == 0:
            self.record()
            return {}
        trains = self.choose_what_trains(callbacks, verbose)
        phase, trains, head, copies = self.head_strategy(trains)
        keeper = BestWeights(self.result.model, phase=self.name, previous=self.result.kept,
                             by_accuracy=ranks_by_accuracy(self.result), every_epoch=self.fit.keep_best == "epoch")
        guard = keeper.guard = DivergenceGuard(self.name)
        started_trained = self.result.trained
        recorded, own = self.callbacks(phase, trains, keeper, guard)
        ran = self.fit_epochs(phase, trains, [*copies, *callbacks, *own], verbose)
        trains = dataclasses.replace(trains, model=head)  # the copies are folded into it (FoldMembers)
        self.finish(phase, trains, keeper, guard, recorded, ran, started_trained)
        return self.result.history[self.name]

    # 1 ------------------------------------------------------------------
    def prepare(self) -> bool:
        """Freeze, and restore a stage the checkpoint holds as finished; ``False`` if it was restored."""
        model = self.result.model
        summary = self.phase.policy.apply(model, self.settings.spec, clamp=True)
        checkpoint = self.fit.checkpoint
        self.resume = checkpoint.next_stage(self.name, refit=self.fit.refitting) if checkpoint is not None else None
        if self.resume is not None and self.resume.done:
            self.restore(self.resume)
            return False
        compile_for(model, self.phase, self.bound.train, self.result, self.settings)
        log.info("Phase %s: %d epochs, lr %g (%s), %s: %d of %d backbone parameters train", self.name,
                 self.phase.epochs, self.phase.learning_rate, self.phase.schedule, summary.policy,
                 summary.trainable_params, summary.total_params)
        return True

    def restore(self, stage: StageResume) -> None:
        """Take a stage that finished in an earlier process from the checkpoint instead of running it."""
        checkpoint, run = self.fit.checkpoint, self.result
        assert checkpoint is not None
        assign(run.model.variables, checkpoint.arrays(stage), what="variables", where=checkpoint.directory)
        compile_for(run.model, plain(self.phase), self.bound.train, run, self.settings)
        run.history = {k: dict(v) for k, v in stage.history.items()}
        run.kept = (Snapshot(BestEpoch.from_dict(stage.best), run.model.get_weights()) if stage.best is not None
                    else None)
        run.best = run.kept.best if run.kept is not None else None
        run.trained = True
        run.forget_validation()
        self.fit.cached_validation = None
        run.solutions.pop(stage.name, None)
        if stage.solved is not None:  # the solution is the output layer the stage ended with
            output = run.output_layer()
            run.solutions[stage.name] = HeadSolution.from_summary(
                stage.solved, keras.ops.convert_to_numpy(output.kernel), keras.ops.convert_to_numpy(output.bias))
        log.info("Phase %s: taken from the checkpoint in %s (finished in an earlier run)", stage.name,
                 checkpoint.directory)

    # 2 ------------------------------------------------------------------
    def choose_what_trains(self, callbacks: Callbacks, verbose: Verbose) -> _Trains:
        if self.phase.mix is not None:
            if self.result.head.task != "single_label":
                raise ConfigError(f"Phase(mix={self.phase.mix!r}) mixes single-label classes; this head is "
                                  f"{self.result.head.task!r}.")
            # mixed images: no cached features
            return _Trains(self.result.model, self.bound.train, self.bound.validation)
        return _Trains(*what_trains(self.name, self.result, self.bound, self.fit, self.settings, callbacks, verbose))

    # 3 ------------------------------------------------------------------
    def head_strategy(self, trains: _Trains) -> tuple[Phase, _Trains, keras.Model, list[FoldMembers]]:
        """Solve the head, or set up copies of it.

        Returns the phase as it then runs, what trains (the copies' model, and one-hot labels for a
        smoothing or mixing phase), the model whose head the copies are folded into, and the copies'
        callback (if any).
        """
        phase, model = self.phase, self.result.model
        resuming = self.resume is not None and self.resume.epochs > 0
        self.result.solutions.pop(self.name, None)  # an earlier fit's solution is not this phase's
        images = self.bound.data.num_train if self.bound.data is not None else None
        solved = bool(phase.solve) and self.solve(trains, resuming=resuming, images=images)
        if solved:  # one epoch at rate 0: the phase's history, kept epoch and checkpoint as for any phase
            phase = dataclasses.replace(phase, epochs=1, heads=1)
        if phase.dense_labels:
            train, validation = self.dense_labels(phase, trains.train, trains.validation)
            trains = _Trains(trains.model, train, validation)
        head, copies = trains.model, self.copies(phase, trains.model)
        if copies:
            trains = _Trains(copies[0].trained, repeat_labels(trains.train, phase.heads), trains.validation)
        if trains.model is not model or phase.dense_labels or solved:
            compile_for(trains.model, phase, trains.train, self.result, self.settings, frozen=solved)
        return phase, trains, head, copies

    def solve(self, trains: _Trains, *, resuming: bool, images: int | None) -> bool:
        """Solve a phase's linear head on its cached features (``Phase(solve=…)``) and write it into
        the output layer; ``False`` where the phase trains its head instead."""
        name, phase = self.name, self.phase
        output = linear_output(trains.model) if trains.model is not self.result.model else None
        if output is None or self.result.head.task != "single_label":
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
        features, labels = pooled_features(trains.model, trains.train)
        if too_many(len(labels)):  # a tf.data input, or augmented views of the images
            return False
        labels = labels.astype(int).ravel()
        weights = class_weight(self.settings, self.result)
        solution = solve_head(features, labels, len(self.result.class_names) or int(output.units),
                              label_smoothing=phase.label_smoothing, seed=self.settings.seed or 0,
                              sample_weight=None if weights is None else np.array([weights[i] for i in labels]))
        output.kernel.assign(solution.kernel.astype(output.kernel.dtype))
        output.bias.assign(solution.bias.astype(output.bias.dtype))
        self.result.solutions[name] = solution
        how = (f"C = {solution.c:g}, chosen by {solution.folds}-fold cross-validation" if solution.folds
               else "C = 1: too few images of a class to cross-validate")
        log.info("Phase %s: solved the linear head on %d cached feature vectors (%s) in %.1f s.", name,
                 len(labels), how, solution.seconds)
        return True

    def copies(self, phase: Phase, trained: keras.Model) -> list[FoldMembers]:
        """The callback that folds ``phase.heads`` copies of the head into it, with the model that trains
        them (``[]`` for one head, or where copies cannot be averaged)."""
        if phase.heads <= 1:
            return []
        if self.fit.distributed:
            # Keras builds a distributed model's metrics from its inference output, one row per image,
            # against the training batches' labels, repeated for every copy
            log.info("Phase %s trains one head, not %d averaged copies: copies are not trained under a "
                     "distribution strategy.", self.name, phase.heads)
            return []
        cached = trained is not self.result.model and phase.mix is None
        members = members_model(trained, phase.heads) if cached else None
        if members is None:
            log.info("Phase %s trains one head, not %d averaged copies: copies are averaged for a linear head "
                     "(no hidden layers) trained on cached features alone.", self.name, phase.heads)
            return []
        log.info("Phase %s trains %d copies of the head side by side and keeps their average.", self.name,
                 phase.heads)
        return [FoldMembers(members, trained)]

    def dense_labels(self, phase: Phase, train: tf.data.Dataset, validation: tf.data.Dataset | None
                     ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        """One-hot labels for a smoothing or mixing phase (single-label), and the mixing itself."""
        if self.result.head.task != "single_label":
            return train, validation  # multi-hot rows already; BinaryCrossentropy smooths them
        classes = len(self.result.class_names)

        def one_hot(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return x, tf.one_hot(tf.cast(y, tf.int32), classes)

        train = train.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        mixer = phase.mixer(seed=self.settings.seed)
        if mixer is not None:
            def mix(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                mixed = mixer({"images": tf.cast(x, tf.float32), "labels": y}, training=True)
                return mixed["images"], mixed["labels"]

            train = train.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
        if validation is not None:
            validation = validation.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)
        return train.prefetch(tf.data.AUTOTUNE), validation

    # 4 ------------------------------------------------------------------
    def callbacks(self, phase: Phase, trains: _Trains, keeper: BestWeights, guard: DivergenceGuard
                  ) -> tuple[dict[str, list[float]], list[keras.callbacks.Callback]]:
        """transferkit's own callbacks for this stage, and the epochs the checkpoint already holds."""
        keep = self.fit.keep_best
        own: list[keras.callbacks.Callback] = [guard, *([keeper] if keep else [])]
        if phase.patience is not None:
            if trains.validation is None:
                raise ConfigError(f"Phase(patience={phase.patience}) stops on validation results, but phase "
                                  f"{self.name!r} has no validation data. Load data with validation_split > 0, "
                                  "pass validation=…, or leave patience=None.")
            monitor = "val_accuracy" if ranks_by_accuracy(self.result) else "val_loss"
            own.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=phase.patience))
        checkpoint = self.fit.checkpoint
        if checkpoint is None:
            return {}, own
        recorded: dict[str, list[float]] = {}
        done = self.epochs_done()
        stage = self.resume
        if stage is not None and stage.epochs:
            restore_epoch(checkpoint, stage, trains.model, keeper if keep else None)
            recorded = stage.history.get(self.name, {})  # this stage's epochs (not earlier stages')
            skip_epochs(trains.train, stage.epochs)
            guard.good_epoch = done + stage.epochs
            log.info("Resuming from %s epoch %d%s", self.name, stage.epochs,
                     " of the refit on all images" if self.fit.refitting else "")
        else:
            stage = self.resume = StageResume(index=checkpoint.current, name=self.name, done=False, epochs=0,
                                              refit=self.fit.refitting)
        others = {k: v for k, v in self.result.history.items() if k != self.name}
        own.append(EpochRecorder(checkpoint, stage, trains.model, keeper if keep else None, guard, recorded, others))
        return recorded, own

    def epochs_done(self) -> int:
        """Epochs of earlier phases and stages: this stage's epochs count on from them."""
        return sum(len(next(iter(h.values()), [])) for h in self.result.history.values())

    # 5 ------------------------------------------------------------------
    def fit_epochs(self, phase: Phase, trains: _Trains, callbacks: list[keras.callbacks.Callback],
                   verbose: Verbose) -> dict[str, list[float]]:
        done = self.epochs_done()
        first = done + (self.resume.epochs if self.resume is not None else 0)
        result = trains.model.fit(trains.train, validation_data=trains.validation, epochs=done + phase.epochs,
                                  initial_epoch=first, callbacks=callbacks,
                                  class_weight=class_weight(self.settings, self.result), verbose=verbose,
                                  shuffle=False)  # the pipeline shuffles itself
        return {k: [float(v) for v in values] for k, values in result.history.items()}

    # 6 ------------------------------------------------------------------
    def finish(self, phase: Phase, trains: _Trains, keeper: BestWeights, guard: DivergenceGuard,
               recorded: dict[str, list[float]], ran: dict[str, list[float]], started_trained: bool) -> None:
        run, model, keep = self.result, self.result.model, self.fit.keep_best
        run.history[self.name] = {k: [*recorded.get(k, []), *ran.get(k, [])] for k in (recorded.keys() | ran.keys())}
        run.trained = True
        if guard.diverged is not None:
            self.diverged(guard.diverged, started_trained)
        if phase.dense_labels or phase.lr_decay != 1.0:
            # leave the model compiled as every other phase does: integer labels, one optimizer
            compile_for(model, plain(phase), self.bound.train, run, self.settings)
        if keep and keep != "epoch" and trains.validation is not None and ranks_by_accuracy(run):
            keeper.rate(phase_end_loss(trains.model, trains.validation))
        run.kept = keeper.restore() if keep else None  # None: the last epoch's weights
        run.best = run.kept.best if run.kept is not None else None  # no longer the saved run's
        run.forget_validation()
        # the validation features of a cached phase give the whole model's outputs through the part
        # above them: the report and the calibration need no second pass over the images
        cached = trains.model is not model and trains.validation is not None and not phase.dense_labels
        self.fit.cached_validation = (trains.model, trains.validation) if cached else None
        self.record()

    def diverged(self, divergence: Divergence, started_trained: bool) -> None:
        """After a phase stopped on a non-finite loss: carry on with good weights, or stop the fit."""
        if divergence.good_epoch is None and not started_trained:
            raise TrainingDivergedError(
                f"Phase {divergence.phase} diverged at {divergence.where()} before any epoch ended with finite "
                "losses: there are no good weights to keep. A learning rate too high is the usual cause: try one "
                "about 10x lower (Phase(learning_rate=…); --learning-rate or --fine-tune-learning-rate).")
        log.warning("%s", divergence.describe())
        self.result.divergences.append(divergence)

    def record(self) -> None:
        """Record a finished stage in the checkpoint: every variable of the model and the best epoch kept."""
        checkpoint, run = self.fit.checkpoint, self.result
        if checkpoint is None:
            return
        best = run.kept.best.to_dict() if run.kept is not None else None
        finished = StageResume(index=checkpoint.current, name=self.name, done=True,
                               epochs=len(next(iter(run.history.get(self.name, {}).values()), [])),
                               history=dict(run.history), best=best, refit=self.fit.refitting,
                               solved=run.solutions[self.name].summary() if self.name in run.solutions else None)
        checkpoint.record_done(finished, [keras.ops.convert_to_numpy(v) for v in run.model.variables])
