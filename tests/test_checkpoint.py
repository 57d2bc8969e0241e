"""The checkpoint of one fit (transferkit._checkpoint): what it records, what it refuses, how it restarts."""

from __future__ import annotations

import numpy as np
import pytest

import transferkit as tk
from transferkit._checkpoint import Checkpoint, StageResume

FINGERPRINT = {"backbone": "tiny_cnn", "seed": 0}


def _finished(checkpoint: Checkpoint, name: str, arrays: list[np.ndarray], *, epochs: int = 2) -> StageResume:
    checkpoint.next_stage(name, refit=False)
    stage = StageResume(index=checkpoint.current, name=name, done=True, epochs=epochs,
                        history={name: {"loss": [1.0, 0.5][:epochs]}})
    checkpoint.record_done(stage, arrays)
    return stage


def test_a_finished_stage_comes_back_with_its_arrays_in_a_new_process(tmp_path):
    weights = [np.arange(6, dtype="float32").reshape(2, 3), np.ones(3, "float32")]
    _finished(Checkpoint(tmp_path, FINGERPRINT), "head", weights)
    again = Checkpoint(tmp_path, FINGERPRINT)  # as a rerun of the same command would
    stage = again.next_stage("head", refit=False)
    assert stage is not None and stage.done and stage.epochs == 2 and stage.history["head"]["loss"] == [1.0, 0.5]
    for stored, original in zip(again.arrays(stage), weights):
        np.testing.assert_array_equal(stored, original)
    assert again.next_stage("fine_tune", refit=False) is None  # nothing recorded past the head phase
    assert Checkpoint.peek(tmp_path / "state.json") == "head epoch 2 (finished)"


def test_a_running_stage_records_its_last_epoch_and_peek_says_where(tmp_path):
    checkpoint = Checkpoint(tmp_path, FINGERPRINT)
    _finished(checkpoint, "head", [np.zeros(2, "float32")])
    checkpoint.next_stage("fine_tune", refit=False)
    running = StageResume(index=checkpoint.current, name="fine_tune", done=False, epochs=3)
    checkpoint.record_epoch(running, [np.full(2, 7.0, "float32")])
    assert Checkpoint.peek(tmp_path / "state.json") == "fine_tune epoch 3"
    again = Checkpoint(tmp_path, FINGERPRINT)
    again.next_stage("head", refit=False)
    stage = again.next_stage("fine_tune", refit=False)
    assert stage is not None and not stage.done and stage.epochs == 3
    np.testing.assert_array_equal(again.arrays(stage)[0], [7.0, 7.0])


def test_another_runs_checkpoint_is_refused_and_restart_clears_it(tmp_path):
    _finished(Checkpoint(tmp_path, FINGERPRINT), "head", [np.zeros(1, "float32")])
    with pytest.raises(tk.ConfigError, match="other settings or data.*seed"):
        Checkpoint(tmp_path, {**FINGERPRINT, "seed": 1})
    fresh = Checkpoint(tmp_path, {**FINGERPRINT, "seed": 1}, restart=True)
    assert fresh.next_stage("head", refit=False) is None
    assert not list(tmp_path.glob("stage-*.npz"))


def test_a_stage_recorded_under_another_name_or_a_damaged_file_is_refused(tmp_path):
    stage = _finished(Checkpoint(tmp_path, FINGERPRINT), "head", [np.zeros(1, "float32")])
    with pytest.raises(tk.DataError, match="recorded stage 0 as 'head'"):
        Checkpoint(tmp_path, FINGERPRINT).next_stage("fine_tune", refit=False)
    (tmp_path / f"stage-{stage.index}-done.npz").write_bytes(b"not an npz")
    again = Checkpoint(tmp_path, FINGERPRINT)
    with pytest.raises(tk.DataError, match="cannot be read"):
        again.arrays(again.next_stage("head", refit=False))
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(tk.DataError, match="cannot be read"):
        Checkpoint(tmp_path, FINGERPRINT)
