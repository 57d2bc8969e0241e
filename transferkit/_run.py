"""The trained result: what a fit produced, what ``save`` writes and what ``load`` reads back.

A :class:`TrainedRun` is one of the three kinds of state a :class:`~transferkit.FineTuner` has:
its settings (given to the constructor, never changed), the trained result (this value), and one
fit's working state (``transferkit._stage.FitContext``, gone when the fit returns). Everything
that reads a trained model — evaluation, prediction, reports, exports — needs this value and
nothing else, so ``transferkit.export`` loads a run folder into one without building a FineTuner.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from transferkit._atomic import atomic_paths
from transferkit._calibration import Calibration
from transferkit._errors import DataError, NotFittedError, UnknownBackboneError
from transferkit._heads import OUTPUT_LAYER, Head
from transferkit._inference import (
    TestTimeAugmentation,
    evaluation_batches,
    outputs_and_labels,
    predict_outputs,
    prediction_input,
)
from transferkit._metrics import Evaluation, Predictions, evaluate_outputs
from transferkit._model import model_parts
from transferkit._saving import FORMAT, RunMetadata, load_run, save_run
from transferkit._selection import BestEpoch, Divergence, Refit, Snapshot
from transferkit._solve import HeadSolution
from transferkit._types import History, PathLike
from transferkit.backbones._registry import BackboneSpec, get_backbone, list_backbones
from transferkit.data._augment import Augment
from transferkit.data._kinds import EvalData, Images
from transferkit.data._pipelines import PipelineSettings

log = logging.getLogger("transferkit")

SAMPLES_FILE = "samples.npz"
"""Validation images kept in a run folder, so that an export is verified on images like the user's."""

SAMPLE_COUNT = 32  # enough to see a wrong export; small enough to keep a run folder light (compressed)


@dataclass(frozen=True)
class HeldOut:
    """What the model scored on validation images it had not trained on, for the report.

    Measured once after the phases (and kept through a refit, which then trains on those images).

    Attributes:
        examples: Predictions for the validation files (``None`` for arrays or a dataset).
        evaluation: The evaluation on the validation split.
    """

    examples: Predictions | None
    evaluation: Evaluation | None


