"""Carrying out a review's decisions on a dataset — checked first, reversible, never deleting.

A person marks each listed image keep / relabel / remove on the review page and downloads
``decisions.csv`` (``path,decision,label``). :func:`plan_decisions` reads it against the data — a
class folder ``DATA/<class>/<image>`` or a CSV file of ``path,label`` rows, read as
:func:`~transferkit.data._sources.read_csv` reads it — and checks every row before anything is
touched; :func:`apply_plan` makes the changes; :func:`undo_decisions` puts them back.

What a decision does:

* ``keep``: nothing;
* ``relabel`` in a class folder: the file moves into the existing folder ``DATA/<label>/`` (a label
  with no folder is refused, so a typo never makes a class); in a CSV: that row's label cell is
  rewritten, every other byte of the file staying as it was;
* ``remove``: the file moves to the quarantine folder *beside* the data, never inside it, and
  nothing is deleted: ``<DATA>.review/quarantine/<path below DATA>`` (a CSV ``x.csv``:
  ``x.review/quarantine/<path below the CSV's folder>``, and its rows are dropped from the CSV).

On disk, beside the data (``DATA.review/`` for a folder, ``<csv stem>.review/`` for a CSV)::

    quarantine/…         removed images, at their path below the data
    undo.json            the undo log (write-ahead: see below)
    <name>.csv.before    a CSV's bytes before it was rewritten (CSV data only)

Each change is atomic: a file moves with one ``os.replace`` (quarantine and data are on the same
file system — checked), a CSV is written to a temporary file and renamed
(:func:`~transferkit._atomic.write_bytes_atomic`). The undo log is written ahead: every action is
recorded as ``pending`` before the first change and marked ``done`` after its own, so a run killed
halfway can be finished (plan and apply the same decisions again: actions whose source is gone and
whose destination is present count as done) or undone. Applying the same decisions once more
after success changes nothing and says so.

Example:
    >>> plan = plan_decisions("review/decisions.csv", "photos/")
    >>> print("\\n".join(plan.describe()))
    >>> log = apply_plan(plan)          # photos.review/undo.json
    >>> undo_decisions("photos/")                 # everything back, byte for byte
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit._atomic import _sync_directory, write_bytes_atomic, write_text_atomic
from transferkit._errors import DataError, did_you_mean
from transferkit._types import PathLike
from transferkit.data._images import printable

__all__ = ["Action", "Plan", "apply_plan", "plan_decisions", "undo_decisions"]

log = logging.getLogger("transferkit")

DECISIONS = ("keep", "relabel", "remove")
"""The values of ``decisions.csv``'s ``decision`` column."""

ACTION_KINDS = ("move", "relabel_row", "quarantine")
REVIEW_SUFFIX = ".review"
QUARANTINE = "quarantine"
UNDO_LOG = "undo.json"
LOG_FORMAT = 1
_ELSEWHERE = "_elsewhere"  # quarantine sub-folder for a CSV's images outside the CSV's folder
_BOM = b"\xef\xbb\xbf"
_SHOWN = 50  # problems listed in one error


@dataclass(frozen=True)
class Action:
    """One change a decision asks for.

    Attributes:
        kind: ``"move"`` (relabel in a class folder: the file goes to another class folder),
            ``"relabel_row"`` (relabel in a CSV: the label cell of ``rows`` is rewritten) or
            ``"quarantine"`` (remove: the file goes to the quarantine folder; in a CSV, ``rows``
            are dropped too).
        source: The image file (absolute).
        destination: Where the file goes (``move``, ``quarantine``); ``None`` for ``relabel_row``.
        label: The new class (``move``, ``relabel_row``); ``None`` for ``quarantine``.
        old_label: The class the image had.
        line: The line of ``decisions.csv`` that asked for it.
        rows: CSV data: the line numbers of the CSV rows that list the image (as ``read_csv``
            numbers them); empty for a class folder.
        table: CSV data: the CSV file; ``None`` for a class folder.
    """

    kind: str
    source: Path
    destination: Path | None = None
    label: str | None = None
    old_label: str = ""
    line: int = 0
    rows: tuple[int, ...] = ()
    table: Path | None = None

    def describe(self) -> str:
        """One line saying what the action does, for a person to check before applying."""
        source = printable(str(self.source))
        rows = f"row{'s' if len(self.rows) > 1 else ''} {', '.join(str(r) for r in self.rows)}"
        table = printable(self.table.name) if self.table is not None else ""
        if self.kind == "move":
            return (f"relabel {source}: {self.old_label!r} -> {self.label!r}, "
                    f"moved to {printable(str(self.destination))}")
        if self.kind == "relabel_row":
            return f"relabel {source}: {self.old_label!r} -> {self.label!r} ({rows} of {table})"
        dropped = f", {rows} dropped from {table}" if self.table is not None else ""
        return f"remove {source} (labelled {self.old_label!r}): moved to {printable(str(self.destination))}{dropped}"


