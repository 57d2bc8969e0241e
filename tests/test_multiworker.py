"""Data-parallel training over two processes (MultiWorkerMirroredStrategy, TF_CONFIG on localhost).

The fault-injection tests start each worker as `transferkit train` with one addition, a hook that
sends that process SIGKILL right after it records a chosen epoch (every worker records its epochs,
the chief in RUN_DIR, the others in a scratch folder), then start both plain commands again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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


def test_tensorflow_still_has_the_coordination_settings_the_cluster_wait_uses():
    # _multiworker._coordinate sets these (TensorFlow's own, not public): fails when an upgrade drops them
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    fields = coordination_config_pb2.CoordinationServiceConfig.DESCRIPTOR.fields_by_name
    assert {"cluster_register_timeout_in_ms", "cluster_register_with_barrier", "coordinated_job_list"} <= set(fields)
    assert callable(context.Context.configure_coordination_service)
    assert isinstance(context.Context.coordination_service, property)


def test_the_lost_task_is_named_from_tensorflows_error_and_this_task_is_not():
    config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}
    import tensorflow as tf

    error = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: The following tasks are unhealthy "
                                                   "(stopped sending heartbeats):\n/job:worker/replica:0/task:2\n"
                                                   "reported from /job:worker/replica:0/task:0")
    message = str(_multiworker.lost_task(error, config))
    assert message.startswith("Lost worker 2 (c:3) during training; this worker 0 (a:1) stopped too.")
    unnamed = str(_multiworker.lost_task(tf.errors.UnavailableError(None, None, "socket closed"), config))
    assert unnamed.startswith("Lost another task of the cluster (worker 1 (b:2), worker 2 (c:3))")


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


# `transferkit <args>`, killed with SIGKILL after the epoch $KILL_AT ("<phase>:<n>") is recorded
HOOKED_CLI = textwrap.dedent("""
    import os, signal, sys
    import transferkit._checkpoint as checkpoint
    from transferkit.cli import main

    where = os.environ.get("KILL_AT", "")
    if where:
        phase, epoch = where.split(":")
        record = checkpoint.Checkpoint.record_epoch
        def record_then_die(self, stage, arrays):
            record(self, stage, arrays)
            if stage.name == phase and stage.epochs == int(epoch):
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.Checkpoint.record_epoch = record_then_die
    sys.exit(main(sys.argv[1:]))
