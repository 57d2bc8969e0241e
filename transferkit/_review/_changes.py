"""The changes a review's decisions make, and the undo log that records them.

An :class:`Action` is one change (a file moved to another class folder or to the quarantine, a CSV
row relabelled or dropped); a :class:`Plan` is the checked list of them that
:func:`~transferkit._review._plan.plan_decisions` makes and
:func:`~transferkit._review._apply.apply_plan` carries out. Both sides meet in the undo log,
``<DATA>.review/undo.json`` beside the data: apply writes it ahead of every change
(``_write_log``, ``_entry``), and planning the same decisions again reads it back (``_read_log``,
``_plan_from_log``), so that an interrupted apply can be finished or undone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit._atomic import write_text_atomic
from transferkit._errors import DataError
from transferkit.data._images import printable

ACTION_KINDS = ("move", "relabel_row", "quarantine")
REVIEW_SUFFIX = ".review"
QUARANTINE = "quarantine"
UNDO_LOG = "undo.json"
LOG_FORMAT = 1


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



# --- the undo log --------------------------------------------------------------------------------


def _write_log(path: Path, record: dict[str, Any]) -> None:
    # ensure_ascii: a file name that is not UTF-8 (lone surrogates) survives the round trip
    write_text_atomic(path, json.dumps(record, indent=1, ensure_ascii=True) + "\n")


def _to_log(path: Path | None, base: Path) -> str | None:
    return None if path is None else os.path.relpath(path, base)


def _entry(action: Action, base: Path, state: str) -> dict[str, Any]:
    return {"kind": action.kind, "source": _to_log(action.source, base),
            "destination": _to_log(action.destination, base), "label": action.label,
            "old_label": action.old_label, "line": action.line, "rows": list(action.rows), "state": state}


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


def _from_log(text: str | None, base: Path) -> Path | None:
    return None if text is None else Path(os.path.normpath(base / text))


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

