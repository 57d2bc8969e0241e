"""Training under tf.distribute: a MirroredStrategy over two logical CPU devices trains as one device does.

Logical devices must be set up before TensorFlow starts, so the runs happen in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_image_folder

import transferkit as tk

SCRIPT = r"""
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access is blocked in tests")
socket.socket.connect = refuse
socket.create_connection = refuse
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import transferkit as tk

folder, out = sys.argv[1], sys.argv[2]
found = {}
for mode in (None, "mirrored"):
    # one batch an epoch (the shuffle order of a distributed dataset is its own) and no dropout (each
    # replica draws its own masks): then both runs compute the same gradients
    data = tk.load_folder(folder, image_size=32, batch_size=32, seed=0)
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, distribute=mode, refit=False,
                         head=tk.Head(dropout=0.0),
                         head_phase=tk.Phase(epochs=3, learning_rate=1e-2, policy=tk.FreezeAll()),
                         fine_tune_phase=tk.Phase(epochs=2, learning_rate=1e-3, policy=tk.UnfreezeTop(1)))
    history = tuner.fit(data, verbose=0)
    found[str(mode)] = {
        "replicas": tuner.strategy.num_replicas_in_sync if tuner.strategy else 1,
        "history": {phase: {k: [float(x) for x in v] for k, v in h.items()} for phase, h in history.items()},
        "accuracy": tuner.evaluate(data).accuracy,
    }
json.dump(found, open(out, "w"))
"""


def test_mirrored_on_two_devices_trains_as_one_device(tmp_path):
    folder = write_image_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "runs.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())
    single, mirrored = runs["None"], runs["mirrored"]
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert set(mirrored["history"]) == {"head", "fine_tune"}
    for phase in ("head", "fine_tune"):
        for key in ("loss", "val_loss"):  # the global batch is split, the gradient is the same
            np.testing.assert_allclose(mirrored["history"][phase][key], single["history"][phase][key], rtol=1e-4)
    assert mirrored["accuracy"] == pytest.approx(single["accuracy"])


def test_an_unknown_strategy_name_is_a_config_error():
    with pytest.raises(tk.ConfigError, match="Expected distribute to be one of 'mirrored'"):
        tk.FineTuner("tiny_cnn", weights=None, distribute="mirrorred")
    assert tk.FineTuner("tiny_cnn", weights=None).strategy is None


def test_train_command_distributes_and_evaluate_reads_the_run(tmp_path, capsys):
    from transferkit.cli import main

    folder = write_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    assert main(["train", str(folder), "--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "32",
                 "--epochs", "1", "--fine-tune-epochs", "0", "--refit", "never", "--distribute", "mirrored",
                 "--out", str(run)]) == 0
    assert "Distributed with MirroredStrategy over 1 replica(s)" in capsys.readouterr().out  # this machine's CPU
    assert main(["evaluate", str(run), str(folder), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