@dataclass(kw_only=True)
class TrainedRun:
    """A trained model and everything known about how it was made.

    Attributes:
        model: The Keras model: raw 0–255 pixels in, the head's outputs out.
        spec: The backbone's spec.
        weights: The pretrained weights it started from (``"imagenet"``, a path, or ``None``).
        class_names: Name of each output.
        head: The head builder the model was made with.
        image_settings: How new images are fitted to the input (size, resize mode, background).
        history: Each phase's Keras history.
        best: Where the weights come from, when they were chosen on validation results.
        refit: What a refit on all images ran, if there was one.
        calibration: The temperature folded into the output layer, if any.
        solutions: The phases whose linear head was solved, and how.
        divergences: Phases stopped on a non-finite loss.
        samples: A few validation images (raw pixels at the input size) kept with the run for
            checking exports, or ``None``.
        held_out: The validation results measured before a refit (in memory only).
        augment: The training data's augmentation, the default for test-time augmentation (in
            memory only).
        kept: The best weights so far, which a later phase has to beat (in memory only).
        class_weight: The class weights of the last ImageData trained on, for ``class_weight="balanced"``
            (in memory only; ``None`` for multi-label data).
        trained: The model holds trained (or loaded) weights, not freshly built ones.
    """

    model: keras.Model
    spec: BackboneSpec
    weights: str | None
    class_names: tuple[str, ...]
    head: Head
    image_settings: PipelineSettings
    history: dict[str, History] = field(default_factory=dict)
    best: BestEpoch | None = None
    refit: Refit | None = None
    calibration: Calibration | None = None
    solutions: dict[str, HeadSolution] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)
    samples: np.ndarray | None = field(default=None, repr=False)
    held_out: HeldOut | None = field(default=None, repr=False)
    augment: Augment | None = None
    kept: Snapshot | None = field(default=None, repr=False)
    class_weight: dict[int, float] | None = field(default=None, repr=False)
    trained: bool = False

    @property
    def image_size(self) -> int:
        return int(self.model.input_shape[1])

    def output_layer(self) -> keras.layers.Dense:
        """The Dense layer whose outputs the loss sees (where a temperature is folded in)."""
        head = model_parts(self.model).head
        return (head or self.model).get_layer(OUTPUT_LAYER)

    def evaluation(self, outputs: np.ndarray, labels: np.ndarray) -> Evaluation:
        """Evaluate the model's ``outputs`` against ``labels``."""
        return evaluate_outputs(outputs, labels, task=self.head.task, loss=self.head.loss(),
                                class_names=self.class_names)

    def predict(self, images: Images, *, batch_size: int = 32, tta: TestTimeAugmentation | None = None
                ) -> Predictions:
        """Class probabilities for ``images`` (see :meth:`FineTuner.predict`)."""
        prepared = prediction_input(images, settings=self.image_settings)
        outputs = predict_outputs(self.model, prepared, batch_size=batch_size, tta=tta)
        return Predictions(outputs, self.class_names, prepared.paths)

    def outputs_and_labels(self, data: EvalData, *, tta: TestTimeAugmentation | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """The model's outputs for labelled ``data`` (see :meth:`FineTuner.evaluate`), and the labels."""
        batches = evaluation_batches(data, class_names=self.class_names, settings=self.image_settings)
        return outputs_and_labels(self.model, batches, tta=tta)

    def evaluate(self, data: EvalData, *, tta: TestTimeAugmentation | None = None) -> Evaluation:
        """Metrics of the model on labelled ``data`` (see :meth:`FineTuner.evaluate`)."""
        return self.evaluation(*self.outputs_and_labels(data, tta=tta))

    def forget_validation(self) -> None:
        """Drop what was measured on the validation split: the weights changed since."""
        self.refit = self.held_out = self.calibration = None

    # ------------------------------------------------------------------ the run folder

    def metadata(self) -> RunMetadata:
        return RunMetadata(
            format=FORMAT if model_parts(self.model).head is not None else 1,  # a format-1 model keeps its layout
            backbone=self.spec.name, hub_handle=self.spec.handle, weights=self.weights, image_size=self.image_size,
            class_names=self.class_names, head=self.head.to_config(), resize=self.image_settings.resize,
            background=self.image_settings.background, history=self.history,
            best=self.best.to_dict() if self.best is not None else None,
            refit=self.refit.to_dict() if self.refit is not None else None,
            calibration=self.calibration.to_dict() if self.calibration is not None else None,
        )

    def save(self, directory: PathLike) -> Path:
        """Write ``model.keras``, ``transferkit.json`` and the sample images (if any) to ``directory``."""
        out = save_run(directory, self.model, self.metadata())
        if self.samples is not None:
            with atomic_paths(out / SAMPLES_FILE, keep_suffix=True) as (path,):
                np.savez_compressed(path, images=self.samples)
        else:  # another run's images would check this run's exports
            (out / SAMPLES_FILE).unlink(missing_ok=True)
        return out

    @classmethod
    def load(cls, directory: PathLike, *, safe_mode: bool = True) -> TrainedRun:
        """Read a run folder written by :meth:`save` (or ``FineTuner.save``)."""
        model, meta = load_run(directory, safe_mode=safe_mode)
        backbone = meta.backbone
        if meta.hub_handle and backbone not in list_backbones(family="hub"):
            backbone = meta.hub_handle  # an unregistered Hub module: resolve its handle again
        return cls(
            model=model, spec=_backbone_of_run(backbone, directory), weights=meta.weights, class_names=meta.class_names,
            head=Head.from_config(meta.head),
            image_settings=PipelineSettings(image_size=int(model.input_shape[1]), resize=meta.resize,
                                            background=meta.background),
            history=meta.history, best=BestEpoch.from_dict(meta.best) if meta.best is not None else None,
            refit=Refit.from_dict(meta.refit) if meta.refit is not None else None,
            calibration=Calibration.from_dict(meta.calibration) if meta.calibration is not None else None,
            samples=read_samples(directory), trained=True,
        )


def read_samples(directory: PathLike) -> np.ndarray | None:
    """The validation images kept in a run folder, or ``None`` (runs saved without them)."""
    path = Path(directory) / SAMPLES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return np.asarray(stored["images"], dtype=np.uint8)
    except (OSError, ValueError, KeyError) as error:  # the model is what matters: load the run without them
        log.warning("Ignoring %s: it cannot be read (%s); exports of this run are checked on generated images.",
                    path, error)
        return None


def require(run: TrainedRun | None) -> TrainedRun:
    """``run``, or the error that says how to get one."""
    if run is None:
        raise NotFittedError("This FineTuner has no model yet: call fit() (or build()) first.")
    return run


def _backbone_of_run(name: str, run: PathLike) -> BackboneSpec:
    """The spec of the backbone a saved run names; a KerasHub preset folder that is gone is a DataError
    that says so (its layer groups and preprocessing come from the folder, for further training)."""
    try:
        return get_backbone(name)
    except UnknownBackboneError:
        if not os.path.isabs(name):
            raise
        raise DataError(
            f"The run {str(run)!r} was trained on the KerasHub preset folder {name!r}, which is no longer there. "
            f"Fix: put the preset folder (or a copy of it) back at {name}. The model alone loads without it: "
            f"keras.saving.load_model('{Path(run) / 'model.keras'}') after `import keras_hub`."
        ) from None
