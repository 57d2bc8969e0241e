"""Cached features: keys change with every input, cached training equals uncached training."""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import pytest
from conftest import write_image_folder

import transferkit as tk
from transferkit import FeatureCache
from transferkit._features import cache_key, files_digest, has_random_layers, split_at_boundary, weights_digest
from transferkit.backbones import GroupRule, Preprocess, build_backbone, unregister_backbone

HEAD = tk.Phase(epochs=3, learning_rate=1e-2, policy=tk.FreezeAll())
TUNE = tk.Phase(epochs=3, learning_rate=1e-3, policy=tk.UnfreezeTop(1), schedule="cosine", warmup_epochs=1)


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "data", per_class=10)


def _tuner(cache, **kwargs):
    return tk.FineTuner("tiny_cnn", weights="imagenet", seed=0, cache=cache, head=tk.Head(dropout=0.0),
                        head_phase=HEAD, fine_tune_phase=TUNE, **kwargs)


def _curves(folder, cache, step):
    data = tk.load_folder(folder, image_size=32, batch_size=8, seed=0)
    tuner = _tuner(cache)
    getattr(tuner, step)(data, verbose=0)
    return next(iter(tuner.history.values()))


@pytest.mark.parametrize("step", ["train_head", "fine_tune"])
def test_cached_training_follows_the_uncached_loss_curve(folder, step, caplog):
    with caplog.at_level(logging.INFO, logger="transferkit"):
        cached = _curves(folder, True, step)
    assert "trains on cached features" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        plain = _curves(folder, False, step)
    assert "cached features" not in caplog.text
    for metric in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(cached[metric], plain[metric], rtol=1e-4, atol=1e-5)


def test_fine_tune_caches_activations_at_the_freeze_boundary(folder, caplog):
    data = tk.load_folder(folder, image_size=32, batch_size=8, seed=0)
    tuner = _tuner(True)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        tuner.fine_tune(data, verbose=0)
    assert "freeze boundary, (8, 8, 16) per image" in caplog.text  # block2's output, not the final features
    assert tuner.settings.cache.misses == 2  # train and validation activations, computed once


def test_augmentation_and_checkpoints_turn_caching_off(folder, caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="transferkit"):
        data = tk.load_folder(folder, image_size=32, batch_size=8, augment=tk.Augment())
        _tuner(True).train_head(data, verbose=0)
        plain = tk.load_folder(folder, image_size=32, batch_size=8)
        checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))
        _tuner(True).train_head(plain, callbacks=[checkpoint], verbose=0)
    assert "cached features" not in caplog.text
    assert keras.saving.load_model(tmp_path / "m.keras").input_shape == (None, 32, 32, 3)  # the whole model


def test_cache_key_changes_with_every_input(folder):
    spec = tk.get_backbone("tiny_cnn")
    net = build_backbone(spec, weights="imagenet")
    files = tk.scan_folder(folder)
    base = dict(model=weights_digest(net), source=files_digest(files.paths, files.labels), size=32,
                resize="pad", background=(255, 255, 255), split="train")
    key = cache_key(**base)
    assert cache_key(**base) == key
    other_weights = build_backbone(spec, weights=None)
    assert cache_key(**{**base, "model": weights_digest(other_weights)}) != key
    bigger = build_backbone(spec, weights="imagenet", image_size=40)
    assert weights_digest(bigger) != weights_digest(net)  # input size is part of the architecture
    preprocess = keras.Sequential([keras.Input((32, 32, 3)), Preprocess("unit"), net])
    assert weights_digest(preprocess) != weights_digest(keras.Sequential([keras.Input((32, 32, 3)),
                                                                          Preprocess("tf"), net]))
    for change in ({"size": 40}, {"resize": "crop"}, {"background": (0, 0, 0)}, {"split": "validation"}):
        assert cache_key(**{**base, **change}) != key
    touched = files.paths[0]
    os.utime(touched, ns=(1, 1))
    assert files_digest(files.paths, files.labels) != base["source"]  # modification time
    relabelled = files.labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 3
    assert files_digest(files.paths, relabelled) != files_digest(files.paths, files.labels)
    assert files_digest(files.paths[1:], files.labels[1:]) != files_digest(files.paths, files.labels)


