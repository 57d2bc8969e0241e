"""Planning a review's decisions — ``decisions.csv`` read against the data and checked in full.

A person marks each listed image keep / relabel / remove on the review page and downloads
``decisions.csv`` (``path,decision,label``). :func:`plan_decisions` reads it against the data — a
class folder ``DATA/<class>/<image>`` or a CSV file of ``path,label`` rows, read as
:func:`~transferkit.data._sources.read_csv` reads it — and checks every row before anything is
touched; the :class:`~transferkit._review._changes.Plan` it returns is what
:func:`~transferkit._review._apply.apply_plan` carries out. Nothing here changes the data.

What a decision does:

* ``keep``: nothing;
* ``relabel`` in a class folder: the file moves into the existing folder ``DATA/<label>/`` (a label
  with no folder is refused, so a typo never makes a class); in a CSV: that row's label cell is
  rewritten, every other byte of the file staying as it was;
* ``remove``: the file moves to the quarantine folder *beside* the data, never inside it, and
  nothing is deleted: ``<DATA>.review/quarantine/<path below DATA>`` (a CSV ``x.csv``:
  ``x.review/quarantine/<path below the CSV's folder>``, and its rows are dropped from the CSV).

When an earlier apply of the same decisions left its undo log, finished or interrupted, the plan
is read back from that log, split into what is done and what is left.

Example:
    >>> plan = plan_decisions("review/decisions.csv", "photos/")
    >>> print("\\n".join(plan.describe()))
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transferkit._errors import DataError, did_you_mean
from transferkit._review._changes import (
    QUARANTINE,
    UNDO_LOG,
    Action,
    Plan,
    _check_same_decisions,
    _plan_from_log,
    _read_log,
    _sha256,
    review_dir,
)
from transferkit._types import PathLike
from transferkit.data._images import printable

__all__ = ["plan_decisions"]

DECISIONS = ("keep", "relabel", "remove")
"""The values of ``decisions.csv``'s ``decision`` column."""

_ELSEWHERE = "_elsewhere"  # quarantine sub-folder for a CSV's images outside the CSV's folder
_BOM = b"\xef\xbb\xbf"
_SHOWN = 50  # problems listed in one error


def _data_target(data: PathLike) -> tuple[Path, str]:
    path = Path(os.path.abspath(data))
    if path.is_dir():
        if path.parent == path:
            raise DataError(f"Data folder {str(path)!r} is a file system's root; the quarantine goes beside the "
                            "data folder, so pass a folder below it.")
        return path, "folder"
    if path.is_file():
        return path, "csv"
    raise DataError(f"Data {printable(str(data))!r} does not exist. Pass the class folder or the CSV file the "
                    "review was made of.")


# --- reading CSV files -------------------------------------------------------------------------


def _decode(raw: bytes) -> tuple[bytes, str]:
    """``(BOM, text)``: the text decoded so that encoding it again gives back the exact bytes."""
    bom = _BOM if raw.startswith(_BOM) else b""
    return bom, raw[len(bom):].decode("utf-8", "surrogateescape")


def _records(text: str) -> Iterator[tuple[int, list[str], str]]:
    """``(line number, fields, raw text)`` of each CSV record, the header first.

    The line number is the record's last physical line, as :class:`csv.DictReader`'s ``line_num``
    (and so ``read_csv``'s messages) counts it; the raw text is the record's exact characters,
    line ending included, so that unchanged rows can be written back untouched.
    """
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    for fields in reader:
        raw = "".join(consumed)
        consumed.clear()
        yield reader.line_num, fields, raw