@dataclass(frozen=True)
class Plan:
    """What :func:`apply_plan` will do to the data, checked in full.

    Attributes:
        decisions: The decisions file (absolute).
        data: The class folder or CSV file (absolute).
        kind: ``"folder"`` or ``"csv"``.
        actions: The changes still to make, in order (``keep`` rows make none).
        done: Changes an earlier, interrupted or finished, apply of the same decisions already made
            (read from its undo log); :func:`apply_plan` leaves them alone.
        kept: How many distinct images the decisions keep.
        decisions_sha256: Hash of the decisions file: the undo log is tied to it.
        csv_sha256: CSV data: hash of the CSV's bytes when planned (``None`` for a folder).
    """

    decisions: Path
    data: Path
    kind: str
    actions: tuple[Action, ...]
    done: tuple[Action, ...] = ()
    kept: int = 0
    decisions_sha256: str = ""
    csv_sha256: str | None = None

    @property
    def review_dir(self) -> Path:
        """``<DATA>.review`` (or ``<csv stem>.review``), beside the data."""
        return review_dir(self.data, self.kind)

    @property
    def undo_log(self) -> Path:
        return self.review_dir / UNDO_LOG

    def describe(self) -> list[str]:
        """One line per action still to make, then a line on what is already done or kept."""
        lines = [a.describe() for a in self.actions]
        if self.done:
            lines.append(f"({len(self.done)} change(s) already made by an earlier apply of these decisions)")
        if not self.actions:
            lines.append("Nothing to change.")
        return lines


def review_dir(data: Path, kind: str) -> Path:
    """The folder beside the data that holds the quarantine and the undo log."""
    return data.parent / f"{data.name if kind == 'folder' else data.stem}{REVIEW_SUFFIX}"


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
            if row.label not in classes:
                hint = did_you_mean(row.label, classes)
                checker.add(row.line, f"unknown class {row.label!r} for {printable(str(relative))}.{hint} "
                                      f"Classes: {', '.join(repr(printable(c)) for c in classes)}. A relabel moves the "
                                      "image into an existing class folder: create it first for a new class.")
                continue
            if row.label == old:
                checker.add(row.line, f"{printable(str(relative))} is already in class {row.label!r}; "
                                      "decide 'keep' or give another class.")
                continue
            destination = root / row.label / source.name
            if checker.destination(row.line, source, destination):
                actions.append(Action("move", source, destination, row.label, old, row.line))
        else:
            destination = quarantine / relative
            if checker.destination(row.line, source, destination):
                actions.append(Action("quarantine", source, destination, None, old, row.line))
    return actions, kept


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
            if row.label not in labels:
                hint = did_you_mean(row.label, labels)
                checker.add(row.line, f"unknown class {row.label!r} for {printable(row.path)}.{hint} "
                                      f"Classes in the CSV: {', '.join(repr(c) for c in labels)}. Add a row of the "
                                      "new class by hand first if it is a new class.")
                continue
            if all(label == row.label for _, label, _ in entries):
                checker.add(row.line, f"{printable(row.path)} is already labelled {row.label!r}; "
                                      "decide 'keep' or give another class.")
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


# --- the undo log ------------------------------------------------------------------------------


def _read_log(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"The undo log {printable(str(path))!r} cannot be read ({error}). It was written by "
                        "transferkit review; restore it, or put the listed files back by hand.") from None
    if not isinstance(record, dict) or record.get("format") != LOG_FORMAT or not isinstance(record.get("actions"),
                                                                                           list):
        raise DataError(f"{printable(str(path))!r} is not an undo log of this transferkit version "
                        f"(expected format {LOG_FORMAT}).")
    return record


