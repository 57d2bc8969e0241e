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
from transferkit.data._images import IMAGE_EXTENSIONS, find_bad_images, printable, unreadable_reason

if TYPE_CHECKING:
    import pandas


class SkippedFilesWarning(UserWarning):
    """Some files were left out of a dataset because they cannot be used as images (or, in a CSV,
    because a row repeats an earlier one); the message lists each with the reason."""


@dataclass(frozen=True)
class ImageFiles:
    """A list of image files with their labels.

    Attributes:
        paths: File paths.
        labels: ``(n,)`` int class indices, or ``(n, num_classes)`` float multi-hot rows.
        class_names: Name of each class index.
        skipped: ``(path, reason)`` for files left out because they are not usable images (and
            for repeated CSV rows).
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
    lines = [f"  {printable(path)}: {reason}" for path, reason in skipped[:50]]
    if len(skipped) > 50:
        lines.append(f"  … and {len(skipped) - 50} more")
    listing = "\n".join(lines)
    if strict:
        raise DataError(f"{len(skipped)} file(s) in {where} cannot be used (strict=True):\n{listing}")
    message = f"Skipping {len(skipped)} file(s) in {where} that cannot be used as images:\n{listing}"
    warnings.warn(message, SkippedFilesWarning, stacklevel=3)


_ALREADY_READ = "link to a folder that is already read (a loop, or a second way to the same images)"


def _walk(folder: Path, extensions: tuple[str, ...], seen: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files under ``folder`` (recursively, sorted, hidden ones ignored): those with an image
    extension, and ``(path, reason)`` for the others.

    Linked folders are followed once: a link to a folder in ``seen`` (the real paths already read,
    which this call adds to) is a loop or a second way to the same images, and is listed instead.
    """
    found: list[str] = []
    other: list[tuple[str, str]] = []
    seen.add(os.path.realpath(folder))
    for parent, subdirs, files in os.walk(folder, followlinks=True):
        keep = []
        for name in sorted(subdirs):
            if name.startswith("."):
                continue
            real = os.path.realpath(os.path.join(parent, name))
            if real in seen:
                other.append((os.path.join(parent, name), _ALREADY_READ))
            else:
                seen.add(real)
                keep.append(name)
        subdirs[:] = keep
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(parent, name)
            problem = unreadable_reason(path)
            if problem is not None:
                other.append((path, problem))
            elif name.lower().endswith(extensions):
                found.append(path)
            else:
                other.append((path, f"unsupported file type {printable(Path(name).suffix) or '(none)'!r}"))
    return found, other


def _few(items: Sequence[tuple[str, str]], n: int = 3) -> str:
    """``name: reason; …`` for the first ``n`` items."""
    shown = "; ".join(f"{printable(Path(p).name)}: {r}" for p, r in items[:n])
    return shown + ("; …" if len(items) > n else "")


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
        raise DataError(f"Image {printable(str(root))!r} does not exist. Check the path.")
    if not root.is_dir():
        return (str(root),)
    exts = tuple(e.lower() for e in extensions)
    found, skipped = _walk(root, exts, set())
    bad = dict(find_bad_images(found))
    skipped.extend((p, bad[p]) for p in found if p in bad)
    good = tuple(sorted(p for p in found if p not in bad))
    if not good:
        raise DataError(f"Folder {printable(str(root))!r} has no usable image files ({', '.join(exts)})"
                        + (f" ({_few(skipped)})." if skipped else "."))
    report_skipped(skipped, strict, repr(printable(str(root))))
    return good


