"""Dataset loaders that return tf.data pipelines ready for a transferkit model.

Every loader yields ``(images, labels)`` batches with images as float32 RGB in [0, 255] at
``image_size × image_size`` — the model's first layer applies the backbone's own preprocessing.

Images are decoded with Pillow so that what a person sees is what the network gets: EXIF
orientation is honoured; grayscale, palette, CMYK and 16-bit images become RGB; transparent
pixels are composited onto a background colour instead of having their alpha dropped. Every file
is decoded once before training, so corrupt, truncated, empty or mislabelled files are found up
front and reported by name, never halfway through an epoch.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.errors import ConfigError, DataError, check_choice

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
RESIZE_MODES = ("pad", "stretch", "crop")
Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)


class SkippedFilesWarning(UserWarning):
    """Some files were left out of a dataset because they cannot be read as images."""


# ----------------------------------------------------------------------------- decoding


def _to_rgb(image: Image.Image, background: Color) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def _decode(path: str | os.PathLike[str], background: Color) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image), background)


def read_image(path: str | os.PathLike[str], *, background: Color = WHITE) -> Image.Image:
    """Open ``path`` as an upright RGB image (EXIF rotation applied, alpha composited).

    Raises:
        DataError: the file cannot be decoded (the message names it and says why).
    """
    try:
        return _decode(path, background)
    except _DECODE_ERRORS as error:
        raise DataError(f"Cannot read image {str(path)!r}: {_reason(path, error)}") from None


def _reason(path: str | os.PathLike[str], error: BaseException) -> str:
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (Pillow does not recognise the format)"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    return f"corrupt or truncated ({error})"


def resize_image(image: Image.Image, size: int, *, mode: str = "pad", background: Color = WHITE) -> np.ndarray:
    """Resize to ``size × size`` and return a uint8 array.

    Modes: ``"pad"`` keeps the aspect ratio and fills the borders with ``background``;
    ``"stretch"`` resizes each side independently; ``"crop"`` keeps the aspect ratio and
    crops the centre.
    """
    check_choice("resize", mode, RESIZE_MODES)
    resample = Image.Resampling.BILINEAR
    if mode == "stretch":
        out = image.resize((size, size), resample)
    elif mode == "crop":
        out = ImageOps.fit(image, (size, size), method=resample)
    else:
        scale = size / max(image.size)
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        out = Image.new("RGB", (size, size), background)
        out.paste(image.resize((w, h), resample), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8)


def load_image(
    path: str | os.PathLike[str], *, image_size: int, resize: str = "pad", background: Color = WHITE
) -> np.ndarray:
    """Read and resize one image file to a ``(image_size, image_size, 3)`` uint8 array."""
    return resize_image(read_image(path, background=background), image_size, mode=resize, background=background)


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it decodes fully."""
    try:
        _decode(path, WHITE)
    except _DECODE_ERRORS as error:
        return _reason(path, error)
    return None


def find_bad_images(
    paths: Sequence[str], *, workers: int | None = None, progress: bool = False
) -> list[tuple[str, str]]:
    """Decode every file (in parallel threads) and return ``(path, reason)`` for each failure.

    ``progress=True`` shows a progress bar (useful for thousands of files).
    """
    if not paths:
        return []
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    reasons: list[str | None] = []
    with ThreadPoolExecutor(max_workers=workers or min(16, 2 * (os.cpu_count() or 1))) as pool:
        for reason in pool.map(check_image, paths):
            reasons.append(reason)
            if bar is not None and (len(reasons) % 50 == 0 or len(reasons) == len(paths)):
                bar.update(len(reasons))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


# ----------------------------------------------------------------------------- file lists


@dataclass(frozen=True)
class ImageFiles:
    """A list of image files with their labels.

    Attributes:
        paths: File paths.
        labels: ``(n,)`` int class indices, or ``(n, num_classes)`` float multi-hot rows.
        class_names: Name of each class index.
        skipped: ``(path, reason)`` for files left out because they are not usable images.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageFiles:
        """The files at ``indices`` (same classes, nothing skipped)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageFiles(tuple(self.paths[i] for i in idx), self.labels[idx], self.class_names)

    def class_counts(self) -> np.ndarray:
        if self.multi_label:
            return self.labels.sum(axis=0).astype(np.int64)
        return np.bincount(self.labels, minlength=len(self.class_names))


