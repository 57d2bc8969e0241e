"""Carrying out a planned review's decisions on a dataset — recorded first, reversible, never deleting.

:func:`~transferkit._review._plan.plan_decisions` checks ``decisions.csv`` against the data and
returns a :class:`~transferkit._review._changes.Plan`; :func:`apply_plan` makes its changes;
:func:`undo_decisions` puts them back.

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
    >>> log = apply_plan(plan)          # photos.review/undo.json
    >>> undo_decisions("photos/")                 # everything back, byte for byte
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit._atomic import _sync_directory, write_bytes_atomic
from transferkit._errors import DataError
from transferkit._review._changes import (
    LOG_FORMAT,
    QUARANTINE,
    UNDO_LOG,
    Action,
    Plan,
    _action,
    _check_same_decisions,
    _entry,
    _from_log,
    _read_log,
    _sha256,
    _to_log,
    _write_log,
    review_dir,
)
from transferkit._review._plan import _data_target, _rewrite_csv
from transferkit._types import PathLike
from transferkit.data._images import printable

__all__ = ["apply_plan", "undo_decisions"]

log = logging.getLogger("transferkit")


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