""")

TRAIN = ["--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "32", "--batch-size", "8",
         "--epochs", "3", "--learning-rate", "0.01", "--fine-tune-epochs", "3", "--fine-tune-learning-rate", "0.001",
         "--unfreeze-blocks", "1", "--refit", "never", "--seed", "0"]


def _cluster(args: list[str], ports: list[int], *, kill_at: dict[int, str] | None = None, only: int | None = None,
             timeout: float = 240) -> list[tuple[int, str, str, float]]:
    """Run `transferkit <args>` as each worker of a cluster on ``ports`` (or only worker ``only``):
    (return code, stdout, stderr, seconds) of each."""
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    indexes = range(len(ports)) if only is None else [only]
    workers, started = [], time.monotonic()
    try:
        for index in indexes:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KILL_AT=(kill_at or {}).get(index, ""),
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            workers.append(subprocess.Popen([sys.executable, "-c", HOOKED_CLI, *args], env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        ended = []
        for worker in workers:
            out, err = worker.communicate(timeout=timeout)
            ended.append((worker.returncode, out, err, time.monotonic() - started))
        return ended
    finally:
        for worker in workers:  # never leave a worker waiting for its peer
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("multiworker") / "images", per_class=6)


def test_a_worker_killed_while_fine_tuning_stops_the_chief_and_both_resume_to_the_uninterrupted_run(photos, tmp_path,
                                                                                                     capsys):
    reference, run = tmp_path / "reference", tmp_path / "run"
    done = _cluster(["train", str(photos), *TRAIN, "--out", str(reference)], _free_ports(2))
    assert [code for code, *_ in done] == [0, 0], done

    ports = _free_ports(2)
    command = ["train", str(photos), *TRAIN, "--out", str(run)]
    (chief, out, err, seconds), (killed, *_) = _cluster(command, ports, kill_at={1: "fine_tune:2"})
    assert killed == -9
    # the survivor stops with one line that names the lost worker and says how to go on, in
    # seconds (TensorFlow's coordination service misses the dead worker's heartbeats)
    assert chief == 2, err[-2000:]
    assert _errors(err) == [
        f"error: Lost worker 1 (localhost:{ports[1]}) during training; this worker 0 (localhost:{ports[0]}) stopped "
        "too. Nothing recorded is lost: run the same command with the same TF_CONFIG on every task again to resume "
        "from the chief's checkpoint."]
    assert seconds < 120
    assert (run / "checkpoint" / "state.json").is_file() and not (run / "model.keras").exists()

    (chief, out, err, _), (worker, worker_out, worker_err, _) = _cluster(command, ports)
    assert (chief, worker) == (0, 0), (err[-2000:], worker_err[-2000:])
    assert "Resuming from fine_tune epoch 2 (checkpoint in" in out
    assert "Resuming from fine_tune epoch 2, as the chief does" in worker_out
    assert "Epoch 6/6" in worker_out and "Epoch 5/6" not in worker_out  # the worker resumed too
    assert not (run / "checkpoint").exists()
    assert main(["evaluate", str(run), str(photos), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    # deterministic here (tiny backbone, fixed seed, no augmentation, CPUs): the same weights and
    # history as the cluster never interrupted
    for mine, other in zip(tk.FineTuner.load(run).model.get_weights(), tk.FineTuner.load(reference).model.get_weights(),
                           strict=True):
        np.testing.assert_allclose(mine, other, rtol=0, atol=1e-6)
    history = json.loads((run / "transferkit.json").read_text())["history"]
    assert history == json.loads((reference / "transferkit.json").read_text())["history"]


def test_the_chief_killed_while_fine_tuning_stops_the_worker_with_one_line(photos, tmp_path):
    ports = _free_ports(2)
    (killed, *_), (worker, _, err, seconds) = _cluster(
        ["train", str(photos), *TRAIN, "--out", str(tmp_path / "run")], ports, kill_at={0: "fine_tune:1"})
    assert killed == -9
    assert worker == 2, err[-2000:]
    assert _errors(err) == [
        f"error: Lost worker 0 (localhost:{ports[0]}) during training; this worker 1 (localhost:{ports[1]}) stopped "
        "too. Nothing recorded is lost: run the same command with the same TF_CONFIG on every task again to resume "
        "from the chief's checkpoint."]
    assert seconds < 120
    assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()


def test_a_checkpoint_the_chief_refuses_stops_every_worker_with_the_chiefs_reason(photos, tmp_path):
    ports = _free_ports(2)
    run = tmp_path / "run"
    first = _cluster(["train", str(photos), *TRAIN, "--out", str(run)], ports, kill_at={1: "fine_tune:1"})
    assert [code for code, *_ in first] == [2, -9], first[0][2][-2000:]
    # started again with other settings: the chief refuses its checkpoint, and tells the worker,
    # which would otherwise wait for a chief that has stopped
    changed = [("0.02" if value == "0.01" else value) for value in TRAIN]
    started = time.monotonic()
    (chief, _, chief_err, _), (worker, _, worker_err, _) = _cluster(
        ["train", str(photos), *changed, "--out", str(run)], ports)
    assert time.monotonic() - started < 120
    assert chief == 2 and worker == 2, (chief_err[-2000:], worker_err[-2000:])
    [chief_line] = _errors(chief_err)
    [worker_line] = _errors(worker_err)
    assert "holds the checkpoint of a run with other settings or data" in chief_line and "--restart" in chief_line
    assert worker_line.startswith("error: The chief stopped: ") and chief_line.removeprefix("error: ") in worker_line
    assert (run / "checkpoint" / "state.json").is_file() and not (run / "model.keras").exists()  # nothing lost


@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_started_alone_waits_for_the_cluster_then_stops_with_one_line(photos, tmp_path, index):
    ports = _free_ports(2)
    other = 1 - index
    [(code, out, err, seconds)] = _cluster(["train", str(photos), *TRAIN, "--out", str(tmp_path / "run"),
                                            "--cluster-timeout", "4"], ports, only=index, timeout=120)
    assert code == 2, err[-2000:]
    assert (f"worker {index} (localhost:{ports[index]}) waits up to 4 s for the rest of the cluster: "
            f"worker {other} (localhost:{ports[other]})") in out
    assert _errors(err) == [
        f"error: This worker {index} (localhost:{ports[index]}) gave up after waiting 4 s for the rest of the "
        f"cluster: worker {other} (localhost:{ports[other]}). Start the same command with its TF_CONFIG on every "
        "task, within --cluster-timeout seconds of each other."]
    assert 4 <= seconds < 60
    assert not (tmp_path / "run").exists()
