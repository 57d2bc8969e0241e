"""Freeze policies, BatchNorm handling, heads and saving."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import transferkit as tk


def backbone_of(model):
    return model.get_layer("backbone")  # build_model's documented name for the nested backbone


def _model(**kwargs):
    return tk.build_model("tiny_cnn", num_outputs=3, weights=None, **kwargs)


def _trainable(model):
    return {layer.name for layer in backbone_of(model).layers if layer.trainable and layer.weights}


def _xy(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), rng.integers(0, 3, n)


def test_new_model_has_frozen_backbone_and_raw_pixel_input():
    model = _model()
    assert model.input_shape == (None, 32, 32, 3)
    assert _trainable(model) == set()
    assert model.get_layer("preprocess").mode == "tf"
    assert [layer.name for layer in model.layers] == ["image", "preprocess", "backbone", "head"]
    assert model.get_layer("head").input_shape == (None, 4, 4, 64)  # the backbone's feature map


def test_policies_select_named_groups():
    model = _model()
    tk.UnfreezeTop(1).apply(model, "tiny_cnn")
    assert _trainable(model) == {"block3_conv", "top_conv"}  # BatchNorm stays frozen
    tk.UnfreezeTop(1, train_batchnorm=True).apply(model, "tiny_cnn")
    assert _trainable(model) == {"block3_conv", "block3_bn", "top_conv", "top_bn"}
    tk.UnfreezeFrom("block2_conv").apply(model, "tiny_cnn")
    assert _trainable(model) == {"block2_conv", "block3_conv", "top_conv"}
    summary = tk.UnfreezeAll().apply(model, "tiny_cnn")
    assert _trainable(model) == {"stem_conv", "block1_conv", "block2_conv", "block3_conv", "top_conv"}
    assert 0 < summary.trainable_params < summary.total_params
    assert tk.FreezeAll().apply(model, "tiny_cnn").trainable_params == 0


def test_policy_errors_name_the_problem():
    model = _model()
    with pytest.raises(tk.ConfigError, match="more blocks than the backbone has \\(3\\)"):
        tk.UnfreezeTop(7).apply(model, "tiny_cnn")
    with pytest.raises(tk.ConfigError, match="block2_conv"):
        tk.UnfreezeFrom("block2_cnv").apply(model, "tiny_cnn")
    with pytest.raises(tk.ConfigError):
        tk.UnfreezeTop(-1)


def test_clamp_meets_an_oversized_request_with_a_warning(caplog):
    model = _model()
    with caplog.at_level("WARNING", logger="transferkit"):
        clamped = tk.UnfreezeTop(7).apply(model, "tiny_cnn", clamp=True)  # what the FineTuner does
    assert "tiny_cnn has 3 block(s); unfreezing all of them instead of 7" in caplog.text
    assert clamped.policy == tk.UnfreezeTop(3)
    assert clamped.trainable_params == tk.UnfreezeTop(3).apply(model, "tiny_cnn").trainable_params
    assert tk.UnfreezeTop(2).apply(model, "tiny_cnn", clamp=True).policy == tk.UnfreezeTop(2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnlyConvs(tk.FreezePolicy):
    """A user's own policy, written against the documented select(backbone, groups)."""

    def select(self, backbone, groups):
        return {layer.name for layer in backbone.layers if layer.name.endswith("_conv")}


def test_a_custom_policy_applies_directly_and_in_the_finetuner(image_folder):
    model = _model()
    OnlyConvs().apply(model, "tiny_cnn")
    assert _trainable(model) == {"stem_conv", "block1_conv", "block2_conv", "block3_conv", "top_conv"}
    data = tk.load_folder(image_folder, image_size=32, batch_size=8)
    tuner = tk.FineTuner("tiny_cnn", weights=None, seed=0, head_phase=tk.Phase(epochs=1, learning_rate=1e-3,
                         policy=tk.FreezeAll()), fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-4,
                                                                            policy=OnlyConvs()))
    tuner.fit(data, verbose=0)
    assert len(tuner.history["fine_tune"]["loss"]) == 1
    assert _trainable(tuner.model) == {"stem_conv", "block1_conv", "block2_conv", "block3_conv", "top_conv"}


def _fit_once(model, x, y):
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_fine_tuning_keeps_batchnorm_statistics_unless_asked():
    x, y = _xy()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    tk.UnfreezeAll().apply(model, "tiny_cnn")
    bn = backbone_of(model).get_layer("block2_bn")
    conv = backbone_of(model).get_layer("block2_conv")
    mean, kernel = bn.moving_mean.numpy().copy(), conv.kernel.numpy().copy()
    _fit_once(model, x, y)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    assert not np.allclose(conv.kernel.numpy(), kernel)  # recompiled: the unfrozen conv did train

    tk.UnfreezeAll(train_batchnorm=True).apply(model, "tiny_cnn")
    _fit_once(model, x, y)
    assert not np.allclose(bn.moving_mean.numpy(), mean)


