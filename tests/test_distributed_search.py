"""`transferkit tune` as keras-tuner's distributed search: a chief and workers on 127.0.0.1.

In the whole-search tests (marked slow), each process is a real `transferkit tune` subprocess with
keras-tuner's environment variables, on a fresh port, with a timeout, and killed by process id in a
``finally`` (a chief left running would answer the next search on its port). The others check the
chief's watchdog, the heartbeat, the port and a worker without a chief in this process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras_tuner as kt
import pytest
from conftest import write_image_folder

from transferkit._distributed_search import (
    Distributed,
    SearchError,
    give_up_on_silent_workers,
    heartbeat,
    no_worker_left,
    serve,
    servicer_class,
)
from transferkit._errors import ConfigError
from transferkit._search_state import recover
from transferkit._tuning import search, search_space

TIMEOUT = 150  # seconds for a whole search; it takes about 30 on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tune(data: Path, run: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "transferkit.cli", "tune", str(data), "--backbone", "tiny_cnn", "--weights",
            "imagenet", "--image-size", "32", "--out", str(run), *options]


class Cluster:
    """Processes of one search; each one's output goes to a file (no pipe to fill up)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, tuner_id: str, command: list[str], name: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``tuner_id``; ``name`` (default: the tuner id) names its log and process here."""
        name = name or tuner_id
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(self.port), "TF_CPP_MIN_LOG_LEVEL": "3"}
        with open(self.folder / f"{name}.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def wait(self, tuner_id: str, deadline: float) -> int:
        return self.processes[tuner_id].wait(timeout=max(1.0, deadline - time.monotonic()))

    def output(self, tuner_id: str) -> str:
        return (self.folder / f"{tuner_id}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", per_class=8)


@pytest.mark.slow  # three `transferkit tune` processes: about 30 s on 2 busy cores
def test_a_chief_and_two_workers_run_the_search_and_extract_the_features_once(data, tmp_path):
    run = tmp_path / "run"
    command = _tune(data, run, "--max-trials", "6", "--epochs", "2")
    cluster = Cluster(tmp_path, _free_port())
    deadline = time.monotonic() + TIMEOUT
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            cluster.start(tuner_id, command)
        codes = {t: cluster.wait(t, deadline) for t in ("tuner0", "tuner1", "chief")}
    finally:
        cluster.stop()
    outputs = {t: cluster.output(t) for t in cluster.processes}
    assert codes == {"tuner0": 0, "tuner1": 0, "chief": 0}, outputs

    with open(run / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and len({row["trial"] for row in rows}) == 6
    assert all(float(row["seconds"]) > 0 for row in rows)  # each worker's per-trial record was found
    ran = {}
    for tuner_id in ("tuner0", "tuner1"):
        summary = re.search(r"Worker \S+ \(pid \d+\) done: ran (\d+) trial\(s\)(?: \(([\d, ]+)\))?", outputs[tuner_id])
        assert summary, outputs[tuner_id]
        ran[tuner_id] = set(summary[2].split(", ")) if summary[2] else set()
        assert {row["trial"] for row in rows if row["worker"] == tuner_id} == ran[tuner_id]
    assert ran["tuner0"] | ran["tuner1"] == {row["trial"] for row in rows} and not ran["tuner0"] & ran["tuner1"]

    # the training and validation features: extracted by one worker, loaded by the other and the chief
    extracted = [t for t in ran if "; extracted the features of 18 training + 6 validation images" in outputs[t]]
    loaded = [t for t in ran if "; loaded the features of 18 training + 6 validation images" in outputs[t]]
    assert len(extracted) == 1 and len(loaded) == 1, outputs
    assert "loaded 18 training + 6 validation images from cache" in outputs["chief"]
    assert len(list((run / "features").glob("*.features.npy"))) == 3  # + the chief's refit of all 24 images

    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    assert (run / "search_scores.png").is_file()
    assert not (run / "search" / "tiny_cnn" / "trial_seconds.json").exists()


@pytest.mark.slow  # two `transferkit tune` processes: about 20 s on 2 busy cores
def test_the_chief_gives_up_on_a_killed_worker_and_finishes_with_the_trials_that_completed(data, tmp_path):
    run = tmp_path / "run"
    project = run / "search" / "tiny_cnn"
    cluster = Cluster(tmp_path, _free_port())
    deadline = time.monotonic() + TIMEOUT
    try:
        cluster.start("chief", _tune(data, run, "--max-trials", "3", "--epochs", "1", "--worker-timeout", "3"))
        worker = cluster.start("tuner0", _tune(data, run, "--max-trials", "3", "--epochs", "1",
                                               "--worker-timeout", "3"))
        while not (project / "trial_1" / "trial.json").is_file():  # the chief handed out the second trial
            assert worker.poll() is None and time.monotonic() < deadline, cluster.output("tuner0")
            time.sleep(0.02)
        worker.kill()
        worker.wait(timeout=30)
        code = cluster.wait("chief", deadline)
    finally:
        cluster.stop()
    output = cluster.output("chief")
    assert code == 0, output
    assert re.search(r"gave up on worker tuner0: not heard from for \d+ s", output), output
    with open(run / "trials.csv") as f:
        trials = [row["trial"] for row in csv.DictReader(f)]
    assert trials[0] == "0"
    if "its trial 1 is marked failed" in output:  # killed mid-trial (else between its trials)
        assert trials == ["0"]
    assert (run / "model.keras").is_file()


def _worker_trials(output: str) -> list[str]:
    """The trials a worker says it ran, in its last line."""
    summary = re.search(r"Worker \S+ \(pid \d+\) done: ran (\d+) trial\(s\)(?: \(([\d, ]+)\))?", output)
    assert summary, output
    return summary[2].split(", ") if summary[2] else []


@pytest.mark.slow  # four `transferkit tune` processes, three at a time: about 40 s on 2 busy cores
def test_a_chief_killed_while_workers_run_trials_and_started_again_ends_with_every_trial_once(data, tmp_path):
    run = tmp_path / "run"
    oracle_file = run / "search" / "tiny_cnn" / "oracle.json"
    command = _tune(data, run, "--max-trials", "4", "--epochs", "3", "--worker-timeout", "30")
    cluster = Cluster(tmp_path, _free_port())
    deadline = time.monotonic() + TIMEOUT
    try:
        first = cluster.start("chief", command, name="chief-killed")
        for tuner_id in ("tuner0", "tuner1"):
            cluster.start(tuner_id, command)
        running: dict[str, str] = {}
        while len(running) < 2:  # both workers in a trial, as the chief last saved its state
            assert first.poll() is None and time.monotonic() < deadline, cluster.output("chief-killed")
            if oracle_file.is_file():  # written whole or not at all: never half a file to read
                state = json.loads(oracle_file.read_text())
                # (keras-tuner saves a trial's end before it drops the trial from ongoing_trials)
                running = {t: i for t, i in state["ongoing_trials"].items() if i not in state["end_order"]}
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # a worker that finishes its trial, or sends its heartbeat, finds no chief and says it waits
        while not any("does not answer; waiting up to 30 s" in cluster.output(t) for t in ("tuner0", "tuner1")):
            assert time.monotonic() < deadline, cluster.output("tuner0") + cluster.output("tuner1")
            time.sleep(0.05)
        cluster.start("chief", command)  # the same command, on the same port
        codes = {t: cluster.wait(t, deadline) for t in ("tuner0", "tuner1", "chief")}
    finally:
        cluster.stop()
    outputs = {t: cluster.output(t) for t in cluster.processes}
    assert codes == {"tuner0": 0, "tuner1": 0, "chief": 0}, outputs

    with open(run / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["trial"] for row in rows) == ["0", "1", "2", "3"]  # every trial, each once
    ran = {t: _worker_trials(outputs[t]) for t in ("tuner0", "tuner1")}
    assert sorted(ran["tuner0"] + ran["tuner1"]) == ["0", "1", "2", "3"], outputs  # none run twice
    assert all(row["worker"] in ("tuner0", "tuner1") and row["trial"] in ran[row["worker"]] for row in rows)
    in_flight = ", ".join(f"{trial} ({tuner_id})" for tuner_id, trial in sorted(running.items(),
                                                                                key=lambda item: item[1]))
    assert f"Resuming the search: trial(s) {in_flight} were running when the last chief stopped" in outputs["chief"]
    assert any(re.search(r"chief at \S+ answers again after \d+ s", outputs[t]) for t in ran), outputs
    assert (run / "model.keras").is_file()


def _oracle(tmp_path: Path, max_trials: int = 5) -> object:
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials,
                                           hyperparameters=search_space(), max_consecutive_failed_trials=None)
    oracle._set_project_dir(str(tmp_path), "project")
    return oracle


def test_watchdog_fails_the_trial_of_a_silent_worker_and_stops_after_three_failures(tmp_path):
    oracle = _oracle(tmp_path)
    silent, busy = oracle.create_trial("tuner0"), oracle.create_trial("tuner1")
    now = time.monotonic()
    heard = {"tuner0": now - 11, "tuner1": now}
    assert give_up_on_silent_workers(oracle, heard, 10) == ["tuner0"]
    assert oracle.trials[silent.trial_id].status == "FAILED" and "tuner0" in oracle.trials[silent.trial_id].message
    assert oracle.trials[busy.trial_id].status == "RUNNING" and not no_worker_left(oracle)

    heard["tuner1"] = now - 11
    assert give_up_on_silent_workers(oracle, heard, 10) == ["tuner1"]
    assert no_worker_left(oracle)  # the chief now ends with the trials that completed (none here)
    third = oracle.create_trial("tuner2")
    heard["tuner2"] = now - 11
    give_up_on_silent_workers(oracle, heard, 10)  # the third failure in a row: no more trials
    assert oracle.trials[third.trial_id].status == "FAILED"
    assert oracle.create_trial("tuner3").status == "STOPPED"


def test_a_worker_in_a_trial_is_heard_from_through_its_heartbeat(tmp_path):
    from keras_tuner.src import protos

    oracle = _oracle(tmp_path)
    trial = oracle.create_trial("tuner0")
    heard: dict[str, float] = {}
    servicer = servicer_class()(oracle, heard)

    class Client:  # the worker's side of the channel, straight into the chief's service
        def get_trial(self, trial_id: str) -> None:
            servicer.GetTrial(protos.get_service().GetTrialRequest(trial_id=trial_id), None)

    with heartbeat(Client(), trial.trial_id, every=0.02):
        time.sleep(0.2)
        assert time.monotonic() - heard["tuner0"] < 0.15  # a long trial stays clear of the watchdog
    time.sleep(0.05)  # a beat under way when the trial ended
    last = heard["tuner0"]
    time.sleep(0.1)
    assert heard["tuner0"] == last  # no heartbeat once the trial is over
    assert give_up_on_silent_workers(oracle, heard, 10) == []


def test_a_chief_started_again_on_a_finished_search_stops_without_waiting_for_workers(tmp_path):
    oracle = _oracle(tmp_path, max_trials=2)
    for tuner_id in ("tuner0", "tuner1"):
        trial = oracle.create_trial(tuner_id)
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    restarted = _oracle(tmp_path, max_trials=2)
    restarted.reload()  # the chief was killed after the last trial ended; its workers are gone
    recover(restarted)  # (keras-tuner alone queues the last trial to run again: it was saved as running)
    chief = threading.Thread(target=serve, args=(restarted, Distributed("chief", "127.0.0.1", _free_port()), 1.0),
                             daemon=True)
    chief.start()
    chief.join(timeout=10)
    assert not chief.is_alive()  # it would wait forever for workers that are gone
    assert sorted(restarted.end_order) == ["0", "1"] and not restarted._retry_queue


def test_a_chief_refuses_a_port_another_chief_holds():
    from concurrent import futures

    import grpc

    port = _free_port()
    leftover = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # gRPC's default: SO_REUSEPORT
    leftover.add_insecure_port(f"127.0.0.1:{port}")
    leftover.start()
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: the port is taken"):
            serve(object(), Distributed("chief", "127.0.0.1", port), 1.0)
    finally:
        leftover.stop(None)


def test_a_worker_without_a_chief_gives_up_after_the_worker_timeout(tmp_path, monkeypatch):
    import transferkit as tk

    data = tk.load_folder(write_image_folder(tmp_path / "data", per_class=4), image_size=32, seed=0)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(_free_port()))  # nobody listens there
    start = time.monotonic()
    with pytest.raises(SearchError, match="Worker tuner0: the chief at 127.0.0.1:.* did not answer"):
        search(data, "tiny_cnn", weights="imagenet", max_trials=2, epochs=1, directory=tmp_path / "s",
               worker_timeout=1.0)
    assert time.monotonic() - start < 30  # not keras-tuner's hour


@pytest.mark.parametrize(("env", "message"), [
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}, "KERASTUNER_TUNER_ID is not set"),
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_TUNER_ID": "chief"}, "KERASTUNER_ORACLE_PORT is not set"),
    ({"KERASTUNER_ORACLE_IP": "h", "KERASTUNER_ORACLE_PORT": "http", "KERASTUNER_TUNER_ID": "tuner0"},
     "Received: KERASTUNER_ORACLE_PORT='http'"),
])
def test_distributed_settings_are_checked(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Distributed.from_environment(env)
    assert Distributed.from_environment({}) is None
    worker = Distributed.from_environment({"KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000",
                                           "KERASTUNER_TUNER_ID": "tuner3"})
    assert worker is not None and worker.role == "worker" and worker.address == "10.0.0.1:8000"