def _write_log(path: Path, record: dict[str, Any]) -> None:
    # ensure_ascii: a file name that is not UTF-8 (lone surrogates) survives the round trip
    write_text_atomic(path, json.dumps(record, indent=1, ensure_ascii=True) + "\n")


def _check_same_decisions(record: dict[str, Any], digest: str, log_path: Path) -> None:
    if record.get("decisions_sha256") == digest and record.get("state") != "undoing":
        return
    if record.get("state") == "undoing":
        why = "an undo that did not finish"
        fix = "Run undo again to finish it, then apply."
    else:
        why = "changes made from other decisions" + (" (an apply that did not finish)"
                                                     if record.get("state") != "applied" else "")
        fix = ("Undo them first (transferkit review DATA --undo), or keep them for good by deleting the undo log "
               "(the quarantined images stay where they are).")
    raise DataError(f"{printable(str(log_path))!r} records {why}. {fix}")


def _to_log(path: Path | None, base: Path) -> str | None:
    return None if path is None else os.path.relpath(path, base)


def _from_log(text: str | None, base: Path) -> Path | None:
    return None if text is None else Path(os.path.normpath(base / text))


def _entry(action: Action, base: Path, state: str) -> dict[str, Any]:
    return {"kind": action.kind, "source": _to_log(action.source, base),
            "destination": _to_log(action.destination, base), "label": action.label,
            "old_label": action.old_label, "line": action.line, "rows": list(action.rows), "state": state}


def _action(entry: dict[str, Any], base: Path, table: Path | None) -> Action:
    source = _from_log(entry["source"], base)
    if source is None:
        raise DataError(f"The undo log under {str(base)!r} has an entry without a source; it was not written by "
                        "transferkit review. Move it away to start afresh.")
    return Action(entry["kind"], source, _from_log(entry.get("destination"), base),
                  entry.get("label"), entry.get("old_label", ""), int(entry.get("line", 0)),
                  tuple(entry.get("rows", ())), table)


def _moved(action: Action) -> bool:
    """Whether a move was made: its source is gone and its destination present."""
    assert action.destination is not None
    return not os.path.lexists(action.source) and os.path.lexists(action.destination)


def _plan_from_log(record: dict[str, Any], decisions: Path, root: Path, kind: str, digest: str) -> Plan:
    base = root.parent
    table = root if kind == "csv" else None
    csv_done = False
    if kind == "csv" and record.get("csv"):
        csv_done = record["csv"]["state"] == "done" or _sha256(root.read_bytes()) == record["csv"]["after_sha256"]
    done: list[Action] = []
    left: list[Action] = []
    for entry in record["actions"]:
        action = _action(entry, base, table)
        finished = entry["state"] == "done" or (csv_done if action.kind == "relabel_row" else _moved(action))
        (done if finished else left).append(action)
    csv_sha = _sha256(root.read_bytes()) if kind == "csv" else None
    return Plan(decisions, root, kind, tuple(left), tuple(done), int(record.get("kept", 0)), digest, csv_sha)


# --- applying and undoing ----------------------------------------------------------------------


def _rename(source: Path, destination: Path) -> None:
    """One atomic rename (its own name, so that a test can interrupt a run right after it)."""
    os.replace(source, destination)


def _move(source: Path, destination: Path, *, make_parents: bool) -> bool:
    """Move one file without overwriting anything; ``False`` when it had been moved already."""
    if not os.path.lexists(source):
        if os.path.lexists(destination):
            return False
        raise DataError(f"{printable(str(source))} is gone, and is not at {printable(str(destination))} either. "
                        "Put it back, then run again.")
    if os.path.lexists(destination):
        raise DataError(f"Cannot move {printable(str(source))} to {printable(str(destination))}: a file is "
                        "already there (it appeared after the plan was made). Move it away, then run again.")
    if make_parents:
        destination.parent.mkdir(parents=True, exist_ok=True)
    _rename(source, destination)
    _sync_directory(destination.parent)
    if source.parent != destination.parent:
        _sync_directory(source.parent)
    return True


