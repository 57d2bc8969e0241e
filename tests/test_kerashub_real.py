"""KerasHub backbones from timm-format folders: the real EfficientNet-Lite0 in ../shared, and a ResNet-18
with random weights written by the test itself, both converted on load by KerasHub's timm converter."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_WEIGHTS, STAMPS5, write_image_folder
from PIL import Image

import transferkit as tk
from transferkit.backbones import build_backbone, layer_groups
from transferkit.data import resize_image
from transferkit.imagenet import decode_predictions, imagenet_classifier

pytest.importorskip("keras_hub")
safetensors_numpy = pytest.importorskip("safetensors.numpy")  # KerasHub reads timm folders with it

LITE0 = SHARED_WEIGHTS / "efficientnet_lite0_timm"
needs_lite0 = pytest.mark.skipif(
    not (LITE0 / "config.json").is_file() or not (LITE0 / "model.safetensors").is_file(),
    reason="needs ../shared/weights/efficientnet_lite0_timm (real EfficientNet-Lite0 weights)",
)
needs_stamps5 = pytest.mark.skipif(not STAMPS5.is_dir(), reason="needs ../shared/data/stamps5 (real photos)")

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT, ESPRESSO = 285, 967


# --- the real EfficientNet-Lite0 folder -------------------------------------------------------------------------


@needs_lite0
def test_real_lite0_folder_is_a_keras_hub_backbone():
    spec = tk.get_backbone(str(LITE0))
    assert spec.source == "keras_hub" and spec.family == "efficientnet"
    assert (spec.input_size, spec.feature_dim, spec.preprocessing) == (224, 1280, "tf")  # config: mean = std = 0.5
    assert spec.name == os.path.abspath(LITE0)  # a folder is recorded as an absolute path (links kept)
    assert spec.classifier_constructor is not None


@needs_lite0
def test_real_lite0_classifies_scikit_image_photos():
    samples = pytest.importorskip("skimage.data")
    model = imagenet_classifier(str(LITE0))  # KerasHub's ImageClassifier with the timm head, on raw pixels
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    photos = [Image.fromarray(np.asarray(samples.chelsea(), dtype=np.uint8)).convert("RGB"),
              Image.fromarray(np.asarray(samples.coffee(), dtype=np.uint8)).convert("RGB")]
    x = np.stack([resize_image(photo, 224, mode="crop") for photo in photos]).astype("float32")
    probabilities = model.predict(x, verbose=0)
    # probabilities, as decode_predictions and every other imagenet_classifier give them, not logits
    assert probabilities.min() >= 0.0
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    cat, coffee = decode_predictions(probabilities, top=3)
    # measured: tiger cat 0.35, Egyptian cat 0.33, tabby 0.21; espresso 0.88, then consomme 0.03
    assert EGYPTIAN_CAT in [index for index, _, _ in cat], cat
    assert all(index in CATS for index, _, _ in cat), cat
    assert coffee[0][:2] == (ESPRESSO, "espresso") and coffee[0][2] > 0.6, coffee


@needs_lite0
@needs_stamps5
def test_real_lite0_transfers_to_stamps5(tmp_path):
    # 30% of the 167 photos held out (stratified, seeded); chance is 0.38 (the majority class, mammal).
    data = tk.load_folder(STAMPS5, image_size=160, validation_split=0.3, seed=0)
    assert data.num_validation == 49
    tuner = tk.FineTuner(
        str(LITE0), weights="imagenet", seed=0,
        refit=False, keep_best=False,  # the held-out images neither pick a phase nor join the training set
        head_phase=dataclasses.replace(tk.HEAD_PHASE, epochs=10),
        fine_tune_phase=dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=1, policy=tk.UnfreezeTop(1)),
    )
    tuner.fit(data, verbose=0)
    # measured on 2 CPU cores (seeds 0, 1, 2): 0.857, 0.878, 0.898 after the fine-tune phase
    accuracy = tuner.evaluate(data).accuracy
    assert accuracy >= 0.8, accuracy


# --- a timm ResNet-18 folder with random weights, written here ---------------------------------------------------

RESNET_CLASSES = 10
RESNET_SIZE = 64  # the input size its config declares


def _conv(rng: np.random.Generator, out: int, into: int, k: int) -> np.ndarray:
    """A torch-layout (out, in, kh, kw) kernel with He scaling, so activations stay finite through 18 layers."""
    return rng.normal(0, np.sqrt(2.0 / (into * k * k)), (out, into, k, k)).astype("float32")


def _norm(prefix: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": rng.uniform(0.5, 1.0, n).astype("float32"),
            f"{prefix}.bias": rng.normal(0, 0.1, n).astype("float32"),
            f"{prefix}.running_mean": rng.normal(0, 0.1, n).astype("float32"),
            f"{prefix}.running_var": rng.uniform(0.5, 2.0, n).astype("float32")}


def write_timm_resnet18(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``config.json`` + ``model.safetensors`` as timm saves ``resnet18`` (its key names and torch layouts)."""
    rng = np.random.default_rng(seed)
    weights = {"conv1.weight": _conv(rng, 64, 3, 7), **_norm("bn1", 64, rng)}
    into = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            weights[f"{prefix}.conv1.weight"] = _conv(rng, width, into if block == 0 else width, 3)
            weights.update(_norm(f"{prefix}.bn1", width, rng))
            weights[f"{prefix}.conv2.weight"] = _conv(rng, width, width, 3)
            weights.update(_norm(f"{prefix}.bn2", width, rng))
            if block == 0 and stage > 1:
                weights[f"{prefix}.downsample.0.weight"] = _conv(rng, width, into, 1)
                weights.update(_norm(f"{prefix}.downsample.1", width, rng))
        into = width
    weights["fc.weight"] = rng.normal(0, 0.01, (RESNET_CLASSES, 512)).astype("float32")
    weights["fc.bias"] = np.zeros(RESNET_CLASSES, "float32")
    folder.mkdir(parents=True)
    safetensors_numpy.save_file(weights, str(folder / "model.safetensors"))
    config = {"architecture": "resnet18", "num_classes": RESNET_CLASSES, "num_features": 512,
              "pretrained_cfg": {"input_size": [3, RESNET_SIZE, RESNET_SIZE], "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                 "num_classes": RESNET_CLASSES}}
    (folder / "config.json").write_text(json.dumps(config))
    return weights


@pytest.fixture(scope="module")
def timm_resnet18(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm") / "resnet18_random"
    return folder, write_timm_resnet18(folder)


def _keras_kernel(torch_kernel: np.ndarray) -> np.ndarray:
    return np.transpose(torch_kernel, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def test_random_timm_resnet18_folder_is_a_keras_hub_backbone(timm_resnet18, monkeypatch):
    folder, weights = timm_resnet18
    spec = tk.get_backbone(str(folder))
    assert spec.source == "keras_hub" and spec.family == "resnet" and spec.name == str(folder)
    assert (spec.input_size, spec.feature_dim) == (RESNET_SIZE, 512)
    assert spec.preprocessing == "torch"  # the config's ImageNet mean and std
    backbone_values = sum(v.size for k, v in weights.items() if not k.startswith("fc."))
    assert spec.params == backbone_values  # every tensor but the classifier's is a backbone weight
    monkeypatch.chdir(folder.parent)
    assert tk.get_backbone(folder.name).name == str(folder)  # a relative folder name resolves to the same

    net = build_backbone(spec, weights="imagenet", image_size=32)
    assert net.output_shape == (None, 1, 1, 512)  # a feature map, which the head averages
    np.testing.assert_array_equal(net.get_layer("conv1_conv").kernel.numpy(), _keras_kernel(weights["conv1.weight"]))
    np.testing.assert_array_equal(net.get_layer("stack3_block1_2_conv").kernel.numpy(),
                                  _keras_kernel(weights["layer4.1.conv2.weight"]))
    np.testing.assert_array_equal(net.get_layer("conv1_bn").moving_variance.numpy(), weights["bn1.running_var"])

    groups = layer_groups(net, spec.groups)
    assert sorted(layer for members in groups.values() for layer in members) == sorted(
        layer.name for layer in net.layers)  # every layer in exactly one group
    assert [g for g in groups if g.startswith("block_")] == ["block_1", "block_2", "block_3", "block_4"]


def test_random_timm_resnet18_fine_tunes_saves_and_loads(timm_resnet18, tmp_path):
    folder, weights = timm_resnet18
    data = tk.load_folder(write_image_folder(tmp_path / "data", per_class=12), image_size=32, batch_size=8,
                          validation_split=0.25, seed=0)
    tuner = tk.FineTuner(
        str(folder), weights="imagenet", seed=0, refit=False,
        head_phase=dataclasses.replace(tk.HEAD_PHASE, epochs=3, learning_rate=1e-2, solve=False),
        fine_tune_phase=dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=1, learning_rate=1e-3,
                                            policy=tk.UnfreezeTop(1)),
    )
    tuner.fit(data, verbose=0)
    head_loss = tuner.history["head"]["loss"]
    assert head_loss[-1] < head_loss[0], head_loss
    assert tuner.evaluate(data).accuracy >= 0.8  # the colour gives the class away; chance is 1/3

    backbone = tuner.model.get_layer("backbone")
    # the stem stayed frozen at the folder's weights; the last stage (UnfreezeTop(1)) fine-tuned
    np.testing.assert_array_equal(backbone.get_layer("conv1_conv").kernel.numpy(),
                                  _keras_kernel(weights["conv1.weight"]))
    assert not np.array_equal(backbone.get_layer("stack3_block1_2_conv").kernel.numpy(),
                              _keras_kernel(weights["layer4.1.conv2.weight"]))

    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.settings.spec.name == str(folder) and loaded.settings.spec.source == "keras_hub"
    paths = list(data.validation_files.paths)
    np.testing.assert_array_equal(tuner.predict(paths).probabilities, loaded.predict(paths).probabilities)
