"""keras-tuner's search folder written whole, and read back after a kill with no trial lost or run twice.

A save interrupted between the temporary file and its rename stands in for a chief killed at
that moment: the process's memory is thrown away, and a new oracle reloads the folder as a
restarted chief does. keras-tuner's own oracles and trials are used throughout; only transferkit's
rename is made to fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras_tuner as kt
import pytest

import transferkit._atomic
from transferkit._distributed_search import servicer_class
from transferkit._errors import ConfigError
from transferkit._search_state import (
    KERAS_TUNER_SOURCES,
    already_ended,
    check_keras_tuner,
    recover,
    search_is_over,
    write_atomically,
)
from transferkit._tuning import search_space


class Killed(BaseException):
    """The process dies here (a BaseException, like the KeyboardInterrupt of a real interruption)."""


def _oracle(folder: Path, max_trials: int = 4) -> kt.Oracle:
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials,
                                           hyperparameters=search_space(), max_consecutive_failed_trials=None, seed=1)
    oracle._set_project_dir(str(folder), "project")
    return oracle


def _restarted(folder: Path, max_trials: int = 4) -> tuple[kt.Oracle, object]:
    """A new chief's oracle on ``folder``: keras-tuner's reload, then transferkit's repairs."""
    oracle = _oracle(folder, max_trials)
    oracle.reload()
    return oracle, recover(oracle)


def _complete(oracle: kt.Oracle, trial_id: str, score: float) -> None:
    oracle.update_trial(trial_id, {"val_accuracy": score})
    trial = oracle.get_trial(trial_id)
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


@pytest.fixture(autouse=True)
def atomic_keras_tuner() -> None:
    write_atomically()


def _kill_at(monkeypatch: pytest.MonkeyPatch, name: str, seen: list[tuple[str, dict]]) -> None:
    """Kill the process between writing ``name``'s temporary and renaming it: check both first."""
    rename = transferkit._atomic._replace

    def replace(temporary: Path, final: Path) -> None:
        if final.name == name:
            seen.append((temporary.name, json.loads(temporary.read_text())))  # the new file is whole
            raise Killed
        rename(temporary, final)

    monkeypatch.setattr(transferkit._atomic, "_replace", replace)


def test_the_code_changed_since_keras_tuner_1_4_8_is_refused_with_a_clear_error():
    check_keras_tuner()  # the installed keras-tuner is the one the fix was written for
    changed = {**KERAS_TUNER_SOURCES, "Oracle.reload": "0" * 16}
    with pytest.raises(ConfigError, match=r"keras-tuner \S+ changed the code this relies on \(Oracle.reload\)"):
        check_keras_tuner(changed)


def test_a_chief_killed_while_writing_oracle_json_leaves_the_last_oracle_json_and_loses_no_trial(tmp_path,
                                                                                                   monkeypatch):
    oracle = _oracle(tmp_path)
    first = oracle.create_trial("tuner0")
    _complete(oracle, first.trial_id, 0.5)
    second = oracle.create_trial("tuner0")
    before = (tmp_path / "project" / "oracle.json").read_text()
    seen: list[tuple[str, dict]] = []
    with monkeypatch.context() as patch:
        _kill_at(patch, "oracle.json", seen)
        with pytest.raises(Killed):
            oracle.update_trial(second.trial_id, {"val_accuracy": 0.75})
            trial = oracle.get_trial(second.trial_id)
            trial.status = "COMPLETED"
            oracle.end_trial(trial)  # trial.json is written, then the process dies writing oracle.json
    assert seen and seen[0][0].startswith(".oracle.json.") and seen[0][0].endswith(".tmp")
    assert second.trial_id in seen[0][1]["end_order"]  # the new oracle.json was complete …
    project = tmp_path / "project"
    assert not list(project.glob(".oracle.json.*"))  # … its temporary gone, the old file whole and in place
    assert json.loads((project / "oracle.json").read_text()) == json.loads(before)
    assert json.loads((project / f"trial_{second.trial_id}" / "trial.json").read_text())["status"] == "COMPLETED"

    restarted, recovery = _restarted(tmp_path)
    assert recovery.ended == (second.trial_id,) and not recovery.running and not recovery.forgotten
    assert restarted.trials[second.trial_id].status == "COMPLETED" and restarted.trials[second.trial_id].score == 0.75
    assert restarted.end_order == [first.trial_id, second.trial_id] and not restarted.ongoing_trials
    assert not restarted._retry_queue  # keras-tuner alone would run the completed trial again
    third = restarted.create_trial("tuner0")
    assert third.trial_id not in (first.trial_id, second.trial_id)


