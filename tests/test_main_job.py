"""The main job: shipped ImageNet weights and names, reports, the demo, config files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

import transferkit as tk
from transferkit.backbones import build_backbone
from transferkit.cli import main
from transferkit.data import resize_image
from transferkit.imagenet import decode_predictions, imagenet_class_names, imagenet_classifier


def test_imagenet_names_ship_with_the_package():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[0] == "tench"


_ONE_LINE_PER_PROCESS = """
import logging, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access is blocked in this test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
from transferkit.imagenet import imagenet_classifier
imagenet_classifier("mobilenet", weights="imagenet")
imagenet_classifier("mobilenet", weights="imagenet", image_size=128)
"""


def test_shipped_weights_are_announced_once_per_process(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", _ONE_LINE_PER_PROCESS], capture_output=True, text=True, env=env,
                         check=True, timeout=300)
    assert out.stdout.count("copy shipped with transferkit") == 1, out.stdout  # one attempt, not one per model


def test_shipped_mobilenet_classifies_real_photos_offline():
    skimage_data = pytest.importorskip("skimage.data")
    model = imagenet_classifier("mobilenet", weights="imagenet")  # sockets are blocked: the shipped copy
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    x = np.stack([resize_image(Image.fromarray(p), 224, mode="stretch") for p in photos]).astype("float32")
    top = decode_predictions(model.predict(x, verbose=0), top=1)
    cat, coffee = top[0][0], top[1][0]
    assert 281 <= cat[0] <= 285, cat
    assert coffee[0] in (967, 968, 504), coffee


def test_shipped_weights_serve_headless_backbones_at_other_sizes():
    net = build_backbone(tk.get_backbone("mobilenet"), weights="imagenet", image_size=96)
    random = build_backbone(tk.get_backbone("mobilenet"), weights=None, image_size=96)
    first = net.get_layer("conv1").kernel.numpy()
    assert net.output_shape == (None, 3, 3, 1024)
    assert not np.allclose(first, random.get_layer("conv1").kernel.numpy())
    assert np.abs(first).max() < 10  # float16 storage decoded to sensible float32 values


def test_train_writes_report_pngs_and_reads_a_config(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=8)
    config = tmp_path / "run.toml"
    config.write_text(f'data_dir = "{data}"\nbackbone = "tiny_cnn"\nweights = "imagenet"\nepochs = 2\n'
                      f'fine-tune-epochs = 1\nunfreeze_blocks = 1\nout = "{tmp_path / "run"}"\n')
    assert main(["train", "--config", str(config), "--epochs", "3"]) == 0
    run = tmp_path / "run"
    for name in ("training_curves.png", "confusion_matrix.png", "predictions.png"):
        with Image.open(run / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]["head"]["loss"]) == 3  # the flag beats the config file
    assert len(metrics["history"]["fine_tune"]["loss"]) == 1

    yaml_config = tmp_path / "bad.yaml"
    yaml_config.write_text("backbone: tiny_cnn\nepoch: 2\n")
    capsys.readouterr()
    assert main(["train", str(data), "--config", str(yaml_config)]) == 2
    assert "unknown option(s) ['epoch']" in capsys.readouterr().err


def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--per-class", "4", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning ImageNet weights:" in out and "trained from scratch:" in out
    scratch = float(out.split("trained from scratch:")[1].split()[0])
    assert 0.0 <= scratch <= 1.0
    assert str(tmp_path / "demo" / "run") in out
    assert len(list((tmp_path / "demo" / "data").glob("*/*.png"))) == 40
    loaded = tk.FineTuner.load(tmp_path / "demo" / "run")
    assert len(loaded.class_names) == 10
    assert main(["demo", "--out", str(tmp_path / "again"), "--per-class", "500"]) == 2
