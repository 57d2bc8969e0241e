"""Where the images come from: class folders, CSV files and DataFrames, checked file by file.

Every file is decoded once before training, so corrupt, truncated, empty or mislabelled files are
found up front and reported by name, never halfway through an epoch.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit._errors import DataError
from transferkit._types import PathLike
from transferkit.data._images import IMAGE_EXTENSIONS, find_bad_images

if TYPE_CHECKING:
    import pandas


class SkippedFilesWarning(UserWarning):
    """Some files were left out of a dataset because they cannot be read as images."""


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


def report_skipped(skipped: Sequence[tuple[str, str]], strict: bool, where: str) -> None:
    """One :class:`SkippedFilesWarning` listing ``(path, reason)`` pairs, or a DataError with ``strict``."""
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


def _walk(folder: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files under ``folder`` (recursively, sorted, hidden ones ignored): those with an image
    extension, and ``(path, reason)`` for the others."""
    found: list[str] = []
    other: list[tuple[str, str]] = []
    for parent, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(parent, name)
            if name.lower().endswith(extensions):
                found.append(path)
            else:
                other.append((path, f"unsupported file type {Path(name).suffix or '(none)'!r}"))
    return found, other


def find_images(
    path: PathLike, *, strict: bool = False, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> tuple[str, ...]:
    """The usable image files at ``path``: the file itself, or every image under a folder.

    A folder is read with the same rules as :func:`~transferkit.scan_folder` (recursive, sorted,
    hidden files ignored, every file decoded); files that are not usable images are listed in
    one :class:`~transferkit.SkippedFilesWarning` (``strict=True`` raises instead).

    Raises:
        DataError: the path does not exist, or the folder holds no usable image.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"Image {str(root)!r} does not exist. Check the path.")
    if not root.is_dir():
        return (str(root),)
    exts = tuple(e.lower() for e in extensions)
    found, skipped = _walk(root, exts)
    bad = dict(find_bad_images(found))
    skipped.extend((p, bad[p]) for p in found if p in bad)
    good = tuple(sorted(p for p in found if p not in bad))
    if not good:
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3]) + ("; …" if len(skipped) > 3 else "")
        raise DataError(f"Folder {str(root)!r} has no usable image files ({', '.join(exts)})"
                        + (f" ({reasons})." if skipped else "."))
    report_skipped(skipped, strict, repr(str(root)))
    return good


def scan_folder(
    directory: PathLike,
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
        images, other = _walk(class_dir, exts)
        candidates.extend((path, label) for path in images)
        skipped.extend(other)
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
    report_skipped(skipped, strict, repr(str(root)))
    return ImageFiles(
        paths=tuple(p for p, _ in good),
        labels=np.asarray([label for _, label in good], dtype=np.int64),
        class_names=tuple(d.name for d in class_dirs),
        skipped=tuple(skipped),
    )


def read_csv(
    table: PathLike | pandas.DataFrame,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: PathLike | None = None,
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
        frame: Any = table  # a DataFrame (pandas is not a dependency, so it is not named in the types)
        pairs = list(zip(frame[path_column], frame[label_column]))
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
        for i, names in enumerate(label_sets):
            labels[i, np.asarray([index[n] for n in names])] = 1.0
    else:
        labels = np.asarray([index[names[0]] for names in label_sets], dtype=np.int64)
    files = ImageFiles(tuple(paths), labels, class_names)
    bad = find_bad_images(list(files.paths))
    report_skipped(bad, strict, where)
    if bad:
        drop = {p for p, _ in bad}
        files = files.subset([i for i, p in enumerate(files.paths) if p not in drop])
    return replace(files, skipped=tuple(bad))