def scan_folder(
    directory: PathLike,
    *,
    strict: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    progress: bool = False,
) -> ImageFiles:
    """List a folder of class sub-folders (``DIR/<class>/<images>``), checking every image.

    Sub-folders of a class folder count as that class (linked folders are followed, each real
    folder once). Files that cannot be decoded, files with other extensions, broken links and
    files next to the class folders are skipped with one :class:`SkippedFilesWarning` listing
    them, or raise with ``strict=True``. Hidden files and folders (``.name``) are ignored. A
    class folder whose name is not valid UTF-8 gets a printable class name (``caf\\xe9``).

    Raises:
        DataError: the folder is missing, has fewer than two classes, or a class has no usable
            images (the message lists why its files were skipped).
    """
    root = Path(directory)
    shown = printable(str(root))
    if not root.exists():
        raise DataError(f"Data folder {shown!r} does not exist. Check the path.")
    if not root.is_dir():
        raise DataError(f"{shown!r} is a file, not a folder. Expected DIR/<class>/<image files>.")
    exts = tuple(e.lower() for e in extensions)
    seen = {os.path.realpath(root)}
    class_dirs: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skipped.append((str(entry), unreadable_reason(entry) or "not inside a class sub-folder"))
        elif os.path.realpath(entry) in seen:
            skipped.append((str(entry), _ALREADY_READ))
        else:
            class_dirs.append(entry)
            seen.add(os.path.realpath(entry))
    if len(class_dirs) < 2:
        found = f"only {printable(class_dirs[0].name)!r}" if class_dirs else "none"
        raise DataError(
            f"Data folder {shown!r} needs at least two class sub-folders (found {found}). "
            "Expected DIR/<class>/<image files>, for example DIR/cat/1.jpg and DIR/dog/2.jpg."
        )
    candidates: list[tuple[str, int]] = []
    per_class: list[list[tuple[str, str]]] = []
    for label, class_dir in enumerate(class_dirs):
        images, other = _walk(class_dir, exts, seen)
        candidates.extend((path, label) for path in images)
        skipped.extend(other)
        per_class.append(other)
    bad = dict(find_bad_images([p for p, _ in candidates], progress=progress))
    skipped.extend((p, bad[p]) for p, _ in candidates if p in bad)
    for p, label in candidates:
        if p in bad:
            per_class[label].append((p, bad[p]))
    good = [(p, label) for p, label in candidates if p not in bad]
    counts = np.bincount([label for _, label in good], minlength=len(class_dirs))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        first = int(empty[0])
        left_out = sorted(per_class[first])
        why = f"its {len(left_out)} file(s) were skipped: {_few(left_out)}" if left_out else "it holds no files"
        more = f" (and {len(empty) - 1} more: {', '.join(repr(printable(class_dirs[i].name)) for i in empty[1:4])})" \
            if len(empty) > 1 else ""
        raise DataError(
            f"Class folder {printable(str(class_dirs[first]))!r} has no usable images{more}; {why}. "
            f"Add images ({', '.join(exts)}) or remove the folder."
        )
    report_skipped(skipped, strict, repr(shown))
    return ImageFiles(
        paths=tuple(p for p, _ in good),
        labels=np.asarray([label for _, label in good], dtype=np.int64),
        class_names=tuple(printable(d.name) for d in class_dirs),
        skipped=tuple(skipped),
    )