def test_frozen_layers_stay_bit_identical():
    x, y = _xy()
    model = _model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    tk.UnfreezeTop(1).apply(model, "tiny_cnn")
    stem = backbone_of(model).get_layer("stem_conv").kernel.numpy().copy()
    _fit_once(model, x, y)
    np.testing.assert_array_equal(backbone_of(model).get_layer("stem_conv").kernel.numpy(), stem)


@pytest.mark.parametrize(
    "head",
    [tk.Head(), tk.Head(task="multi_label", pooling="max"), tk.Head(task="regression", hidden_units=(8,), dropout=0.0),
     tk.Head(hidden_units=(16, 8), dropout=0.3, activation="gelu")],
)
def test_models_save_and_load_safely_with_identical_predictions(tmp_path, head):
    model = _model(head=head)
    tk.UnfreezeTop(1).apply(model, "tiny_cnn")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x, _ = _xy(4)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)
    assert _trainable(loaded) == _trainable(model)


def test_head_outputs_follow_the_task():
    x, _ = _xy(4)
    probs = _model().predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    multi = _model(head=tk.Head(task="multi_label")).predict(x, verbose=0)
    assert ((multi > 0) & (multi < 1)).all() and not np.allclose(multi.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"task": "binary"}, "task"), ({"pooling": "mean"}, "pooling"), ({"dropout": 1.5}, "dropout"),
     ({"hidden_units": (0,)}, "hidden_units")],
)
def test_head_rejects_bad_options(kwargs, match):
    with pytest.raises(tk.ConfigError, match=match):
        tk.Head(**kwargs)


def test_single_label_head_needs_two_classes():
    with pytest.raises(tk.ConfigError, match="at least 2 classes"):
        tk.build_model("tiny_cnn", num_outputs=1, weights=None)


def _linear_head(dim: int, classes: int, dropout: float) -> keras.Model:
    return tk.Head(dropout=dropout).build_model((2, 2, dim), classes, name="head")


def test_head_copies_train_independently_and_fold_into_one_dense_layer():
    from transferkit._members import fold_members, members_model, repeat_labels

    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, 2, 2, 6)).astype("float32")
    labels = rng.integers(0, 3, size=24)
    head = _linear_head(6, 3, dropout=0.0)
    keras.utils.set_random_seed(1)
    copies = members_model(head, 3)
    layer = copies.get_layer("head_members")
    start = layer.kernel.numpy().copy()
    assert not np.allclose(start[0], start[1])  # each copy starts from its own initialisation
    batches = tf.data.Dataset.from_tensor_slices((features, labels)).batch(8)
    copies.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    assert copies.predict(features[:4], verbose=0).shape == (4, 3)  # inference: the average
    assert copies(features[:4], training=True).shape == (12, 3)  # training: every copy on every image
    copies.fit(repeat_labels(batches, 3), epochs=3, verbose=0, shuffle=False)
    # each copy followed exactly the path it would have trained alone (Adam ignores the loss's 1/3)
    for j in range(3):
        alone = _linear_head(6, 3, dropout=0.0)
        alone.get_layer("head_output").set_weights([start[j], np.zeros(3, "float32")])
        alone.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
        alone.fit(batches, epochs=3, verbose=0, shuffle=False)
        np.testing.assert_allclose(alone.get_layer("head_output").kernel.numpy(), layer.kernel.numpy()[j],
                                   atol=2e-4)
    fold_members(copies, head)
    dense = head.get_layer("head_output")
    np.testing.assert_allclose(dense.kernel.numpy(), layer.kernel.numpy().mean(axis=0), atol=1e-7)
    # the folded Dense gives the copies' average logits, which is what the training model infers
    np.testing.assert_allclose(head.predict(features, verbose=0), copies.predict(features, verbose=0), atol=1e-6)


def test_head_copies_apply_to_linear_heads_only():
    from transferkit._members import members_model

    assert members_model(_linear_head(6, 3, dropout=0.2), 1) is None  # one head: nothing to average
    assert members_model(_linear_head(6, 3, dropout=0.2), 4) is not None
    hidden = tk.Head(hidden_units=(8,)).build_model((2, 2, 6), 3, name="head")
    assert members_model(hidden, 4) is None  # averaging the weights of two-layer heads is no ensemble
    with pytest.raises(tk.ConfigError, match="heads"):
        tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.FreezeAll(), heads=0)
