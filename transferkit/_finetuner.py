"""The ``FineTuner`` facade: the two-phase recipe, evaluation, prediction, saving.

Each phase is a public method (:meth:`FineTuner.train_head`, :meth:`FineTuner.fine_tune`);
:meth:`FineTuner.fit` runs one after the other, then calibrates and refits. Every method is a few
calls into the modules that do the work: the settings in ``_settings``, the trained result in
``_run``, data and model building in ``_binding``, one phase's steps in ``_stage``, the
validation pass and calibration in ``_held_out``, the refit in ``_refit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from transferkit._binding import Bound, bind, build_run, fitted_run, load_if_path
from transferkit._calibration import Calibration, calibrate
from transferkit._checkpoint import Checkpoint
from transferkit._errors import ConfigError, check_choice
from transferkit._features import FeatureCache
from transferkit._heads import Head
from transferkit._held_out import after_training, fold, samples, validation_results
from transferkit._inference import TestTimeAugmentation
from transferkit._lr_find import (
    LearningRateSweep,
    constant_rate_optimizer,
    preserved,
    sweep,
    sweep_batches,
    sweep_values,
)
from transferkit._metrics import Evaluation, Predictions
from transferkit._model import computes_in_float16
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE, Phase
from transferkit._refit import refit, refit_data
from transferkit._run import SAMPLE_COUNT, TrainedRun, require
from transferkit._selection import BestEpoch, Divergence, Refit
from transferkit._settings import (
    DEFAULT_BACKBONE,
    REFIT_MAX_IMAGES,
    Settings,
    fingerprint,
    is_path,
    settings,
    strategy,
)
from transferkit._solve import HeadSolution
from transferkit._stage import FitContext, run_phase, scaled, what_trains
from transferkit._types import Callbacks, History, PathLike, Verbose, Weights
from transferkit.backbones._registry import BackboneSpec
from transferkit.data._augment import Augment
from transferkit.data._kinds import EvalData, Images, TrainData, ValidationData
from transferkit.data._loaders import ImageData

__all__ = ["DEFAULT_BACKBONE", "REFIT_MAX_IMAGES", "FineTuner"]

log = logging.getLogger("transferkit")

_SETTINGS = {f.name for f in dataclasses.fields(Settings)} | {"image_size", "num_classes", "class_names"}
_RESULT = {"model", "history", "best_epoch", "calibration", "refitted", "solutions", "divergences", "result"}


def _in_scope(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` in the FineTuner's distribution strategy's scope (if it has one)."""
    @functools.wraps(method)
    def scoped(self: FineTuner, *args: Any, **kwargs: Any) -> Any:
        with self._scope():
            return method(self, *args, **kwargs)
    return scoped


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
        network: A built headless backbone to put the head on instead of building one from
            ``weights`` (search trials that train only the head share one frozen network).

    A FineTuner holds three kinds of state: :attr:`settings` (these arguments, checked and
    frozen), :attr:`result` (the trained model and what is known about it: what :meth:`save`
    writes), and, while :meth:`fit` runs, that fit's working state (checkpoint, cached
    validation outputs), gone when it returns.

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
        network: keras.Model | None = None,
    ) -> None:
        self.settings: Settings = settings(
            backbone, weights=weights, num_classes=num_classes, class_names=class_names, head=head,
            image_size=image_size, head_phase=head_phase, fine_tune_phase=fine_tune_phase,
            class_weight=class_weight, seed=seed, cache=cache, augment_views=augment_views, keep_best=keep_best,
            refit=refit, temperature_scaling=temperature_scaling, mixed_precision=mixed_precision,
            jit_compile=jit_compile, network=network)
        self.strategy = strategy(distribute)
        self._run: TrainedRun | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SETTINGS or name in _RESULT:
            where = (f"a FineTuner's settings are fixed once given: make a new one, e.g. "
                     f"FineTuner.from_run(tuner.result, {name}=…), or FineTuner(..., {name}=…)" if name in _SETTINGS
                     else "it is part of the trained result (tuner.result), which training and load() set")
            raise AttributeError(f"FineTuner.{name} cannot be set: {where}.")
        super().__setattr__(name, value)

    @classmethod
    def from_run(cls, run: TrainedRun, **settings: Any) -> FineTuner:
        """A FineTuner that holds ``run`` (as :meth:`load` gives), with default settings or ``settings``."""
        chosen = {"weights": run.weights, "class_names": run.class_names, "head": run.head,
                  "image_size": run.image_size, **settings}
        tuner = cls(run.spec, **chosen)
        # the layers keep the policy they were built with (and a CPU-only machine is not warned again)
        object.__setattr__(tuner, "settings", dataclasses.replace(tuner.settings,
                                                                   mixed_precision=computes_in_float16(run.model)))
        tuner._run = run
        return tuner

    # ------------------------------------------------------------------ the trained result

    @property
    def result(self) -> TrainedRun:
        """The trained result: the model and what is known about it (what :meth:`save` writes)."""
        return require(self._run)

    @property
    def model(self) -> keras.Model | None:
        """The Keras model (``None`` before :meth:`build` or :meth:`fit`)."""
        return self._run.model if self._run is not None else None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._run.class_names if self._run is not None else self.settings.class_names

    @property
    def history(self) -> dict[str, History]:
        """Each phase's Keras history."""
        return self._run.history if self._run is not None else {}

    @property
    def best_epoch(self) -> BestEpoch | None:
        """The epoch whose weights the model holds, when they were chosen on validation results."""
        return self._run.best if self._run is not None else None

    @property
    def calibration(self) -> Calibration | None:
        """The temperature folded into the output layer, and the calibration error before and after."""
        return self._run.calibration if self._run is not None else None

    @property
    def refitted(self) -> Refit | None:
        """What the refit on all images ran, if :meth:`fit` refitted."""
        return self._run.refit if self._run is not None else None

    @property
    def solutions(self) -> dict[str, HeadSolution]:
        """The phases whose linear head was solved (``Phase(solve=True)``), and how."""
        return self._run.solutions if self._run is not None else {}

    @property
    def divergences(self) -> list[Divergence]:
        """Phases stopped on a non-finite loss."""
        return self._run.divergences if self._run is not None else []

    @_in_scope
    def build(self, num_classes: int | None = None, *, image_size: int | None = None) -> keras.Model:
        """Build the model now (``fit`` does this for you); returns it.

        The input size is ``image_size``, else the FineTuner's, else the backbone's default. A
        model built here and not trained yet is built again at the data's size if :meth:`fit`
        gets images loaded at another size (unless ``image_size`` was given to the FineTuner).
        """
        if self._run is None:
            if image_size is not None:
                self.settings.spec.check_size(image_size)
            self._run = build_run(self.settings, None, num_classes=num_classes, image_size=image_size)
        return self._run.model

    def _fitted(self, data: ImageData | None) -> TrainedRun:
        """The trained result, checked against ``data`` (built where there is none yet)."""
        run = fitted_run(self._run, self.settings, data)
        if run is None:
            run = self._run = build_run(self.settings, data)
        return run

    # ------------------------------------------------------------------ training

    @_in_scope
    def _phase(self, name: str, phase: Phase, train: TrainData, validation: ValidationData | None,
               fit: FitContext | None, callbacks: Callbacks, verbose: Verbose) -> History:
        bound = bind(train, validation, self.settings, self._run)
        run = self._fitted(bound.source)
        fit = fit or FitContext.of(self.settings, distributed=self.strategy is not None)

        def rebind() -> Bound:  # a folder is loaded again for each stage, as for each phase
            return bind(train, validation, self.settings, self._run)

        return run_phase(name, phase, run, bound, fit, self.settings, callbacks, verbose,
                         rebind=rebind if is_path(train) else None)

    def train_head(self, train: TrainData, validation: ValidationData | None = None, *, phase: Phase | None = None,
                   callbacks: Callbacks = (), verbose: Verbose = "auto") -> History:
        """Phase 1: train the head with the backbone frozen.

        Args:
            train: ``ImageData``, a ``tf.data.Dataset`` of ``(images, labels)`` batches, or a folder.
            validation: Validation batches (``ImageData.validation`` is used when omitted).
            phase: Overrides ``settings.head_phase`` for this call.
            callbacks: Keras callbacks, passed to ``model.fit``.
            verbose: Keras' ``verbose``.

        Returns:
            The Keras history of this phase (``{"loss": [...], "val_accuracy": [...], …}``).
        """
        return self._phase("head", phase or self.settings.head_phase, train, validation, None, callbacks, verbose)

    def fine_tune(self, train: TrainData, validation: ValidationData | None = None, *, phase: Phase | None = None,
                  callbacks: Callbacks = (), verbose: Verbose = "auto") -> History:
        """Phase 2: unfreeze the top of the backbone and train it at a low learning rate."""
        chosen = phase or self.settings.fine_tune_phase
        if chosen is None:
            raise ConfigError("fine_tune_phase is None: pass phase=Phase(...) to fine_tune().")
        return self._phase("fine_tune", chosen, train, validation, None, callbacks, verbose)

    def fit(self, train: TrainData, validation: ValidationData | None = None, *, callbacks: Callbacks = (),
            verbose: Verbose = "auto", checkpoint_dir: PathLike | None = None,
            restart: bool = False) -> dict[str, History]:
        """Run :meth:`train_head`, then :meth:`fine_tune` (unless ``fine_tune_phase`` is None),
        then calibrate on the validation images and refit (as the settings say).

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
        train = load_if_path(train, self.settings, self._run)  # once: calibration and refit need the ImageData
        fit = self._fit_context(train, validation, checkpoint_dir, restart)
        everything = refit_data(self.settings, train, validation, fresh=not self._trained)  # checked first
        self._phase("head", self.settings.head_phase, train, validation, fit, callbacks, verbose)
        fine = self.settings.fine_tune_phase
        if fine is not None and fine.epochs:
            self._phase("fine_tune", fine, train, validation, fit, callbacks, verbose)
        run = self.result
        after_training(run, train, validation, temperature_scaling=self.settings.temperature_scaling,
                       cached=fit.cached_validation)
        if everything is not None and isinstance(train, ImageData):
            with self._scope():
                run = self._run = refit(run, train, everything, self.settings, fit, verbose)
        kept = samples(validation if isinstance(validation, ImageData) else train, SAMPLE_COUNT, run.image_settings)
        if kept is not None:  # else the samples a loaded run came with stay
            run.samples = kept
        return run.history

    @property
    def _trained(self) -> bool:
        return self._run is not None and self._run.trained

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        """The distribution strategy's scope, or nothing on one device."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def _fit_context(self, train: TrainData, validation: ValidationData | None, checkpoint_dir: PathLike | None,
                     restart: bool) -> FitContext:
        """One fit's working state: with ``checkpoint_dir``, its checkpoint and a feature cache on disk."""
        fit = FitContext.of(self.settings, distributed=self.strategy is not None)
        if checkpoint_dir is None:
            return fit
        if self._trained:
            raise ConfigError("fit(checkpoint_dir=…) resumes a fit that starts from the pretrained weights; this "
                              "FineTuner already holds a trained (or loaded) model. Use a new FineTuner.")
        directory = Path(checkpoint_dir)
        fit.checkpoint = Checkpoint(directory, self._fingerprint(train, validation), restart=restart)
        cache = fit.cache
        from_files = isinstance(train, ImageData) and train.train_files is not None
        if cache is not None and cache.directory is None and from_files:  # on disk: a resumed fit reuses them
            fit.cache = FeatureCache(directory / "features", memory_limit=cache.memory_limit)
        return fit

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

    def _fingerprint(self, train: TrainData, validation: ValidationData | None) -> dict[str, Any]:
        run = self._run
        return fingerprint(self.settings, train, validation,
                           image_size=run.image_size if run is not None else self.settings.image_size,
                           head=run.head if run is not None else self.settings.head)

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
        chosen = self.settings.head_phase if phase == "head" else (self.settings.fine_tune_phase or FINE_TUNE_PHASE)
        bound = bind(train, None, self.settings, self._run)
        run = self._fitted(bound.source)
        with preserved(run.model):
            chosen.policy.apply(run.model, self.settings.spec, clamp=True)
            own = dataclasses.replace(bound, train=sweep_batches(bound.train, bound.data))
            trained, train_ds, _ = what_trains(f"{phase} (learning-rate sweep)", run, own,
                                               FitContext.of(self.settings, distributed=False), self.settings, (), 0)
            trained.compile(optimizer=scaled(trained, constant_rate_optimizer(chosen.make_optimizer(1))),
                            loss=run.head.loss(), jit_compile=self.settings.jit_compile)
            rates, losses = sweep(trained, train_ds, start=start, end=end, steps=steps, beta=beta,
                                  stop_factor=stop_factor)
        result = sweep_values(rates, losses, phase=phase)
        log.info("Learning-rate sweep (%s phase, %d steps): suggested learning rate %.3g", phase, len(rates),
                 result.suggestion)
        return result

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
        run = self.result
        if run.head.task != "single_label":
            raise ConfigError(f"Temperature scaling is for single-label heads; this head is {run.head.task!r}.")
        fold(run, calibrate(*run.outputs_and_labels(data))[0])
        run.held_out = None
        assert run.calibration is not None
        return run.calibration

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
        return self.result.evaluate(data, tta=self._tta(tta, augment))

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
        return self.result.predict(images, batch_size=batch_size, tta=self._tta(tta, augment))

    def _tta(self, views: int, augment: Augment | None) -> TestTimeAugmentation | None:
        if views == 0:
            return None
        return TestTimeAugmentation(views, augment or self.result.augment or Augment(), seed=self.settings.seed)

    def write_report(self, data: ImageData, out: PathLike) -> dict[str, Any]:
        """Evaluate on ``data``'s validation split and write metrics.json, labels.txt and the PNGs.

        The validation images go through the network once: the metrics and the grid of examples
        come from the same predictions. See :func:`transferkit.report.write_report` for what is
        written. Returns the metrics.
        """
        from transferkit.report import write_report  # matplotlib is imported only for reports

        run, files = self.result, data.validation_files
        # a refitted model has trained on the validation images: report what it scored before
        if run.held_out is None and run.refit is not None:
            log.warning("This model was refitted on its training and validation images: the validation figures "
                        "of this report come from images it has trained on and are optimistic.")
        held_out = run.held_out or validation_results(run, data)
        return write_report(
            out, class_names=run.class_names, history=run.history, evaluation=held_out.evaluation,
            examples=held_out.examples, truth=files.labels if files is not None else None,
            image_settings=run.image_settings, skipped=data.skipped, best=run.best,
            refit=run.refit, calibration=run.calibration,
            solved={name: solution.summary() for name, solution in run.solutions.items()},
        )

    # ------------------------------------------------------------------ persistence

    def save(self, directory: PathLike) -> Path:
        """Write ``model.keras`` and ``transferkit.json`` (classes, settings, history) to ``directory``.

        ``model.keras`` also loads without transferkit, with ``keras.saving.load_model`` alone (its
        preprocessing is written with built-in Keras layers; not for a TensorFlow Hub backbone, whose
        module needs transferkit's ``HubLayer``). It holds no optimizer: training further starts a new phase.
        A few validation images go beside it (``samples.npz``) after a fit on ImageData: exports are
        verified on them.
        """
        return self.result.save(directory)

    @classmethod
    def load(cls, directory: PathLike, *, safe_mode: bool = True) -> FineTuner:
        """Load a FineTuner written by :meth:`save`; predictions are identical.

        Args:
            directory: The folder :meth:`save` wrote.
            safe_mode: Passed to ``keras.saving.load_model`` for runs of other backbones. A run on a
                TensorFlow Hub module is rebuilt from its recorded handle and only its weights are
                read, so it loads with the default.
        """
        return cls.from_run(TrainedRun.load(directory, safe_mode=safe_mode))