def apply_plan(plan: Plan) -> Path:
    """Make the changes of ``plan``, recording each in the undo log first; returns the log's path.

    The log (``<DATA>.review/undo.json``, or ``<csv stem>.review/undo.json``) lists every action
    as ``pending`` before the first change and marks each ``done`` right after it, so a run that
    stops halfway (killed, a full disk, a file that appeared at a destination) can be finished
    by planning and applying the same decisions again, or put back with :func:`undo_decisions`. A plan with
    nothing left to do changes nothing and logs that it did not.

    Raises:
        DataError: an undo log of other decisions is there; a CSV changed since it was planned;
            a move cannot be made (the message names the file, and the log keeps what was done).
    """
    log_path = plan.undo_log
    base = plan.data.parent
    record = _read_log(log_path) if log_path.is_file() else None
    if record is not None:
        _check_same_decisions(record, plan.decisions_sha256, log_path)
    if record is not None and plan.done:  # an earlier run's moves made just before it was stopped
        _mark_done(record, plan.done, base)
        if not plan.actions:
            record["state"] = "applied"
        _write_log(log_path, record)
    if not plan.actions:
        if plan.done:
            log.info("Nothing to change: the %d change(s) of %s were already made (undo log %s).",
                     len(plan.done), printable(str(plan.decisions)), printable(str(log_path)))
        else:
            log.info("Nothing to change: %s keeps every image it lists.", printable(str(plan.decisions)))
        return log_path
    everything = [*plan.done, *plan.actions]
    rows_changed = any(a.kind in ("relabel_row", "quarantine") and a.rows for a in everything)
    if record is None:
        record = {"format": LOG_FORMAT, "tool": "transferkit review --apply", "kind": plan.kind,
                  "data": plan.data.name, "decisions": printable(str(plan.decisions)),
                  "decisions_sha256": plan.decisions_sha256, "kept": plan.kept, "state": "applying", "csv": None,
                  "actions": [_entry(a, base, "pending") for a in plan.actions]}
        plan.review_dir.mkdir(exist_ok=True)
        if plan.kind == "csv" and rows_changed:
            before = plan.data.read_bytes()
            if _sha256(before) != plan.csv_sha256:
                raise DataError(f"{printable(str(plan.data))!r} changed since the plan was made. Plan again.")
            backup = plan.review_dir / f"{plan.data.name}.before"
            write_bytes_atomic(backup, before)
            after = _csv_after(before, everything)
            record["csv"] = {"path": _to_log(plan.data, base), "backup": _to_log(backup, base),
                             "before_sha256": _sha256(before), "after_sha256": _sha256(after), "state": "pending"}
        _write_log(log_path, record)  # everything recorded before anything changes
    else:
        record["state"] = "applying"
    entries = record["actions"]
    by_source = {(e["kind"], e["source"]): e for e in entries}
    try:
        if record.get("csv") and record["csv"]["state"] != "done":
            _apply_csv(plan, record, base, everything)
            _write_log(log_path, record)
        for action in plan.actions:
            entry = by_source[(action.kind, _to_log(action.source, base))]
            if action.kind != "relabel_row":
                assert action.destination is not None
                _move(action.source, action.destination, make_parents=action.kind == "quarantine")
            entry["state"] = "done"
            _write_log(log_path, record)
    except OSError as error:
        raise DataError(f"Applying {printable(str(plan.decisions))!r} stopped: {error}. The changes made so far are "
                        f"recorded in {printable(str(log_path))!r}: fix the cause and apply the same decisions "
                        "again to finish, or undo to put everything back.") from error
    record["state"] = "applied"
    _write_log(log_path, record)
    log.info("Made %d change(s) from %s; %s puts them back.", len(plan.actions), printable(str(plan.decisions)),
             printable(str(log_path)))
    return log_path


def _mark_done(record: dict[str, Any], actions: Sequence[Action], base: Path) -> None:
    done = {(a.kind, _to_log(a.source, base)) for a in actions}
    for entry in record["actions"]:
        if (entry["kind"], entry["source"]) in done:
            entry["state"] = "done"
    if record.get("csv") and any(a.kind == "relabel_row" for a in actions):
        record["csv"]["state"] = "done"


def _csv_after(before: bytes, actions: Sequence[Action]) -> bytes:
    relabel = {row: a.label for a in actions if a.kind == "relabel_row" for row in a.rows if a.label is not None}
    drop = {row for a in actions if a.kind == "quarantine" for row in a.rows}
    return _rewrite_csv(before, relabel, drop)