def test_a_trial_created_but_not_recorded_is_created_again_not_lost(tmp_path, monkeypatch):
    oracle = _oracle(tmp_path)
    _complete(oracle, oracle.create_trial("tuner0").trial_id, 0.5)
    with monkeypatch.context() as patch:
        _kill_at(patch, "oracle.json", [])
        with pytest.raises(Killed):
            oracle.create_trial("tuner1")  # trial_1/trial.json written, oracle.json not: no worker has it
    assert (tmp_path / "project" / "trial_1" / "trial.json").is_file()

    restarted, recovery = _restarted(tmp_path)
    assert recovery.forgotten == ("1",) and not (tmp_path / "project" / "trial_1").exists()
    again = restarted.create_trial("tuner1")
    assert again.trial_id == "1" and again.status == "RUNNING"
    assert again.hyperparameters.values == oracle.trials["1"].hyperparameters.values  # the same draw
    _complete(restarted, "1", 0.6)
    for tuner_id in ("tuner0", "tuner1"):
        trial = restarted.create_trial(tuner_id)
        _complete(restarted, trial.trial_id, 0.7)
    assert restarted.create_trial("tuner0").status == "STOPPED"
    assert sorted(t.trial_id for t in restarted.trials.values() if t.status == "COMPLETED") == ["0", "1", "2", "3"]


def test_trials_running_when_the_chief_died_stay_with_their_workers_and_end_once(tmp_path):
    oracle = _oracle(tmp_path)
    a, b = oracle.create_trial("tuner0"), oracle.create_trial("tuner1")
    # the chief is killed here; keras-tuner's reload alone would queue both trials to run again
    alone = _oracle(tmp_path)
    alone.reload()
    assert sorted(alone._retry_queue) == [a.trial_id, b.trial_id] and not alone.ongoing_trials

    restarted, recovery = _restarted(tmp_path)
    assert recovery.running == (("tuner0", a.trial_id), ("tuner1", b.trial_id))
    assert "trial(s) 0 (tuner0), 1 (tuner1) were running" in recovery.describe(worker_timeout=30)
    assert not restarted._retry_queue and restarted.tuner_ids == {"tuner0", "tuner1"}
    assert restarted.create_trial("tuner1").trial_id == b.trial_id  # tuner1 restarted: its trial again
    _complete(restarted, a.trial_id, 0.9)  # tuner0 reports the trial it kept running
    report = restarted.get_trial(a.trial_id)
    assert already_ended(restarted, a.trial_id, report.status)  # its report sent again is a repeat …

    from keras_tuner.src import protos

    servicer = servicer_class()(restarted, {})
    servicer.EndTrial(protos.get_service().EndTrialRequest(trial=report.to_proto()), None)
    assert restarted.end_order == [a.trial_id]  # … recorded once
    _complete(restarted, b.trial_id, 0.8)
    for tuner_id in ("tuner0", "tuner1"):
        _complete(restarted, restarted.create_trial(tuner_id).trial_id, 0.1)
    assert search_is_over(restarted)
    assert sorted(restarted.end_order) == ["0", "1", "2", "3"]


def test_every_file_keras_tuner_writes_goes_through_a_temporary(tmp_path, monkeypatch):
    names: list[str] = []
    rename = transferkit._atomic._replace

    def replace(temporary: Path, final: Path) -> None:
        names.append(final.name)
        rename(temporary, final)

    monkeypatch.setattr(transferkit._atomic, "_replace", replace)
    tuner = kt.RandomSearch(hypermodel=lambda hp: None, objective=kt.Objective("val_accuracy", "max"), max_trials=1,
                            directory=str(tmp_path), project_name="p", hyperparameters=search_space())
    tuner.save()  # oracle.json and the tuner's own <tuner id>.json
    tuner.oracle.create_trial(tuner.tuner_id)  # trial.json and oracle.json
    written = sorted(str(p.relative_to(tmp_path / "p")) for p in (tmp_path / "p").rglob("*.json"))
    assert written == sorted(["oracle.json", f"{tuner.tuner_id}.json", "trial_0/trial.json"])
    assert set(names) == {"oracle.json", f"{tuner.tuner_id}.json", "trial.json"}