def _report_skipped(skipped: Sequence[tuple[str, str]], strict: bool, where: str) -> None:
    if not skipped:
        return
    lines = [f"  {path}: {reason}" for path, reason in skipped[:50]]
    if len(skipped) > 50:
        lines.append(f"  … and {len(skipped) - 50} more")
    listing = "\n".join(lines)
    if strict:
        raise DataError(f"{len(skipped)} file(s) in {where} cannot be used (strict=True):\n{listing}")
    message = f"Skipping {len(skipped)} file(s) in {where} that cannot be used as images:\n{listing}"
    warnings.warn(message, SkippedFilesWarning, stacklevel=3)


def scan_folder(
    directory: str | os.PathLike[str],
    *,
    strict: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    progress: bool = False,
) -> ImageFiles:
    """List a folder of class sub-folders (``DIR/<class>/<images>``), checking every image.

    Sub-folders of a class folder count as that class. Files that cannot be decoded and files
    with other extensions are skipped with one :class:`SkippedFilesWarning` listing them, or
    raise with ``strict=True``. Hidden files and folders are ignored.

    Raises:
        DataError: the folder is missing, has fewer than two classes, or a class has no images.
    """
    root = Path(directory)
    if not root.exists():
        raise DataError(f"Data folder {str(root)!r} does not exist. Check the path.")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder. Expected DIR/<class>/<image files>.")
    exts = tuple(e.lower() for e in extensions)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped: list[tuple[str, str]] = [
        (str(p), "not inside a class sub-folder")
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    if len(class_dirs) < 2:
        found = f"only {class_dirs[0].name!r}" if class_dirs else "none"
        raise DataError(
            f"Data folder {str(root)!r} needs at least two class sub-folders (found {found}). "
            "Expected DIR/<class>/<image files>, for example DIR/cat/1.jpg and DIR/dog/2.jpg."
        )
    candidates: list[tuple[str, int]] = []
    for label, class_dir in enumerate(class_dirs):
        for folder, subdirs, files in os.walk(class_dir):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                if name.lower().endswith(exts):
                    candidates.append((path, label))
                else:
                    skipped.append((path, f"unsupported file type {Path(name).suffix or '(none)'!r}"))
    bad = dict(find_bad_images([p for p, _ in candidates], progress=progress))
    skipped.extend((p, bad[p]) for p, _ in candidates if p in bad)
    good = [(p, label) for p, label in candidates if p not in bad]
    counts = np.bincount([label for _, label in good], minlength=len(class_dirs))
    empty = [str(class_dirs[i]) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"Class folder {empty[0]!r} has no usable images"
            + (f" (and {len(empty) - 1} more class folders)" if len(empty) > 1 else "")
            + f". Add images ({', '.join(exts)}) or remove the folder."
        )
    _report_skipped(skipped, strict, repr(str(root)))
    return ImageFiles(
        paths=tuple(p for p, _ in good),
        labels=np.asarray([label for _, label in good], dtype=np.int64),
        class_names=tuple(d.name for d in class_dirs),
        skipped=tuple(skipped),
    )


def read_csv(
    table: str | os.PathLike[str] | Any,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: str | os.PathLike[str] | None = None,
    multi_label: bool = False,
    label_separator: str = " ",
    strict: bool = False,
) -> ImageFiles:
    """Read (path, label) rows from a CSV file or a pandas DataFrame.

    Args:
        table: CSV file path or a DataFrame with the two columns.
        path_column: Column holding image paths (relative paths are taken from ``root``, or
            from the CSV file's folder).
        label_column: Column holding the class name — or, with ``multi_label=True``, the
            class names separated by ``label_separator``.
        root: Folder that relative paths start from.
        strict: Raise instead of skipping files that cannot be decoded.

    Raises:
        DataError: the CSV or a column is missing, a row's file does not exist, or fewer than
            two classes appear.
    """
    if hasattr(table, "columns") and hasattr(table, "__getitem__"):
        where = "the DataFrame"
        columns = [str(c) for c in table.columns]
        rows = None
        base = Path(root) if root is not None else Path.cwd()
    else:
        csv_path = Path(table)
        where = repr(str(csv_path))
        if not csv_path.is_file():
            raise DataError(f"CSV file {str(csv_path)!r} does not exist. Check the path.")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
        base = Path(root) if root is not None else csv_path.parent
    for column, argument in ((path_column, "path_column"), (label_column, "label_column")):
        if column not in columns:
            raise DataError(
                f"{where} has no column {column!r} ({argument}). Columns found: {columns}. "
                f"Pass {argument}=<one of them>."
            )
    if rows is None:
        pairs = list(zip(table[path_column], table[label_column]))
    else:
        pairs = [(row[path_column], row[label_column]) for row in rows]
    paths: list[str] = []
    label_sets: list[list[str]] = []
    for number, (raw_path, raw_label) in enumerate(pairs, start=2 if rows is not None else 0):
        path = Path(str(raw_path))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            row = f"row {number}" if rows is not None else f"row index {number}"
            raise DataError(
                f"{where}, {row}: image file {str(path)!r} does not exist. "
                "Fix the path (relative paths start from the CSV's folder, or from root=…)."
            )
        names = str(raw_label).split(label_separator) if multi_label else [str(raw_label)]
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise DataError(f"{where}: the label of {str(path)!r} is empty.")
        paths.append(str(path))
        label_sets.append(names)
    class_names = tuple(sorted({n for names in label_sets for n in names}))
    if len(class_names) < 2:
        raise DataError(f"{where} has fewer than two classes ({list(class_names)}). A classifier needs two or more.")
    index = {n: i for i, n in enumerate(class_names)}
    if multi_label:
        labels = np.zeros((len(paths), len(class_names)), dtype=np.float32)
        for row, names in enumerate(label_sets):
            labels[row, [index[n] for n in names]] = 1.0
    else:
        labels = np.asarray([index[names[0]] for names in label_sets], dtype=np.int64)
    files = ImageFiles(tuple(paths), labels, class_names)
    bad = find_bad_images(list(files.paths))
    _report_skipped(bad, strict, where)
    if bad:
        drop = {p for p, _ in bad}
        files = files.subset([i for i, p in enumerate(files.paths) if p not in drop])
    return replace(files, skipped=tuple(bad))


# ----------------------------------------------------------------------------- splits & weights


def stratified_split(
    labels: np.ndarray, *, validation_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train / validation keeping each class's share (seeded).

    Every class with at least two items gets at least one in each split. Multi-label rows
    are stratified by their first positive class.

    Returns:
        ``(train_indices, validation_indices)``, each sorted.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(
            f"Expected validation_split in [0, 1). Received: validation_split={validation_fraction!r}."
        )
    labels = np.asarray(labels)
    strata = labels.argmax(axis=1) if labels.ndim == 2 else labels
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        n_val = int(round(len(members) * validation_fraction))
        if validation_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (num_classes · n_c)`` for integer labels.

    Pass them to ``fit(class_weight=…)`` so that a rare class counts as much as a common one.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return {c: float(total / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


# ----------------------------------------------------------------------------- pipelines


@dataclass(frozen=True, kw_only=True)
class Augment:
    """Random augmentation of training batches, as Keras preprocessing layers.

    Attributes:
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``None``.
        rotation: Maximum rotation as a fraction of a full turn (0 disables).
        zoom: Maximum zoom in or out as a fraction (0 disables).
        contrast: Maximum contrast change as a fraction (0 disables).

    Example:
        >>> load_folder("photos", augment=Augment(rotation=0.1))
    """

    flip: str | None = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if self.flip is not None:
            check_choice("flip", self.flip, ("horizontal", "vertical", "horizontal_and_vertical"))
        for name in ("rotation", "zoom", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"Expected {name} in [0, 1). Received: {name}={value!r}.")

    def layers(self, seed: int | None = None) -> keras.Sequential:
        """The augmentation as one Keras model (works inside tf.data or a model)."""
        stack: list[keras.layers.Layer] = []
        if self.flip:
            stack.append(keras.layers.RandomFlip(self.flip, seed=seed))
        if self.rotation:
            stack.append(keras.layers.RandomRotation(self.rotation, fill_mode="reflect", seed=seed))
        if self.zoom:
            stack.append(keras.layers.RandomZoom(self.zoom, fill_mode="reflect", seed=seed))
        if self.contrast:
            # RandomContrast expects a declared value range; pixels here are 0–255
            stack.append(keras.layers.RandomContrast(self.contrast, value_range=(0, 255), seed=seed))
        return keras.Sequential(stack, name="augment")


def _finish(
    ds: tf.data.Dataset, *, count: int, batch_size: int, training: bool, augment: Augment | None,
    seed: int, cache: bool | str,
) -> tf.data.Dataset:
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if training:
        ds = ds.shuffle(max(1, count), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        model = augment.layers(seed=seed)
        ds = ds.map(lambda x, y: (model(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_dataset(
    files: ImageFiles,
    *,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    augment: Augment | None = None,
    resize: str = "pad",
    background: Color = WHITE,
    seed: int = 0,
    cache: bool | str = True,
) -> tf.data.Dataset:
    """A tf.data pipeline over ``files``: parallel decode → cache → shuffle → batch → augment → prefetch.

    Decoding happens once: the decoded, resized uint8 images are cached (in memory, or in the
    file prefix given as ``cache``), so later epochs cost no decoding. Training pipelines
    reshuffle every epoch and apply ``augment``; evaluation pipelines keep file order.
    """
    check_choice("resize", resize, RESIZE_MODES)
    if not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"Expected image_size to be a positive integer. Received: image_size={image_size!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}.")
    background = tuple(int(c) for c in background)  # type: ignore[assignment]

    def decode(path: bytes) -> np.ndarray:
        return load_image(path.decode(), image_size=image_size, resize=resize, background=background)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    labels = files.labels.astype(np.float32 if files.multi_label else np.int64)
    ds = tf.data.Dataset.from_tensor_slices((list(files.paths), labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, count=len(files), batch_size=batch_size, training=training, augment=augment,
                   seed=seed, cache=cache)


@dataclass
class ImageData:
    """Train and validation pipelines plus what a model needs to know about them.

    Attributes:
        train: Training batches ``(images, labels)``, shuffled (and augmented if asked).
        validation: Validation batches in a fixed order, or ``None``.
        class_names: Name of each class index.
        image_size: Side of the square images in pixels.
        class_weight: Balanced weights per class index of the training split (single-label).
        train_files, validation_files: The files behind each split (``None`` for arrays).
        skipped: ``(path, reason)`` of files left out as unusable.
        resize, background: How images were fitted to the square, for predicting later.
        augment: The augmentation applied to training batches, if any.
        train_ordered: The training split in a fixed order without augmentation (for feature
            extraction); ``batch_size`` and ``seed`` are those of the training pipeline.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: tuple[str, ...]
    image_size: int
    class_weight: dict[int, float] | None = None
    train_files: ImageFiles | None = None
    validation_files: ImageFiles | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    resize: str = "pad"
    background: Color = WHITE
    multi_label: bool = False
    num_train: int = 0
    num_validation: int = 0
    augment: Augment | None = None
    train_ordered: tf.data.Dataset | None = None
    batch_size: int = 32
    seed: int = 0


def from_files(
    files: ImageFiles,
    *,
    image_size: int = 224,
    validation_split: float = 0.2,
    validation_files: ImageFiles | None = None,
    seed: int = 0,
    batch_size: int = 32,
    resize: str = "pad",
    background: Color = WHITE,
    augment: Augment | None = None,
    cache: bool = True,
) -> ImageData:
    """Split ``files`` (stratified, seeded) and build both pipelines.

    Pass ``validation_files`` to use a fixed validation set instead of a split.
    """
    if validation_files is None:
        train_idx, val_idx = stratified_split(files.labels, validation_fraction=validation_split, seed=seed)
        train_files, val_files = files.subset(train_idx), (files.subset(val_idx) if len(val_idx) else None)
    else:
        train_files, val_files = files, validation_files
    common = dict(image_size=image_size, batch_size=batch_size, resize=resize, background=background, seed=seed)
    train = make_dataset(train_files, training=True, augment=augment, cache=cache, **common)
    validation = make_dataset(val_files, cache=cache, **common) if val_files is not None else None
    ordered = make_dataset(train_files, cache=False, **common)
    return ImageData(
        train=train,
        validation=validation,
        class_names=files.class_names,
        image_size=image_size,
        class_weight=None if files.multi_label else class_weights(train_files.labels, len(files.class_names)),
        train_files=train_files,
        validation_files=val_files,
        skipped=files.skipped,
        resize=resize,
        background=tuple(background),  # type: ignore[arg-type]
        multi_label=files.multi_label,
        num_train=len(train_files),
        num_validation=len(val_files) if val_files is not None else 0,
        augment=augment,
        train_ordered=ordered,
        batch_size=batch_size,
        seed=seed,
    )


def load_folder(
    directory: str | os.PathLike[str],
    *,
    image_size: int = 224,
    validation_split: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    resize: str = "pad",
    background: Color = WHITE,
    augment: Augment | None = None,
    strict: bool = False,
    progress: bool = False,
) -> ImageData:
    """Load ``DIR/<class>/<images>`` into train and validation pipelines.

    ``progress=True`` shows a progress bar while every image is checked.

    Example:
        >>> data = load_folder("flower_photos", image_size=224, augment=Augment())
        >>> data.class_names
        ('daisy', 'dandelion', 'roses', 'sunflowers', 'tulips')
    """
    files = scan_folder(directory, strict=strict, progress=progress)
    return from_files(files, image_size=image_size, validation_split=validation_split, seed=seed,
                      batch_size=batch_size, resize=resize, background=background, augment=augment)


def load_csv(
    table: str | os.PathLike[str] | Any,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: str | os.PathLike[str] | None = None,
    multi_label: bool = False,
    label_separator: str = " ",
    image_size: int = 224,
    validation_split: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    resize: str = "pad",
    background: Color = WHITE,
    augment: Augment | None = None,
    strict: bool = False,
) -> ImageData:
    """Load images listed in a CSV file or DataFrame (see :func:`read_csv`)."""
    files = read_csv(table, path_column=path_column, label_column=label_column, root=root,
                     multi_label=multi_label, label_separator=label_separator, strict=strict)
    return from_files(files, image_size=image_size, validation_split=validation_split, seed=seed,
                      batch_size=batch_size, resize=resize, background=background, augment=augment)


def _array_images(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"Expected images of shape (n, height, width) or (n, height, width, 1|3|4). Received: {array.shape}."
        )
    return array


def from_arrays(
    images: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    image_size: int = 224,
    validation_split: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    background: Color = WHITE,
    augment: Augment | None = None,
) -> ImageData:
    """Build pipelines from numpy arrays of pixels in [0, 255].

    Grayscale images are repeated to RGB, RGBA is composited onto ``background``, and images
    are resized (stretched) to ``image_size``. ``labels`` are class indices or class names.

    Example:
        >>> data = from_arrays(x_train, y_train, class_names=names, image_size=96)
    """
    array = _array_images(images)
    raw = np.asarray(labels)
    if len(raw) != len(array):
        raise DataError(f"Got {len(array)} images but {len(raw)} labels; they must match one to one.")
    if raw.dtype.kind in "OUS":
        names = tuple(sorted({str(v) for v in raw}))
        index = {n: i for i, n in enumerate(names)}
        y = np.asarray([index[str(v)] for v in raw], dtype=np.int64)
        class_names = class_names or names
    else:
        y = raw.astype(np.int64)
        class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(int(y.max()) + 1))
    if y.min() < 0 or y.max() >= len(class_names):
        raise DataError(f"Labels must lie in [0, {len(class_names) - 1}] for {len(class_names)} class names.")
    if len(class_names) < 2:
        raise DataError("A classifier needs at least two classes; the labels hold one.")
    train_idx, val_idx = stratified_split(y, validation_fraction=validation_split, seed=seed)
    bg = tf.constant(background, tf.float32)

    def prepare(x: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        if channels == 1:
            x = tf.repeat(x, 3, axis=-1)
        elif channels == 4:
            alpha = x[..., 3:] / 255.0
            x = x[..., :3] * alpha + bg * (1.0 - alpha)
        x = tf.image.resize(x, (image_size, image_size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), label

    def pipeline(idx: np.ndarray, training: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((array[idx], y[idx]))
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _finish(ds, count=len(idx), batch_size=batch_size, training=training, augment=augment,
                       seed=seed, cache=True)

    return ImageData(
        train=pipeline(train_idx, True),
        validation=pipeline(val_idx, False) if len(val_idx) else None,
        class_names=tuple(class_names),
        image_size=image_size,
        class_weight=class_weights(y[train_idx], len(class_names)),
        background=tuple(background),  # type: ignore[arg-type]
        resize="stretch",
        num_train=len(train_idx),
        num_validation=len(val_idx),
        augment=augment,
        train_ordered=pipeline(train_idx, False),
        batch_size=batch_size,
        seed=seed,
    )