def _apply_csv(plan: Plan, record: dict[str, Any], base: Path, actions: Sequence[Action]) -> None:
    entry = record["csv"]
    backup = _from_log(entry["backup"], base)
    assert backup is not None
    before = backup.read_bytes()
    current = _sha256(plan.data.read_bytes())
    if current == entry["before_sha256"]:
        after = _csv_after(before, actions)
        if _sha256(after) != entry["after_sha256"]:  # the rewrite is deterministic: anything else is a bug
            raise DataError(f"The rewrite of {printable(str(plan.data))!r} does not match the undo log; nothing "
                            "more was changed. Undo, then apply again.")
        write_bytes_atomic(plan.data, after)
    elif current != entry["after_sha256"]:
        raise DataError(f"{printable(str(plan.data))!r} changed since the decisions were first applied. Undo "
                        "(its earlier bytes are in the review folder), then plan again.")
    entry["state"] = "done"


def _prune(folder: Path) -> None:
    """Remove ``folder`` and its sub-folders where they are empty (files are never touched)."""
    if not folder.is_dir():
        return
    for parent, _, _ in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(parent)


def undo_decisions(data: PathLike) -> list[str]:
    """Put back every change the last apply on ``data`` made, newest first; returns what it did.

    Files move back from where the apply put them; a CSV gets its exact earlier bytes back.
    Each step is marked ``undone`` in the log as it is made, so an undo that stops halfway can
    be run again. At the end the log and the CSV's saved copy are removed, and the quarantine and
    review folders too where they are empty (anything else found there is left alone). After an
    apply and an undo, the data is byte for byte and path for path what it was — also after an
    apply that stopped halfway.

    Raises:
        DataError: there is no undo log; a file is both at its old and its new place, or at
            neither; a CSV was changed after the apply (its earlier copy is named).
    """
    root, kind = _data_target(data)
    folder = review_dir(root, kind)
    log_path = folder / UNDO_LOG
    if not log_path.is_file():
        raise DataError(f"Nothing to undo for {printable(str(data))!r}: there is no undo log "
                        f"{printable(str(log_path))!r} (no decisions applied, or already undone).")
    record = _read_log(log_path)
    base = root.parent
    table = root if kind == "csv" else None
    record["state"] = "undoing"
    _write_log(log_path, record)
    lines: list[str] = []
    for entry in reversed(record["actions"]):
        if entry["state"] == "undone":
            continue
        action = _action(entry, base, table)
        if action.kind != "relabel_row":
            assert action.destination is not None
            source, destination = action.source, action.destination
            if os.path.lexists(destination) and not os.path.lexists(source):
                _move(destination, source, make_parents=True)
                lines.append(f"put back {printable(str(source))} (from {printable(str(destination))})")
            elif os.path.lexists(destination):
                raise DataError(f"Cannot undo: {printable(str(source))} and {printable(str(destination))} both "
                                "exist. Move one of them away, then run undo again.")
            elif not os.path.lexists(source):
                raise DataError(f"Cannot undo: {printable(str(source))} is gone, and is not at "
                                f"{printable(str(destination))} either. Put it back, then run undo again.")
        entry["state"] = "undone"
        _write_log(log_path, record)
    entry = record.get("csv")
    if entry and entry["state"] != "undone":
        backup = _from_log(entry["backup"], base)
        assert backup is not None
        current = _sha256(root.read_bytes())
        if current == entry["after_sha256"]:
            write_bytes_atomic(root, backup.read_bytes())
            lines.append(f"restored {printable(str(root))} as it was before the review")
        elif current != entry["before_sha256"]:
            raise DataError(f"Cannot undo: {printable(str(root))!r} was changed after the decisions were applied. "
                            f"Its bytes before the review are in {printable(str(backup))!r}: copy them back by hand "
                            "if you want them.")
        entry["state"] = "undone"
        _write_log(log_path, record)
        backup.unlink(missing_ok=True)
    log_path.unlink()
    _sync_directory(folder)
    _prune(folder / QUARANTINE)
    _prune(folder)
    if not lines:
        lines.append("Nothing was changed, so nothing was put back.")
    return lines
