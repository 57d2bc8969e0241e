"""The loaders: folders, CSV files and arrays in, :class:`ImageData` (both pipelines) out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from transferkit._errors import ConfigError, DataError
from transferkit._types import PathLike
from transferkit.data._images import as_image_batch
from transferkit.data._pipelines import (
    PipelineOptions,
    PipelineSettings,
    array_pipeline,
    file_pipeline,
    pipeline_settings,
)
from transferkit.data._sources import ImageFiles, checked_class_names, read_csv, scan_folder
from transferkit.data._splits import class_weights, stratified_split

if TYPE_CHECKING:
    import pandas
    from typing_extensions import Unpack


@dataclass
class ImageData:
    """Train and validation pipelines plus what a model needs to know about them.

    Attributes:
        train: Training batches ``(images, labels)``, shuffled (and augmented if asked).
        validation: Validation batches in a fixed order, or ``None``.
        class_names: Name of each class index.
        settings: How the pipelines were made (image size, batch size, resize mode,
            background, augmentation, seed); a model predicts later images the same way.
        class_weight: Balanced weights per class index of the training split (single-label).
        train_files, validation_files: The files behind each split (``None`` for arrays).
        skipped: ``(path, reason)`` of files left out as unusable.
        multi_label: Labels are multi-hot rows rather than class indices.
        num_train, num_validation: Images in each split.
        train_ordered: The training split in a fixed order without augmentation (for feature
            extraction).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: tuple[str, ...]
    settings: PipelineSettings
    class_weight: dict[int, float] | None = None
    train_files: ImageFiles | None = None
    validation_files: ImageFiles | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    multi_label: bool = False
    num_train: int = 0
    num_validation: int = 0
    train_ordered: tf.data.Dataset | None = None


def _from_files(files: ImageFiles, settings: PipelineSettings, validation_files: ImageFiles | None, *,
                cache: bool = True) -> ImageData:
    if validation_files is None:
        train_idx, val_idx = stratified_split(files.labels, validation_fraction=settings.validation_split,
                                              seed=settings.seed)
        train_files, val_files = files.subset(train_idx), (files.subset(val_idx) if len(val_idx) else None)
    else:
        train_files, val_files = files, validation_files
    return ImageData(
        train=file_pipeline(train_files, settings, training=True, cache=cache),
        validation=file_pipeline(val_files, settings, cache=cache) if val_files is not None else None,
        class_names=files.class_names,
        settings=settings,
        class_weight=None if files.multi_label else class_weights(train_files.labels, len(files.class_names)),
        train_files=train_files,
        validation_files=val_files,
        skipped=files.skipped,
        multi_label=files.multi_label,
        num_train=len(train_files),
        num_validation=len(val_files) if val_files is not None else 0,
        train_ordered=file_pipeline(train_files, settings, cache=False),
    )


def all_images(data: ImageData) -> ImageData:
    """``data``'s training and validation files as one training set (same settings, no validation)."""
    if data.train_files is None or data.validation_files is None:
        raise ConfigError("Only ImageData from files (load_folder, load_csv, from_files) can be merged.")
    a, b = data.train_files, data.validation_files
    merged = ImageFiles(a.paths + b.paths, np.concatenate([a.labels, b.labels]), a.class_names, data.skipped)
    return _from_files(merged, dataclasses.replace(data.settings, validation_split=0.0), None)


def from_files(files: ImageFiles, *, validation_files: ImageFiles | None = None, cache: bool = True,
               **options: Unpack[PipelineOptions]) -> ImageData:
    """Split ``files`` (stratified, seeded) and build both pipelines.

    Args:
        files: Images and labels, from :func:`scan_folder` or :func:`read_csv`.
        validation_files: A fixed validation set to use instead of a split.
        cache: Keep the decoded images in memory after the first epoch (``False`` decodes them
            every epoch: for datasets larger than memory).
        **options: Any :class:`PipelineSettings` field (``image_size``, ``batch_size``,
            ``validation_split``, ``seed``, ``resize``, ``background``, ``augment``).
    """
    return _from_files(files, pipeline_settings(dict(options), where="from_files"), validation_files, cache=cache)


def load_folder(directory: PathLike, *, strict: bool = False, progress: bool = False,
                **options: Unpack[PipelineOptions]) -> ImageData:
    """Load ``DIR/<class>/<images>`` into train and validation pipelines.

    Args:
        directory: A folder of class sub-folders (see :func:`scan_folder` for the rules).
        strict: Raise instead of skipping files that cannot be used as images.
        progress: Show a progress bar while every image is checked.
        **options: Any :class:`PipelineSettings` field (``image_size``, ``batch_size``,
            ``validation_split``, ``seed``, ``resize``, ``background``, ``augment``).

    Example:
        >>> data = load_folder("flower_photos", image_size=224, augment=Augment())
        >>> data.class_names
        ('daisy', 'dandelion', 'roses', 'sunflowers', 'tulips')
    """
    settings = pipeline_settings(dict(options), where="load_folder")
    return _from_files(scan_folder(directory, strict=strict, progress=progress), settings, None)