def _read_table(path: Path, columns: Sequence[str], what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, fields)`` rows of a CSV file that must have ``columns``."""
    where = repr(printable(str(path)))
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read {what} {where}: {error.strerror or error}. Check the path.") from None
    try:
        records = list(_records(_decode(raw)[1]))
    except csv.Error as error:
        raise DataError(f"{what.capitalize()} {where} is not a readable CSV file ({error}).") from None
    if not records:
        raise DataError(f"{what.capitalize()} {where} is empty. Expected a header row: {','.join(columns)}.")
    header = records[0][1]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{what.capitalize()} {where} has no column {', '.join(repr(c) for c in missing)}. "
                        f"Columns found: {header}. Expected a header row: {','.join(columns)}.")
    return header, [(line, fields) for line, fields, _ in records[1:]]


def _cell(fields: list[str], header: list[str], column: str) -> str:
    index = header.index(column)
    return fields[index] if index < len(fields) else ""


def _rewrite_csv(raw: bytes, relabel: dict[int, str], drop: set[int]) -> bytes:
    """``raw`` with the label cell of the rows in ``relabel`` replaced and the rows in ``drop``
    left out; every other byte (BOM, quoting, line endings, other columns) as it was."""
    bom, text = _decode(raw)
    out: list[str] = []
    label_index = -1
    for number, fields, record in _records(text):
        if label_index < 0:
            label_index = fields.index("label")
            out.append(record)
            continue
        if number in drop:
            continue
        if number in relabel and fields:
            ending = next((e for e in ("\r\n", "\n", "\r") if record.endswith(e)), "")
            fields = fields + [""] * (label_index + 1 - len(fields))
            fields[label_index] = relabel[number]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator=ending).writerow(fields)
            out.append(buffer.getvalue())
        else:
            out.append(record)
    return bom + "".join(out).encode("utf-8", "surrogateescape")


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decision:
    line: int
    path: str
    decision: str
    label: str


def _read_decisions(path: Path) -> list[_Decision]:
    header, rows = _read_table(path, ("path", "decision", "label"), "decisions file")
    decisions = []
    for line, fields in rows:
        if not any(f.strip() for f in fields):
            continue  # a blank line
        decisions.append(_Decision(line, _cell(fields, header, "path"), _cell(fields, header, "decision").strip(),
                                   _cell(fields, header, "label").strip()))
    return decisions


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") for p in parts)


def _below(path: Path, root: Path) -> Path | None:
    """``path`` relative to ``root`` (lexically, then through links), or ``None`` outside it."""
    try:
        return path.relative_to(root)
    except ValueError:
        pass
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return None


def _candidates(text: str, base: Path) -> list[Path]:
    """Where a listed path may point: absolute as it is; relative from ``base`` (the data's folder),
    then from the working folder (the review lists paths as the data was given to it)."""
    path = Path(text)
    if path.is_absolute():
        return [Path(os.path.normpath(path))]
    return [Path(os.path.normpath(base / path)), Path(os.path.normpath(Path.cwd() / path))]


def _same_device(source: Path, destination: Path) -> bool:
    folder = destination.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return os.stat(source).st_dev == os.stat(folder).st_dev
    except OSError:
        return True  # the missing source is reported on its own


class _Checker:
    """Collects the problems of all rows, and the destinations claimed so far."""

    def __init__(self) -> None:
        self.problems: list[tuple[int, str]] = []
        self.claimed: dict[str, int] = {}

    def add(self, line: int, message: str) -> None:
        self.problems.append((line, message))

    def destination(self, line: int, source: Path, destination: Path) -> bool:
        shown = printable(str(destination))
        if os.path.lexists(destination):
            self.add(line, f"{printable(str(source))} would be moved to {shown}, where a file already is. "
                           "Rename one of the two first.")
            return False
        key = os.path.normcase(str(destination))
        if key in self.claimed:
            self.add(line, f"{printable(str(source))} would be moved to {shown}, like the image of line "
                           f"{self.claimed[key]}. Rename one of the two first.")
            return False
        self.claimed[key] = line
        if not _same_device(source, destination):
            self.add(line, f"{printable(str(source))} is on another file system than {shown}, so it cannot be "
                           "moved there atomically. Move the data beside its CSV first.")
            return False
        return True

    def raise_if_any(self, decisions: Path) -> None:
        if not self.problems:
            return
        problems = sorted(self.problems)
        listing = "\n".join(f"  line {line}: {message}" for line, message in problems[:_SHOWN])
        if len(problems) > _SHOWN:
            listing += f"\n  … and {len(problems) - _SHOWN} more"
        raise DataError(f"{printable(str(decisions))!r}: {len(problems)} decision(s) cannot be carried out, so "
                        f"nothing was changed:\n{listing}\nFix those rows in the decisions file (or the data) "
                        "and run again.")


def _check_decision(checker: _Checker, row: _Decision) -> bool:
    if not row.path.strip():
        checker.add(row.line, "the path is empty.")
        return False
    if row.decision.lower() not in DECISIONS:
        checker.add(row.line, f"unknown decision {row.decision!r}; expected one of "
                              f"{', '.join(repr(d) for d in DECISIONS)}.{did_you_mean(row.decision, DECISIONS)}")
        return False
    if row.decision.lower() == "relabel" and not row.label:
        checker.add(row.line, f"relabel {printable(row.path)!r} needs the new class in the label column.")
        return False
    return True


def _deduplicated(checker: _Checker, found: list[tuple[_Decision, str]]) -> list[tuple[_Decision, str]]:
    """One entry per image (``key``): repeated identical rows count once, conflicting ones are problems."""
    first: dict[str, _Decision] = {}
    kept: list[tuple[_Decision, str]] = []
    for row, key in found:
        earlier = first.get(key)
        if earlier is None:
            first[key] = row
            kept.append((row, key))
            continue
        same = earlier.decision.lower() == row.decision.lower() and (
            row.decision.lower() != "relabel" or earlier.label == row.label)
        if not same:
            def said(r: _Decision) -> str:
                return f"{r.decision.lower()} {r.label!r}" if r.decision.lower() == "relabel" else r.decision.lower()
            checker.add(row.line, f"{printable(row.path)!r} is decided {said(row)!r} here but {said(earlier)!r} on "
                                  f"line {earlier.line}. Keep one of the two rows.")
    return kept


def _plan_folder(root: Path, rows: list[_Decision], checker: _Checker) -> tuple[list[Action], int]:
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    quarantine = review_dir(root, "folder") / QUARANTINE
    found: list[tuple[_Decision, str]] = []
    where: dict[int, tuple[Path, Path]] = {}
    for row in rows:
        if not _check_decision(checker, row):
            continue
        located = None
        for candidate in _candidates(row.path, root):
            relative = _below(candidate, root)
            if relative is None or len(relative.parts) < 2 or _is_hidden(relative.parts):
                continue
            if located is None or (not os.path.lexists(located[0]) and os.path.lexists(root / relative)):
                located = (root / relative, relative)
        if located is None:
            checker.add(row.line, f"{printable(row.path)!r} is not an image of {printable(str(root))!r} (expected "
                                  "DATA/<class>/<image>, absolute or relative to the data folder).")
            continue
        if located[1].parts[0] not in classes:
            checker.add(row.line, f"{printable(row.path)!r} is not an image of {printable(str(root))!r}: it has no "
                                  f"class folder {printable(located[1].parts[0])!r}.")
            continue
        where[row.line] = located
        found.append((row, str(located[1])))
    actions: list[Action] = []
    kept = 0
    for row, _ in _deduplicated(checker, found):
        source, relative = where[row.line]
        decision, old = row.decision.lower(), relative.parts[0]
        if decision == "keep":
            kept += 1
            continue
        if not _exists(checker, row, source):
            continue
        if decision == "relabel":
            if _relabel_refused(checker, row, printable(str(relative)), classes, listing="Classes",
                                new_class="A relabel moves the image into an existing class folder: create it first "
                                          "for a new class.", already=row.label == old, already_as="in class"):
                continue
            destination = root / row.label / source.name
            if checker.destination(row.line, source, destination):
                actions.append(Action("move", source, destination, row.label, old, row.line))
        else:
            destination = quarantine / relative
            if checker.destination(row.line, source, destination):
                actions.append(Action("quarantine", source, destination, None, old, row.line))
    return actions, kept


def _relabel_refused(checker: _Checker, row: _Decision, shown: str, known: Sequence[str], *, listing: str,
                     new_class: str, already: bool, already_as: str) -> bool:
    """Whether a relabel row is refused, a problem recorded against it: a class not among ``known``, or
    the class the image already has."""
    if row.label not in known:
        checker.add(row.line, f"unknown class {row.label!r} for {shown}.{did_you_mean(row.label, known)} "
                              f"{listing}: {', '.join(repr(printable(c)) for c in known)}. {new_class}")
        return True
    if already:
        checker.add(row.line, f"{shown} is already {already_as} {row.label!r}; decide 'keep' or give another class.")
        return True
    return False


def _exists(checker: _Checker, row: _Decision, source: Path) -> bool:
    """Whether the image a row decides on is still there (a problem recorded against the row if not)."""
    if os.path.isfile(source):
        return True
    checker.add(row.line, f"{printable(str(source))} does not exist (moved or deleted since the review?).")
    return False


def _plan_csv(table: Path, rows: list[_Decision], checker: _Checker) -> tuple[list[Action], int]:
    base = table.parent
    header, data_rows = _read_table(table, ("path", "label"), "CSV file")
    listed: dict[str, list[tuple[int, str, Path]]] = {}
    for line, fields in data_rows:
        text, label = _cell(fields, header, "path"), _cell(fields, header, "label").strip()
        if not text.strip():
            continue
        path = Path(text) if Path(text).is_absolute() else base / text
        listed.setdefault(os.path.realpath(path), []).append((line, label, Path(os.path.normpath(path))))
    labels = sorted({label for entries in listed.values() for _, label, _ in entries if label})
    quarantine = review_dir(table, "csv") / QUARANTINE
    found: list[tuple[_Decision, str]] = []
    for row in rows:
        if not _check_decision(checker, row):
            continue
        key = next((k for k in map(os.path.realpath, _candidates(row.path, base)) if k in listed), None)
        if key is None:
            checker.add(row.line, f"{printable(row.path)!r} is not listed in {printable(str(table))!r}.")
            continue
        found.append((row, key))
    actions: list[Action] = []
    kept = 0
    for row, key in _deduplicated(checker, found):
        entries = listed[key]
        source, old = entries[0][2], entries[0][1]  # the path as the CSV resolves it
        lines = tuple(line for line, _, _ in entries)
        decision = row.decision.lower()
        if decision == "keep":
            kept += 1
            continue
        if not _exists(checker, row, source):
            continue
        if decision == "relabel":
            if _relabel_refused(checker, row, printable(row.path), labels, listing="Classes in the CSV",
                                new_class="Add a row of the new class by hand first if it is a new class.",
                                already=all(label == row.label for _, label, _ in entries), already_as="labelled"):
                continue
            actions.append(Action("relabel_row", source, None, row.label, old, row.line, lines, table))
        else:
            relative = _below(Path(os.path.normpath(source)), base)
            if relative is None or relative.parts[:1] == ("..",):
                relative = Path(_ELSEWHERE, *Path(os.path.normpath(source)).parts[1:])
            destination = quarantine / relative
            if checker.destination(row.line, source, destination):
                actions.append(Action("quarantine", source, destination, None, old, row.line, lines, table))
    return actions, kept


def plan_decisions(decisions_csv: PathLike, data: PathLike) -> Plan:
    """Read ``decisions.csv`` against the data and check every row; nothing is changed.

    Args:
        decisions_csv: The file the review page downloads: a ``path,decision,label`` header, then
            one row per image. ``path`` as the review listed it: absolute, or relative to the data
            folder (a CSV's folder for CSV data); ``decision`` ``keep``, ``relabel`` or ``remove``;
            ``label`` the new class of a ``relabel`` (empty otherwise).
        data: The class folder (``DATA/<class>/<image>``) or the CSV file (``path,label``) the
            review was made of.

    Returns:
        The :class:`Plan`. When an undo log of the same decisions exists (an earlier apply, finished
        or interrupted), the plan is the one recorded there, split into what is done and what is left.

    Raises:
        DataError: listing, with their line numbers, every row that cannot be carried out: an
            unknown decision, a path not in the data, a missing file, a relabel to an unknown class
            or to the class the image already has, two rows deciding the same image differently, a
            destination already taken (or taken by another row); or an undo log of other decisions
            that is still there.
    """
    decisions = Path(os.path.abspath(decisions_csv))
    if not decisions.is_file():
        raise DataError(f"Decisions file {printable(str(decisions_csv))!r} does not exist. Download it from the "
                        "review page (review.html) and pass its path.")
    root, kind = _data_target(data)
    digest = _sha256(decisions.read_bytes())
    log_path = review_dir(root, kind) / UNDO_LOG
    if log_path.is_file():
        record = _read_log(log_path)
        _check_same_decisions(record, digest, log_path)
        return _plan_from_log(record, decisions, root, kind, digest)
    rows = _read_decisions(decisions)
    checker = _Checker()
    planner = _plan_folder if kind == "folder" else _plan_csv
    actions, kept = planner(root, rows, checker)
    checker.raise_if_any(decisions)
    csv_sha = _sha256(root.read_bytes()) if kind == "csv" else None
    return Plan(decisions, root, kind, tuple(actions), (), kept, digest, csv_sha)
