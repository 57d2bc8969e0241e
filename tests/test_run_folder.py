"""tk.train_run: the run folder's lock, resume, atomic files, report and clean-up, from Python."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest

import transferkit as tk

HEAD = dataclasses.replace(tk.HEAD_PHASE, epochs=3, learning_rate=1e-2, solve=False, heads=1)
TUNE = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=2, learning_rate=1e-3, policy=tk.UnfreezeTop(1))


def _tuner() -> tk.FineTuner:
    return tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=HEAD, fine_tune_phase=TUNE, seed=0, refit=False)


def _data(folder) -> tk.ImageData:
    return tk.load_folder(folder, image_size=32, batch_size=8, seed=0)


class StopAfter(keras.callbacks.Callback):
    """Ctrl-C at the end of the n-th epoch of the fit (counted across phases)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs, self.seen = epochs, 0

    def on_epoch_end(self, epoch, logs=None):
        self.seen += 1
        if self.seen == self.epochs:
            raise KeyboardInterrupt


def test_train_run_writes_the_run_and_removes_its_checkpoint(image_folder, tmp_path):
    out = tmp_path / "run"
    started = []
    run = tk.train_run(_tuner(), _data(image_folder), out, verbose=0, on_start=started.append)
    assert started == [None]  # a fresh start, reported once the folder was held
    assert run.path == out and run.written and run.resumed_from is None
    assert {p.name for p in out.iterdir()} >= {"model.keras", "transferkit.json", "labels.txt", "metrics.json",
                                               "training_curves.png"}
    assert not (out / "checkpoint").exists()  # everything is written: nothing is left to resume
    assert not [p for p in out.rglob(".*.tmp*")]
    assert run.metrics == json.loads((out / "metrics.json").read_text())
    assert set(run.metrics["history"]) == {"head", "fine_tune"}
    loaded = tk.FineTuner.load(out)
    assert loaded.class_names == ("blue", "green", "red")


def test_train_run_carries_on_after_an_interruption(image_folder, tmp_path):
    data, out = _data(image_folder), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        # Keras calls this callback before the one that records the epoch: the checkpoint ends one epoch earlier
        tk.train_run(_tuner(), data, out, callbacks=[StopAfter(5)], verbose=0)
    assert (out / "checkpoint").is_dir() and not (out / "model.keras").exists()

    started = []
    run = tk.train_run(_tuner(), data, out, verbose=0, on_start=started.append)
    assert run.resumed_from is not None and run.resumed_from == "fine_tune epoch 1"
    assert started == [run.resumed_from]
    assert len(run.metrics["history"]["head"]["loss"]) == 3 and len(run.metrics["history"]["fine_tune"]["loss"]) == 2
    assert not (out / "checkpoint").exists()

    uninterrupted = tk.train_run(_tuner(), data, tmp_path / "whole", verbose=0)
    assert uninterrupted.resumed_from is None
    resumed, whole = tk.FineTuner.load(out).model, tk.FineTuner.load(tmp_path / "whole").model
    for a, b in zip(resumed.weights, whole.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)  # the same run as one never interrupted


def test_restart_starts_over(image_folder, tmp_path):
    data, out = _data(image_folder), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tk.train_run(_tuner(), data, out, callbacks=[StopAfter(2)], verbose=0)
    run = tk.train_run(_tuner(), data, out, restart=True, verbose=0)
    assert run.resumed_from is None and len(run.metrics["history"]["head"]["loss"]) == 3


def test_a_second_train_run_on_the_folder_is_refused_while_the_first_holds_it(image_folder, tmp_path):
    data, out = _data(image_folder), tmp_path / "run"
    refused = []

    def try_a_second_one(resumed_from):
        with pytest.raises(tk.RunInUseError) as error:
            tk.train_run(_tuner(), data, out, verbose=0)
        refused.append(str(error.value))

    tk.train_run(_tuner(), data, out, verbose=0, on_start=try_a_second_one)
    assert len(refused) == 1 and "run" in refused[0]
    assert (out / "model.keras").is_file()  # the first one carried on


@pytest.mark.parametrize("index", [0, 1])
def test_a_cluster_task_without_the_clusters_strategy_is_refused_and_writes_nothing(image_folder, tmp_path,
                                                                                   monkeypatch, index):
    # every task of a multi-worker cluster calls train_run, in step with the others through the
    # strategy (tests/test_multiworker.py runs real clusters); without it each would train alone
    cluster = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": index}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    out = tmp_path / "run"
    with pytest.raises(tk.ConfigError, match="TF_CONFIG names a cluster, but this FineTuner does not train with"):
        tk.train_run(_tuner(), _data(image_folder), out, verbose=0)
    assert not out.exists()


def test_train_run_says_what_it_expects(image_folder, tmp_path):
    with pytest.raises(tk.ConfigError, match="Expected data to be a transferkit.ImageData"):
        tk.train_run(_tuner(), str(image_folder), tmp_path / "run")
    with pytest.raises(tk.ConfigError, match="Expected tuner to be a transferkit.FineTuner"):
        tk.train_run("tiny_cnn", _data(image_folder), tmp_path / "run")
    assert not (tmp_path / "run").exists()