def load_csv(
    table: PathLike | pandas.DataFrame,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: PathLike | None = None,
    multi_label: bool = False,
    label_separator: str = " ",
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    **options: Unpack[PipelineOptions],
) -> ImageData:
    """Load images listed in a CSV file or DataFrame (see :func:`read_csv` for the columns and
    the rules for blank, repeated and unknown rows).

    ``class_names`` fixes the classes and their order; a label outside them is an error.
    ``**options`` are :class:`PipelineSettings` fields, as for :func:`load_folder`.
    """
    settings = pipeline_settings(dict(options), where="load_csv")
    files = read_csv(table, path_column=path_column, label_column=label_column, root=root,
                     multi_label=multi_label, label_separator=label_separator, class_names=class_names,
                     strict=strict)
    return _from_files(files, settings, None)


def _array_labels(labels: Sequence[int | str] | np.ndarray, count: int,
                  class_names: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices of ``labels`` (indices or names) and the class names, or a DataError."""
    raw = np.asarray(labels)
    if raw.ndim != 1:
        hint = " For one-hot rows pass labels.argmax(axis=1)." if raw.ndim == 2 else ""
        raise DataError(f"Expected labels of shape (n,): one class index or name per image. "
                        f"Received shape {raw.shape}.{hint}")
    if len(raw) != count:
        raise DataError(f"Got {count} images but {len(raw)} labels; they must match one to one.")
    if count == 0:
        raise DataError("from_arrays() got no images. Pass at least two classes' worth of images.")
    names = checked_class_names(class_names, where="from_arrays") if class_names is not None else None
    if raw.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        raw = raw.astype(np.int64)
    if raw.dtype.kind in "OUS":
        text = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        names = names if names is not None else tuple(sorted(set(text)))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({t for t in text if t not in index})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            shown += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise DataError(f"Labels {shown} are not in class_names. Known classes: "
                            f"{', '.join(repr(n) for n in names)}. Fix the labels or add the classes to class_names.")
        y = np.asarray([index[t] for t in text], dtype=np.int64)
    elif raw.dtype.kind in "biuf":
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            odd = raw[~(np.isfinite(raw) & (raw == np.round(raw)))][:5].tolist()
            raise DataError(f"Labels must be whole class indices. Received: {odd} among the labels.")
        y = raw.astype(np.int64)
        if names is None:
            names = tuple(str(i) for i in range(max(int(y.max()) + 1, 1)))
    else:
        raise DataError(f"Labels must be class indices or class names. Received labels of dtype {raw.dtype}.")
    outside = sorted({int(v) for v in y if not 0 <= v < len(names)})
    if outside:
        shown = ", ".join(str(v) for v in outside[:5]) + (", …" if len(outside) > 5 else "")
        raise DataError(f"Labels must lie in [0, {len(names) - 1}] for {len(names)} class names. "
                        f"Received labels outside: {shown}. Fix the labels or pass the full class_names.")
    if len(names) < 2:
        raise DataError(f"A classifier needs at least two classes. Received class_names={list(names)}.")
    return y, names


def from_arrays(
    images: np.ndarray,
    labels: Sequence[int | str] | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    **options: Unpack[PipelineOptions],
) -> ImageData:
    """Build pipelines from numpy arrays of pixels in [0, 255].

    Grayscale images are repeated to RGB, RGBA is composited onto ``background``, and images
    are resized (stretched) to ``image_size``. ``labels`` are class indices or class names: a name
    is numbered by its position in ``class_names`` (sorted names when ``class_names`` is omitted),
    and a name that is not in ``class_names``, or an index outside it, is a DataError.
    ``**options`` are :class:`PipelineSettings` fields, as for :func:`load_folder`
    (``resize`` can only be ``"stretch"`` here).

    Example:
        >>> data = from_arrays(x_train, y_train, class_names=names, image_size=96)
    """
    settings = pipeline_settings({"resize": "stretch", **options}, where="from_arrays")
    if settings.resize != "stretch":
        raise ConfigError(f"from_arrays() stretches arrays to image_size. Received: resize={settings.resize!r}; "
                          "resize the arrays yourself first, or leave resize out.")
    array = as_image_batch(images, channels=(1, 3, 4))
    y, class_names = _array_labels(labels, len(array), class_names)
    train_idx, val_idx = stratified_split(y, validation_fraction=settings.validation_split, seed=settings.seed)
    return ImageData(
        train=array_pipeline(array[train_idx], y[train_idx], settings, training=True),
        validation=array_pipeline(array[val_idx], y[val_idx], settings) if len(val_idx) else None,
        class_names=tuple(class_names),
        settings=settings,
        class_weight=class_weights(y[train_idx], len(class_names)),
        num_train=len(train_idx),
        num_validation=len(val_idx),
        train_ordered=array_pipeline(array[train_idx], y[train_idx], settings),
    )