def _label_text(value: object) -> str:
    """A label cell as text: missing cells (``None``, pandas' NaN) are empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return printable(str(value))


def _table_rows(table: Any, path_column: str, label_column: str, root: PathLike | None
                ) -> tuple[str, str, Path, list[tuple[str, object, object]]]:
    """``(where, row word, base folder, [(row number, path cell, label cell)])`` of a CSV or DataFrame."""
    if hasattr(table, "columns") and hasattr(table, "__getitem__"):
        columns = [str(c) for c in table.columns]
        where, word, base = "the DataFrame", "row index", Path(root) if root is not None else Path.cwd()
        _check_columns(where, columns, path_column, label_column)
        return where, word, base, [(str(i), p, y) for i, (p, y) in
                                   enumerate(zip(table[path_column], table[label_column]))]
    csv_path = Path(table)
    where = repr(printable(str(csv_path)))
    if not csv_path.is_file():
        raise DataError(f"CSV file {where} does not exist. Check the path.")
    rows: list[tuple[str, object, object]] = []
    # surrogateescape: a path written in another encoding (a Latin-1 'café.png') still names the file
    # on disk, exactly as os.listdir would spell it.
    with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            columns = list(reader.fieldnames or [])
            _check_columns(where, columns, path_column, label_column)
            for row in reader:
                rows.append((str(reader.line_num), row[path_column], row[label_column]))
        except csv.Error as error:
            raise DataError(f"{where} is not a readable CSV file (line {reader.line_num}: {error}).") from None
    return where, "row", Path(root) if root is not None else csv_path.parent, rows


def _check_columns(where: str, columns: list[str], path_column: str, label_column: str) -> None:
    for column, argument in ((path_column, "path_column"), (label_column, "label_column")):
        if column not in columns:
            raise DataError(
                f"{where} has no column {column!r} ({argument}). Columns found: {columns}. "
                f"Pass {argument}=<one of them>."
            )


def read_csv(
    table: PathLike | pandas.DataFrame,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: PathLike | None = None,
    multi_label: bool = False,
    label_separator: str = " ",
    class_names: Sequence[str] | None = None,
    strict: bool = False,
) -> ImageFiles:
    """Read (path, label) rows from a CSV file or a pandas DataFrame.

    Rows are checked one by one: blank rows are ignored; a row that repeats an earlier one (the
    same file, the same labels) is used once and listed in the :class:`SkippedFilesWarning`; the
    same file with different labels is an error. Paths are used as written: ``../x.png`` and
    absolute paths may point outside the CSV's folder.

    Args:
        table: CSV file path (UTF-8) or a DataFrame with the two columns.
        path_column: Column holding image paths (relative paths are taken from ``root``, or
            from the CSV file's folder).
        label_column: Column holding the class name — or, with ``multi_label=True``, the
            class names separated by ``label_separator``.
        root: Folder that relative paths start from.
        class_names: The classes, in index order. A label that is not one of them is an error
            (a typo does not become a class of its own). Default: every label in the table,
            sorted.
        strict: Raise instead of skipping files that cannot be decoded.

    Raises:
        DataError: the CSV or a column is missing, a row's file does not exist or its label is
            empty or unknown, a file is listed with two different labels, a class has no usable
            image, or fewer than two classes appear.
    """
    where, word, base, rows = _table_rows(table, path_column, label_column, root)
    known = checked_class_names(class_names, where="read_csv") if class_names is not None else None
    paths: list[str] = []
    label_sets: list[list[str]] = []
    numbers: list[str] = []
    first_row: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    for number, raw_path, raw_label in rows:
        text = "" if raw_path is None or (isinstance(raw_path, float) and raw_path != raw_path) else str(raw_path)
        label_text = _label_text(raw_label)
        if not text.strip() and not label_text.strip():
            continue  # a blank row (",,")
        if not text.strip():
            raise DataError(f"{where}, {word} {number}: the path is empty (label {label_text!r}).")
        path = Path(text)
        path = path if path.is_absolute() else base / path
        problem = unreadable_reason(path)
        if problem is not None:
            state = "does not exist" if problem == "file not found" else f"cannot be used: {problem}"
            raise DataError(
                f"{where}, {word} {number}: image file {printable(str(path))!r} {state}. "
                "Fix the path (relative paths start from the CSV's folder, or from root=…)."
            )
        names = label_text.split(label_separator) if multi_label else [label_text]
        names = sorted({n.strip() for n in names if n.strip()}) if multi_label else [n.strip() for n in names]
        if not names or not names[0]:
            raise DataError(f"{where}, {word} {number}: the label of {printable(str(path))!r} is empty.")
        key = os.path.realpath(path)
        if key in first_row:
            earlier = first_row[key]
            if label_sets[earlier] != names:
                raise DataError(
                    f"{where}: {printable(str(path))!r} is labelled {' '.join(label_sets[earlier])!r} in "
                    f"{word} {numbers[earlier]} and {' '.join(names)!r} in {word} {number}. "
                    + ("List all its labels in one row." if multi_label else
                       "An image has one class (multi_label=True reads several).")
                )
            repeat = f"{word} {number} repeats {word} {numbers[earlier]} (the image is used once)"
            duplicates.append((str(path), repeat))
            continue
        first_row[key] = len(paths)
        paths.append(str(path))
        label_sets.append(names)
        numbers.append(number)
    found = sorted({n for names in label_sets for n in names})
    if known is not None:
        unknown = [(n, numbers[i]) for i, names in enumerate(label_sets) for n in names if n not in known]
        if unknown:
            shown = ", ".join(f"{n!r} ({word} {r})" for n, r in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            raise DataError(
                f"{where}: {len(unknown)} label(s) are not in class_names: {shown}. "
                f"Known classes: {', '.join(repr(c) for c in known)}. Fix those rows or add the classes."
            )
    names_in_order = known if known is not None else tuple(found)
    if len(names_in_order) < 2:
        raise DataError(f"{where} has fewer than two classes ({list(names_in_order)}). A classifier needs two or more.")
    index = {n: i for i, n in enumerate(names_in_order)}
    if multi_label:
        labels = np.zeros((len(paths), len(names_in_order)), dtype=np.float32)
        for i, names in enumerate(label_sets):
            labels[i, np.asarray([index[n] for n in names])] = 1.0
    else:
        labels = np.asarray([index[names[0]] for names in label_sets], dtype=np.int64)
    files = ImageFiles(tuple(paths), labels, names_in_order)
    bad = find_bad_images(list(files.paths))
    if bad:
        drop = {p for p, _ in bad}
        files = files.subset([i for i, p in enumerate(files.paths) if p not in drop])
    listed = set(found)
    left = files.class_counts()
    empty = [c for i, c in enumerate(names_in_order) if c in listed and left[i] == 0]
    if empty:
        mine = [(p, r) for p, r in bad if empty[0] in label_sets[first_row[os.path.realpath(p)]]]
        raise DataError(
            f"{where}: class {empty[0]!r} has no usable image"
            + (f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else "")
            + f"; its file(s) were skipped: {_few(mine)}. Fix or replace them."
        )
    skipped = duplicates + list(bad)
    report_skipped(skipped, strict, where)
    return replace(files, skipped=tuple(skipped))


def checked_class_names(class_names: Sequence[str], *, where: str) -> tuple[str, ...]:
    """``class_names`` as a tuple of distinct strings, or a DataError saying what is wrong."""
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise DataError(f"{where}: class_names must be a list of strings. Received: class_names={class_names!r}.")
    names = tuple(str(c) for c in class_names)
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise DataError(f"{where}: class_names lists {', '.join(repr(c) for c in repeated)} more than once.")
    return names
