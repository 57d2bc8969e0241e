"""Data-parallel training over two processes (MultiWorkerMirroredStrategy, TF_CONFIG on localhost)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import write_image_folder

import transferkit as tk
from transferkit import _multiworker
from transferkit.cli import main


def test_keras_still_has_the_code_the_multi_worker_fix_replaces():
    # fails when a Keras upgrade changes the trainer code of keras#20585: check the fix against it
    _multiworker.check_keras()


def test_a_changed_keras_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setitem(_multiworker.FIXED_SOURCES, "reduce_per_replica", "0" * 16)
    with pytest.raises(tk.ConfigError, match=r"keras#20585.*changed the code it replaces \(reduce_per_replica\)"):
        _multiworker.check_keras()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_train_in_step_and_only_the_chief_writes_the_run(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    command = [sys.executable, "-m", "transferkit.cli", "train", str(folder), "--backbone", "tiny_cnn", "--weights",
               "imagenet", "--image-size", "32", "--epochs", "2", "--fine-tune-epochs", "1", "--refit", "never",
               "--out", str(run)]
    workers = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                      "index": index}}))
            workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True))
        printed = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:  # never leave a worker waiting for its peer
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [worker.returncode for worker in workers] == [0, 0], printed
    assert "this is worker 0; it writes" in printed[0] and "Saved the model" in printed[0]
    assert "this is worker 1; the chief writes the run" in printed[1] and "Done; the chief saved the run." in printed[1]
    assert "Distributed with MultiWorkerMirroredStrategy over 2 replica(s)" in printed[0]
    assert (run / "model.keras").is_file() and not (run / "checkpoint").exists()
    assert main(["evaluate", str(run), str(folder), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


def test_a_malformed_tf_config_is_one_error_line(tmp_path, monkeypatch, capsys):
    folder = write_image_folder(tmp_path / "data", per_class=3)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}}')
    assert main(["train", str(folder), "--backbone", "tiny_cnn", "--weights", "imagenet", "--out",
                 str(tmp_path / "run")]) == 2
    assert "TF_CONFIG is not a cluster description" in capsys.readouterr().err
