"""Backbone registry: every keras.applications family builds, has the declared shape and groups."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from conftest import SHARED_WEIGHTS, needs_shared

import transferkit as tk
from transferkit import BackboneExistsError, UnknownBackboneError, WeightsUnavailableError
from transferkit.backbones import Preprocess, build_backbone, layer_groups, unregister_backbone

FAMILIES = {
    "convnext", "densenet", "efficientnet", "efficientnet_v2", "inception", "inception_resnet", "mobilenet",
    "mobilenet_v2", "mobilenet_v3", "nasnet", "resnet", "resnet_v2", "vgg", "xception",
}


def test_registry_covers_every_keras_applications_family():
    names = tk.list_backbones()
    assert len(names) >= 30
    assert {tk.get_backbone(n).family for n in names} == FAMILIES
    assert "tiny_cnn" not in names and "tiny_cnn" in tk.list_backbones(include_test=True)
    assert tk.list_backbones(family="vgg") == ["vgg16", "vgg19"]
    assert tk.list_backbones("resnet1") == ["resnet101", "resnet101_v2", "resnet152", "resnet152_v2"]
    assert tk.list_backbones("VGG") == ["vgg16", "vgg19"]  # matches the family too, any case


# Building every network takes minutes (ConvNeXt XLarge alone is 348M parameters): the small ones
# run in every test run, the rest under the `slow` marker (`pytest -m "not slow"` skips them; CI runs all).
QUICK = {"tiny_cnn", "mobilenet", "mobilenet_v2", "mobilenet_v3_small"}


@pytest.mark.parametrize(
    "name",
    [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in tk.list_backbones(include_test=True)],
)
def test_backbone_builds_with_declared_features_and_complete_groups(name):
    spec = tk.get_backbone(name)
    size = max(spec.min_size, 32 if spec.family != "nasnet" else 64)
    net = build_backbone(spec, weights=None, image_size=size)
    assert net.output_shape[-1] == spec.feature_dim
    assert net.count_params() == spec.params
    groups = layer_groups(net, spec.groups)
    grouped = [layer for members in groups.values() for layer in members]
    assert sorted(grouped) == sorted(layer.name for layer in net.layers)  # every layer exactly once
    blocks = [g for g in groups if g.startswith("block_")]
    assert len(blocks) >= 3
    assert blocks == [f"block_{i}" for i in range(1, len(blocks) + 1)]
    assert next(iter(groups)) == "stem"
    for block in blocks:
        assert any(net.get_layer(layer).weights for layer in groups[block]), f"{block} has no weights"
    # the last block feeds the output: groups run input → output
    assert groups[blocks[-1]][-1] in {layer.name for layer in net.layers[-15:]} | set(groups.get("top", []))


def test_unknown_backbone_lists_closest_names():
    with pytest.raises(UnknownBackboneError) as info:
        tk.get_backbone("mobilenetv2")
    assert "mobilenet_v2" in str(info.value)
    assert "transferkit backbones" in str(info.value)


def test_register_refuses_duplicates_unless_asked():
    spec = dataclasses.replace(tk.get_backbone("tiny_cnn"), name="my_tiny", source="user")
    try:
        tk.register_backbone(spec)
        with pytest.raises(BackboneExistsError, match="overwrite=True"):
            tk.register_backbone(spec)
        tk.register_backbone(dataclasses.replace(spec, input_size=40), overwrite=True)
        assert tk.get_backbone("my_tiny").input_size == 40
        assert "my_tiny" in tk.list_backbones()
    finally:
        unregister_backbone("my_tiny")
    assert "my_tiny" not in tk.list_backbones()


def test_spec_validates_preprocessing_and_size():
    with pytest.raises(tk.ConfigError, match="preprocessing"):
        dataclasses.replace(tk.get_backbone("tiny_cnn"), preprocessing="scale")
    with pytest.raises(tk.ConfigError, match="image_size >= 75"):
        build_backbone(tk.get_backbone("inception_v3"), weights=None, image_size=64)


@pytest.mark.parametrize(
    ("backbone", "module"),
    [("mobilenet", "mobilenet"), ("resnet50", "resnet"), ("densenet121", "densenet"), ("vgg16", "vgg16"),
     ("xception", "xception"), ("efficientnet_b0", "efficientnet"), ("convnext_tiny", "convnext")],
)
def test_preprocess_layer_matches_the_family_preprocess_input(backbone, module):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    got = Preprocess(tk.get_backbone(backbone).preprocessing)(pixels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_imagenet_weights_without_network_name_the_remedies():
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(tk.get_backbone("mobilenet_v2"), weights="imagenet", image_size=96)
    message = str(info.value)
    assert "mobilenet_v2" in message and "network" in message
    assert "weights=" in message and "models" in message  # local file and cache remedies
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_weights_path_that_does_not_exist(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="missing.weights.h5"):
        build_backbone(tk.get_backbone("tiny_cnn"), weights=str(tmp_path / "missing.weights.h5"))


def test_weights_file_of_another_network_is_refused(tmp_path):
    other = build_backbone(tk.get_backbone("mobilenet"), weights=None, image_size=32)
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="another network"):
        build_backbone(tk.get_backbone("tiny_cnn"), weights=str(path))


def test_local_weights_file_round_trip(tmp_path):
    spec = tk.get_backbone("tiny_cnn")
    source = build_backbone(spec, weights="imagenet")  # the test net's seeded "pretrained" weights
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(spec, weights=str(path))
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@needs_shared
def test_real_full_and_headless_weights_files_agree():
    spec = tk.get_backbone("mobilenet")
    notop = build_backbone(spec, weights=str(SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"),
                              image_size=160)
    full = build_backbone(spec, weights=str(SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet.weights.h5"),
                             image_size=160)
    random = build_backbone(spec, weights=None, image_size=160)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 160, 160, 3)).astype("float32")
    np.testing.assert_allclose(notop.predict(x, verbose=0), full.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(notop.predict(x, verbose=0), random.predict(x, verbose=0), atol=1e-3)
