"""Data meets model: the batches a phase runs on, what the data says about the model, and building it.

:func:`bind` turns what a training call was given into :class:`Bound` batches (ImageData also
brings its classes, image settings, augmentation and class weights); :func:`fitted_run` makes sure
a :class:`~transferkit._run.TrainedRun` fits that data — building the model where there is none
yet, or building it again where an untrained one was built at another size.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import keras
import tensorflow as tf

from transferkit._errors import ConfigError, DataError
from transferkit._heads import Head
from transferkit._inference import labelled_batches
from transferkit._model import MIXED_PRECISION, assemble_model, build_model, dtype_policy
from transferkit._run import TrainedRun
from transferkit._settings import Settings, is_path
from transferkit.data._images import WHITE
from transferkit.data._kinds import TrainData, ValidationData
from transferkit.data._loaders import ImageData, load_folder
from transferkit.data._pipelines import PipelineSettings

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class Bound:
    """The batches one phase trains and validates on, and the ImageData behind them.

    Attributes:
        train: Training batches.
        validation: Validation batches, or ``None``.
        data: The ImageData whose splits these are, whose features may be cached (``None`` for a
            dataset, or where a separate validation set was given).
        source: The training ImageData (its classes, image settings and class weights), if any.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    data: ImageData | None
    source: ImageData | None


def load_if_path(train: TrainData, settings: Settings, run: TrainedRun | None) -> TrainData:
    """A folder path loaded as ImageData at the model's size (else the settings', else the backbone's)."""
    if not is_path(train):
        return train
    size = run.image_size if run is not None else (settings.image_size or settings.spec.input_size)
    return load_folder(train, image_size=size, seed=settings.seed or 0)  # type: ignore[arg-type]


def bind(train: TrainData, validation: ValidationData | None, settings: Settings, run: TrainedRun | None) -> Bound:
    """The batches a phase runs on."""
    train = load_if_path(train, settings, run)
    if isinstance(train, ImageData):
        if validation is None:
            return Bound(train.train, train.validation, train, train)  # features are cached for ImageData only
        return Bound(train.train, labelled_batches(validation), None, train)
    if isinstance(train, tf.data.Dataset):
        return Bound(train, labelled_batches(validation) if validation is not None else None, None, None)
    raise DataError(
        f"Expected training data as ImageData (from load_folder/load_csv/from_arrays), a tf.data.Dataset "
        f"of (images, labels) batches, or a folder path. Received: {type(train).__name__}."
    )


def class_weight(settings: Settings, run: TrainedRun) -> dict[int, float] | None:
    """The class weights a phase trains with: the settings' dict, or ``"balanced"`` from the last
    ImageData trained on."""
    if isinstance(settings.class_weight, dict):
        return settings.class_weight
    if settings.class_weight == "balanced":
        if run.class_weight is None:
            raise ConfigError('class_weight="balanced" needs ImageData (from a loader) to count classes.')
        return run.class_weight
    return None


def default_head(settings: Settings, data: ImageData | None) -> Head:
    if settings.head is not None:
        return settings.head
    return Head(task="multi_label") if data is not None and data.multi_label else Head()


def fitted_run(run: TrainedRun | None, settings: Settings, data: ImageData | None) -> TrainedRun | None:
    """``run`` after checking it against ``data`` and taking the data's classes and image settings.

    Returns ``None`` where the model has to be built (again): there was none, or an untrained one
    was built at another size than the data's.
    """
    if data is None:
        return run
    size = data.settings.image_size
    expected = run.image_size if run is not None else settings.image_size
    if expected is not None and size != expected and (settings.image_size is not None or (run and run.trained)):
        raise DataError(
            f"The data was loaded at image_size={size} but this FineTuner uses "
            f"image_size={expected}. Load the data with image_size={expected}."
        )
    if run is None:
        return None
    if size != run.image_size:
        log.warning("Building the model again at the data's image size %d: build() made it at %d. "
                    "Changes made to that model are not in the new one; pass image_size= to "
                    "FineTuner or build() to choose the size.", size, run.image_size)
        return None
    # a model built by build(n) with numbered classes and not trained yet takes the data's names
    renamable = not (run.trained or settings.class_names is not None) and len(data.class_names) == len(
        run.class_names)
    if tuple(data.class_names) != run.class_names and not renamable:
        raise DataError(f"The data's classes {list(data.class_names)} differ from the model's "
                        f"{list(run.class_names)}.")
    run.class_names = tuple(data.class_names)
    run.image_settings = dataclasses.replace(run.image_settings, resize=data.settings.resize,
                                             background=data.settings.background)
    run.augment = data.settings.augment
    run.class_weight = data.class_weight
    return run


def build_run(settings: Settings, data: ImageData | None, *, num_classes: int | None = None,
              image_size: int | None = None, head: Head | None = None) -> TrainedRun:
    """Build the model for ``settings`` and ``data`` (or the explicit ``num_classes`` and ``image_size``),
    with ``head`` (by default the settings', else the one the data's labels call for)."""
    if data is not None:
        names: tuple[str, ...] | None = tuple(data.class_names)
        size: int | None = data.settings.image_size
    else:
        names, size = settings.class_names, image_size or settings.image_size
    n = num_classes or (len(names) if names is not None else settings.num_classes)
    if n is None:
        raise ConfigError("The number of classes is unknown: pass num_classes=… or fit on data first.")
    if names is None:
        names = tuple(str(i) for i in range(n))
    if len(names) != n:
        raise ConfigError(f"num_classes={n} but the model has {len(names)} class names.")
    if settings.seed is not None:
        keras.utils.set_random_seed(settings.seed)
    head = head or default_head(settings, data)
    network = settings.network
    with dtype_policy(MIXED_PRECISION if settings.mixed_precision else None):
        if network is not None and size in (None, int(network.input_shape[1])):
            model = assemble_model(settings.spec, network, num_outputs=n, head=head)
        else:
            model = build_model(settings.spec, num_outputs=n, weights=settings.weights, head=head, image_size=size)
    built = int(model.input_shape[1])
    image = (PipelineSettings(image_size=built, resize=data.settings.resize, background=data.settings.background)
             if data is not None else PipelineSettings(image_size=built, resize="pad", background=WHITE))
    log.info("Built %s (%s weights) at %d px with %d outputs", settings.spec.name,
             "random" if settings.weights is None else settings.weights, built, n)
    return TrainedRun(model=model, spec=settings.spec,
                      weights=None if settings.weights is None else str(settings.weights), class_names=names,
                      head=head, image_settings=image, augment=data.settings.augment if data is not None else None,
                      class_weight=data.class_weight if data is not None else None)