def test_disk_cache_is_reused_and_big_arrays_are_memory_mapped(folder, tmp_path):
    data = tk.load_folder(folder, image_size=32, batch_size=8, seed=0)
    first = _tuner(FeatureCache(tmp_path / "cache"))
    first.train_head(data, verbose=0)
    assert first.settings.cache.misses == 2 and len(list((tmp_path / "cache").glob("*.features.npy"))) == 2
    second = _tuner(FeatureCache(tmp_path / "cache"))
    second.train_head(data, verbose=0)
    assert (second.settings.cache.hits, second.settings.cache.misses) == (2, 0)
    np.testing.assert_allclose(first.history["head"]["loss"], second.history["head"]["loss"], rtol=1e-5)

    tiny_limit = _tuner(FeatureCache(memory_limit=1))  # anything bigger than one byte spills to disk
    tiny_limit.train_head(data, verbose=0)
    stored = [tiny_limit.settings.cache.get(key)[0] for key in tiny_limit.settings.cache.entries()]
    assert len(stored) == 2 and all(isinstance(f, np.memmap) for f in stored)  # nothing held in memory
    np.testing.assert_allclose(tiny_limit.history["head"]["loss"], first.history["head"]["loss"], rtol=1e-5)
    assert not list(tmp_path.glob("**/*.partial.npy"))


def test_boundary_split_refuses_a_cut_crossed_by_two_tensors():
    inputs = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    query = keras.layers.Reshape((16, 4), name="query")(a)
    value = keras.layers.Reshape((16, 4), name="value")(b)
    mixed = keras.layers.MultiHeadAttention(num_heads=1, key_dim=4, name="mix")(query, value)
    out = keras.layers.Dense(2, name="out")(mixed)
    net = keras.Model(inputs, out)
    for layer in net.layers:
        layer.trainable = layer.name in ("mix", "out")
    assert split_at_boundary(net) is None  # the trainable part needs both `query` and `value`
    for layer in net.layers:
        layer.trainable = layer.name in ("b", "mix", "out")
    bottom, top = split_at_boundary(net)  # now only `a` crosses
    sample = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(top(bottom(sample)).numpy(), net(sample).numpy(), atol=1e-5)
    for layer in net.layers:
        layer.trainable = False
    assert split_at_boundary(net) is None  # nothing trains: that is the head phase's cache


def _tiny_dropout_cnn(*, input_shape, weights):
    """A tiny backbone with spatial dropout inside its first block, as EfficientNet has stochastic depth."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    for block in (1, 2, 3):
        x = keras.layers.Conv2D(4 * block, 3, strides=2, padding="same", name=f"block{block}_conv")(x)
        if block == 1:
            x = keras.layers.SpatialDropout2D(0.2, name="block1_drop")(x)
    return keras.Model(inputs, x, name="tiny_dropout")


def test_phase_with_random_layers_below_the_boundary_is_not_cached(folder, caplog):
    spec = dataclasses.replace(tk.get_backbone("efficientnet_b0"), name="effnet_probe")
    model = tk.build_model(spec, num_outputs=3, weights=None, image_size=32)
    assert has_random_layers(model.get_layer("backbone"))  # stochastic-depth dropout inside the blocks

    spec = dataclasses.replace(tk.get_backbone("tiny_cnn"), name="tiny_dropout", constructor=_tiny_dropout_cnn,
                               feature_dim=12, params=None, groups=GroupRule(blocks=(r"^(block\d+)_",), stem=r"^stem_"))
    tk.register_backbone(spec, overwrite=True)
    try:
        data = tk.load_folder(folder, image_size=32, batch_size=8, seed=0)
        tuner = tk.FineTuner("tiny_dropout", weights=None, seed=0, head_phase=HEAD, fine_tune_phase=TUNE)
        with caplog.at_level(logging.INFO, logger="transferkit"):
            tuner.fit(data, verbose=0)
        assert "cached features" not in caplog.text  # neither phase: the dropout lies below both cuts
        assert tuner.settings.cache.misses == 0 and tuner.settings.cache.entries() == []
        assert len(tuner.history["fine_tune"]["loss"]) == TUNE.epochs
    finally:
        unregister_backbone("tiny_dropout")


def test_k_augmented_views_are_cached_when_asked(folder, caplog):
    data = tk.load_folder(folder, image_size=32, batch_size=8, augment=tk.Augment(), seed=0)
    tuner = _tuner(True, augment_views=3)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        tuner.train_head(data, verbose=0)
    assert "3 augmented views per image" in caplog.text
    stored = [tuner.settings.cache.get(key)[0] for key in tuner.settings.cache.entries()]
    assert sorted(len(f) for f in stored) == [data.num_validation, 3 * data.num_train]
    views = max(stored, key=len).reshape(3, data.num_train, -1)
    assert not np.allclose(views[0], views[1])  # different augmentations, not three copies
    with pytest.raises(tk.ConfigError, match="augment_views"):
        _tuner(True, augment_views=-1)
