"""Carrying out a review's decisions: checked before anything changes, atomic, resumable, undoable.

Every test compares whole directory trees (relative paths and the sha256 of every file, hidden
ones and folders included), so "nothing changed" and "put back exactly" mean byte for byte and
path for path.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from conftest import color_image

from transferkit._errors import DataError
from transferkit._review import _apply
from transferkit._review._apply import apply_plan, undo_decisions
from transferkit._review._changes import Action, Plan
from transferkit._review._plan import plan_decisions
from transferkit.data._sources import read_csv, scan_folder

COLORS = {"blue": (30, 40, 220), "green": (40, 200, 40), "red": (220, 30, 30)}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too), with the sha256 of each file's bytes; the ``review``
    folder the tests keep their decisions files in is left out."""
    tree: dict[str, str] = {}
    for parent, folders, files in os.walk(root):
        if parent == str(root):
            folders[:] = [f for f in folders if f != "review"]
        for name in folders:
            tree[os.path.relpath(os.path.join(parent, name), root)] = "<folder>"
        for name in files:
            path = os.path.join(parent, name)
            tree[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return tree


def write_decisions(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "decision", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """tmp/data/{blue,green,red}/{b,g,r}{0,1,2}.png (names unique across classes); decisions files go in tmp/review/."""
    (tmp_path / "review").mkdir()
    data = tmp_path / "data"
    for c, (name, color) in enumerate(COLORS.items()):
        (data / name).mkdir(parents=True)
        for i in range(3):
            color_image(color, size=8, seed=10 * c + i).save(data / name / f"{name[0]}{i}.png")
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_relabel_moves_remove_quarantines_beside_keep_does_nothing(data: Path, tmp_path: Path) -> None:
    moved, removed = sha(data / "blue" / "b1.png"), sha(data / "red" / "r0.png")
    decisions = write_decisions(tmp_path / "review" / "decisions.csv", [
        ("blue/b1.png", "relabel", "green"),            # relative to the data folder
        (str(data / "red" / "r0.png"), "remove", ""),   # absolute
        ("green/g2.png", "keep", ""),
        ("blue/b1.png", "relabel", "green"),            # the same decision twice counts once
    ])
    plan = plan_decisions(decisions, data)
    assert isinstance(plan, Plan) and plan.kind == "folder" and plan.kept == 1
    assert [(a.kind, a.source, a.destination, a.label, a.line) for a in plan.actions] == [
        ("move", data / "blue" / "b1.png", data / "green" / "b1.png", "green", 2),
        ("quarantine", data / "red" / "r0.png", tmp_path / "data.review" / "quarantine" / "red" / "r0.png", None, 3),
    ]
    assert "'blue' -> 'green'" in plan.actions[0].describe() and "remove" in plan.actions[1].describe()
    assert not (tmp_path / "data.review").exists()  # planning changes nothing

    log_path = apply_plan(plan)

    assert log_path == tmp_path / "data.review" / "undo.json"
    assert not (data / "blue" / "b1.png").exists() and sha(data / "green" / "b1.png") == moved
    assert sha(tmp_path / "data.review" / "quarantine" / "red" / "r0.png") == removed
    assert not any(".review" in str(p) or "quarantine" in str(p) for p in data.rglob("*"))
    record = json.loads(log_path.read_text())
    assert record["state"] == "applied" and [e["state"] for e in record["actions"]] == ["done", "done"]
    files = scan_folder(data)
    assert files.class_counts().tolist() == [2, 4, 2]


def test_a_relabel_to_a_class_without_a_folder_is_refused_and_no_folder_is_made(data: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    decisions = write_decisions(tmp_path / "review" / "d.csv", [("blue/b1.png", "relabel", "gren")])
    with pytest.raises(DataError, match=r"line 2: unknown class 'gren'.*Did you mean 'green'"):
        plan_decisions(decisions, data)
    assert snapshot(tmp_path) == before


def test_every_bad_row_is_listed_by_line_and_nothing_changes(data: Path, tmp_path: Path) -> None:
    (data / "green" / "g9.png").write_bytes((data / "blue" / "b1.png").read_bytes())
    (data / "blue" / "r0.png").write_bytes((data / "blue" / "b1.png").read_bytes())
    decisions = write_decisions(tmp_path / "review" / "d.csv", [
        ("blue/b0.png", "relabel", "red"),          # line 2: fine on its own
        ("blue/b2.png", "remvoe", ""),              # 3: unknown decision
        ("purple/5.png", "remove", ""),            # 4: not an image of the data (and missing)
        (str(tmp_path / "elsewhere.png"), "remove", ""),  # 5: outside the data
        ("red/r1.png", "relabel", "red"),           # 6: already that class
        ("green/g7.png", "remove", ""),             # 7: missing file
        ("red/r2.png", "remove", ""),               # 8
        ("red/r2.png", "relabel", "blue"),          # 9: conflicts with line 8
        ("blue/b1.png", "relabel", ""),             # 10: relabel without a label
        ("red/r0.png", "relabel", "blue"),          # 11: blue/r0.png is already there
        ("blue/b9.png", "keep", ""),                # keep: nothing to check but where it is
        ("green/g9.png", "remove", ""),             # 13: fine
    ])
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as caught:
        plan_decisions(decisions, data)
    message = str(caught.value)
    assert "nothing was changed" in message
    listed = {int(text.split(":")[0]): text for text in message.split("\n  line ")[1:]}
    expected = {3: "unknown decision 'remvoe'", 4: "is not an image of", 5: "is not an image of",
                6: "already in class 'red'", 7: "does not exist", 9: "on line 8", 10: "needs the new class",
                11: "where a file already is"}
    assert sorted(listed) == sorted(expected), message
    for line, words in expected.items():
        assert words in listed[line], (line, message)
    assert snapshot(tmp_path) == before


def test_two_files_relabelled_onto_the_same_name_clash(data: Path, tmp_path: Path) -> None:
    (data / "green" / "g1.png").rename(data / "green" / "x.png")
    (data / "red" / "r1.png").rename(data / "red" / "x.png")
    decisions = write_decisions(tmp_path / "review" / "d.csv",
                                [("green/x.png", "relabel", "blue"), ("red/x.png", "relabel", "blue")])
    with pytest.raises(DataError, match=r"line 3: .*like the image of line 2"):
        plan_decisions(decisions, data)


def test_apply_twice_changes_nothing_the_second_time_and_says_so(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    decisions = write_decisions(tmp_path / "review" / "d.csv",
                                [("blue/b1.png", "relabel", "green"), ("red/r0.png", "remove", "")])
    apply_plan(plan_decisions(decisions, data))
    after = snapshot(tmp_path)
    again = plan_decisions(decisions, data)
    assert again.actions == () and len(again.done) == 2 and "Nothing to change." in again.describe()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        apply_plan(again)
    assert "Nothing to change" in caplog.text and "already made" in caplog.text
    assert snapshot(tmp_path) == after


def test_other_decisions_are_refused_while_an_undo_log_is_there(data: Path, tmp_path: Path) -> None:
    apply_plan(plan_decisions(write_decisions(tmp_path / "review" / "a.csv", [("red/r0.png", "remove", "")]), data))
    other = write_decisions(tmp_path / "review" / "b.csv", [("red/r1.png", "remove", "")])
    with pytest.raises(DataError, match="other decisions.*Undo them first"):
        plan_decisions(other, data)


def test_apply_then_undo_puts_the_folder_back_exactly(data: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    decisions = write_decisions(tmp_path / "review" / "d.csv", [
        ("blue/b1.png", "relabel", "green"), ("red/r0.png", "remove", ""), ("red/r1.png", "remove", ""),
        ("red/r2.png", "remove", ""), ("green/g0.png", "relabel", "red"), ("blue/b2.png", "keep", "")])
    apply_plan(plan_decisions(decisions, data))
    assert snapshot(tmp_path) != before
    assert [p.name for p in (data / "red").iterdir()] == ["g0.png"]  # green's, moved in; red's in quarantine

    lines = undo_decisions(data)

    assert len(lines) == 5 and all(line.startswith("put back") for line in lines)
    assert snapshot(tmp_path) == before  # data byte for byte, and no data.review left behind
    with pytest.raises(DataError, match="Nothing to undo"):
        undo_decisions(data)


def test_paths_as_listed_from_the_working_folder_are_accepted(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the review was run as `transferkit review data/`: it lists data/blue/b1.png
    decisions = write_decisions(tmp_path / "review" / "d.csv", [("data/blue/b1.png", "relabel", "red")])
    plan = plan_decisions(decisions, "data")
    assert [(a.source, a.destination) for a in plan.actions] == [(data / "blue" / "b1.png", data / "red" / "b1.png")]


def write_table(tmp_path: Path, data: Path) -> Path:
    """A CSV as people write them: BOM, CRLF, quoted cells, an extra column, relative and absolute paths."""
    text = ("\ufeffpath,label,note\r\n"
            "data/blue/b0.png,blue,\r\n"
            f"{data / 'blue' / 'b1.png'},blue,\"first, with a comma\"\r\n"
            "data/green/g0.png,green,x\r\n"
            "\"data/green/g1.png\",green,\r\n"
            "data/red/r0.png,red,\r\n"
            "data/red/r1.png,red,last")  # no line ending at the end
    table = tmp_path / "labels.csv"
    table.write_bytes(text.encode("utf-8"))
    return table


def test_csv_relabel_rewrites_one_cell_remove_drops_the_row_and_undo_gives_back_the_bytes(
        data: Path, tmp_path: Path) -> None:
    table = write_table(tmp_path, data)
    before = snapshot(tmp_path)
    original = table.read_bytes()
    decisions = write_decisions(tmp_path / "review" / "d.csv", [
        ("data/green/g1.png", "relabel", "red"),             # relative to the CSV's folder, as written in it
        (str(data / "blue" / "b1.png"), "relabel", "green"),  # absolute
        ("data/red/r0.png", "remove", ""),
        ("data/blue/b0.png", "keep", ""),
    ])
    plan = plan_decisions(decisions, table)
    assert plan.kind == "csv" and plan.review_dir == tmp_path / "labels.review"
    assert [(a.kind, a.rows, a.label) for a in plan.actions] == [
        ("relabel_row", (5,), "red"), ("relabel_row", (3,), "green"), ("quarantine", (6,), None)]
    assert "row 5 of labels.csv" in plan.actions[0].describe()

    log_path = apply_plan(plan)

    assert log_path == tmp_path / "labels.review" / "undo.json"
    assert table.read_bytes() == ("\ufeffpath,label,note\r\n"
                                  "data/blue/b0.png,blue,\r\n"
                                  f"{data / 'blue' / 'b1.png'},green,\"first, with a comma\"\r\n"
                                  "data/green/g0.png,green,x\r\n"
                                  "data/green/g1.png,red,\r\n"
                                  "data/red/r1.png,red,last").encode()
    assert (tmp_path / "labels.review" / "quarantine" / "data" / "red" / "r0.png").is_file()
    assert not (data / "red" / "r0.png").exists() and (data / "green" / "g1.png").is_file()  # relabel moves nothing
    files = read_csv(table)
    assert dict(zip([Path(p).name for p in files.paths], files.labels.tolist())) == {
        "b0.png": 0, "b1.png": 1, "g0.png": 1, "g1.png": 2, "r1.png": 2}
    assert plan_decisions(decisions, table).actions == ()

    lines = undo_decisions(table)

    assert any("restored" in line for line in lines) and any("put back" in line for line in lines)
    assert table.read_bytes() == original
    assert snapshot(tmp_path) == before


def test_csv_relabel_to_a_label_it_does_not_have_is_refused(data: Path, tmp_path: Path) -> None:
    table = write_table(tmp_path, data)
    decisions = write_decisions(tmp_path / "review" / "d.csv", [("data/red/r1.png", "relabel", "Red"),
                                                               ("data/red/r9.png", "remove", "")])
    with pytest.raises(DataError) as caught:
        plan_decisions(decisions, table)
    assert "line 2: unknown class 'Red'" in str(caught.value) and "Did you mean 'red'" in str(caught.value)
    assert "line 3: 'data/red/r9.png' is not listed in" in str(caught.value)


def first_actions_then_a_blocker(data: Path, tmp_path: Path) -> tuple[Path, Plan]:
    decisions = write_decisions(tmp_path / "review" / "d.csv", [
        ("blue/b1.png", "relabel", "green"), ("red/r0.png", "remove", ""), ("green/g2.png", "relabel", "blue")])
    return decisions, plan_decisions(decisions, data)


def test_a_run_stopped_by_a_file_that_appeared_at_a_destination_is_finished_by_running_again(
        data: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    decisions, plan = first_actions_then_a_blocker(data, tmp_path)
    blocker = plan.actions[1].destination
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"someone else's file")  # after planning: found only when the move is made

    with pytest.raises(DataError, match="a file is already there"):
        apply_plan(plan)

    record = json.loads(plan.undo_log.read_text())
    assert record["state"] == "applying" and [e["state"] for e in record["actions"]] == ["done", "pending", "pending"]
    assert (data / "green" / "b1.png").is_file() and (data / "red" / "r0.png").is_file()
    blocker.unlink()
    resumed = plan_decisions(decisions, data)
    assert [a.source for a in resumed.done] == [data / "blue" / "b1.png"]
    assert [a.source for a in resumed.actions] == [data / "red" / "r0.png", data / "green" / "g2.png"]

    apply_plan(resumed)

    assert json.loads(plan.undo_log.read_text())["state"] == "applied"
    assert not (data / "red" / "r0.png").exists() and (data / "blue" / "g2.png").is_file()
    undo_decisions(data)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("then", ["finish", "undo"])
def test_a_run_killed_right_after_a_move_is_finished_or_undone(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    before = snapshot(tmp_path)
    decisions, plan = first_actions_then_a_blocker(data, tmp_path)
    real_rename, calls = _apply._rename, []

    def killed_after_the_second(source: Path, destination: Path) -> None:
        real_rename(source, destination)
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies before the log says the move was made

    monkeypatch.setattr(_apply, "_rename", killed_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan)
    monkeypatch.setattr(_apply, "_rename", real_rename)
    record = json.loads(plan.undo_log.read_text())
    assert [e["state"] for e in record["actions"]] == ["done", "pending", "pending"]  # the second is made, unrecorded

    if then == "finish":
        resumed = plan_decisions(decisions, data)
        assert len(resumed.done) == 2 and [a.source for a in resumed.actions] == [data / "green" / "g2.png"]
        apply_plan(resumed)
        assert (data / "blue" / "g2.png").is_file() and not (data / "red" / "r0.png").exists()
        assert plan_decisions(decisions, data).actions == ()
        undo_decisions(data)
    else:
        lines = undo_decisions(data)
        assert len(lines) == 2
    assert snapshot(tmp_path) == before


def test_names_with_spaces_and_non_ascii_letters(tmp_path: Path) -> None:
    data = tmp_path / "my photos"
    (tmp_path / "review").mkdir()
    for c, name in enumerate(["sea lion", "chat é", "日本"]):
        (data / name).mkdir(parents=True)
        for i, file in enumerate([f"photo {c} ü.png", f"名前 {c}.png"]):
            color_image((40 * c, 100, 200), size=8, seed=10 * c + i).save(data / name / file)
    table = tmp_path / "labels ü.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "label"]] + [[str(p.relative_to(tmp_path)), p.parent.name]
                                                         for p in sorted(data.rglob("*.png"))])
    before = snapshot(tmp_path)
    decisions = write_decisions(tmp_path / "review" / "décisions.csv", [
        ("sea lion/photo 0 ü.png", "relabel", "chat é"), (str(data / "日本" / "名前 2.png"), "remove", "")])

    apply_plan(plan_decisions(decisions, data))
    assert (data / "chat é" / "photo 0 ü.png").is_file()
    assert (tmp_path / "my photos.review" / "quarantine" / "日本" / "名前 2.png").is_file()
    undo_decisions(data)
    assert snapshot(tmp_path) == before

    csv_decisions = write_decisions(tmp_path / "review" / "csv décisions.csv", [
        ("my photos/chat é/名前 1.png", "relabel", "日本"), ("my photos/sea lion/photo 0 ü.png", "remove", "")])
    plan = plan_decisions(csv_decisions, table)
    apply_plan(plan)
    assert "my photos/chat é/名前 1.png,日本" in table.read_text(encoding="utf-8")
    assert (tmp_path / "labels ü.review" / "quarantine" / "my photos" / "sea lion" / "photo 0 ü.png").is_file()
    undo_decisions(table)
    assert snapshot(tmp_path) == before


def test_action_is_a_frozen_record() -> None:
    action = Action("quarantine", Path("/d/a/1.png"), Path("/d.review/quarantine/a/1.png"), None, "a", 2)
    with pytest.raises(AttributeError):
        action.kind = "move"  # type: ignore[misc]
    assert action.describe() == "remove /d/a/1.png (labelled 'a'): moved to /d.review/quarantine/a/1.png"


def test_a_csv_run_killed_after_the_rewrite_is_finished_then_undone_to_the_same_bytes(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = write_table(tmp_path, data)
    before = snapshot(tmp_path)
    decisions = write_decisions(tmp_path / "review" / "d.csv",
                                [("data/red/r0.png", "remove", ""), ("data/blue/b0.png", "relabel", "red")])
    plan = plan_decisions(decisions, table)

    def killed(source: Path, destination: Path) -> None:
        raise KeyboardInterrupt  # the CSV is rewritten, the image not yet moved

    monkeypatch.setattr(_apply, "_rename", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan)
    monkeypatch.undo()
    record = json.loads(plan.undo_log.read_text())
    assert record["csv"]["state"] == "done" and (data / "red" / "r0.png").is_file()
    assert b"data/red/r0.png" not in table.read_bytes()
    resumed = plan_decisions(decisions, table)
    assert [a.kind for a in resumed.done] == ["relabel_row"] and [a.kind for a in resumed.actions] == ["quarantine"]
    apply_plan(resumed)
    assert not (data / "red" / "r0.png").exists()
    undo_decisions(table)
    assert snapshot(tmp_path) == before
