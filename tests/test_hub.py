"""TensorFlow Hub modules as Keras 3 backbones, with real SavedModels built in the tests."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_WEIGHTS, needs_shared, write_image_folder

import transferkit as tk
from transferkit._saving import RunMetadata, rebuild_model, saved_architecture
from transferkit.backbones import Preprocess, build_backbone, unregister_backbone
from transferkit.cli import main
from transferkit.hub import HubLayer, export_hub_module, hub_backbone, register_hub_backbone


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    """A Hub feature-vector module exported from the tiny CNN (it has BatchNorm)."""
    net = build_backbone(tk.get_backbone("tiny_cnn"), weights="imagenet")
    path = tmp_path_factory.mktemp("hub") / "tiny_feature_vector"
    export_hub_module(net, path, backbone="tiny_cnn")
    return path, net


def _reference(net):
    return keras.Sequential([keras.Input((32, 32, 3)), Preprocess("tf"), net, keras.layers.GlobalAveragePooling2D()])


def _learnable(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    colours = np.array([(220, 30, 30), (30, 200, 40), (30, 40, 220)], dtype=np.float32)
    x = np.clip(colours[y][:, None, None, :] + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype("float32")
    return x, y


def test_exported_module_loads_with_tensorflow_hub_and_matches_keras(tiny_module):
    hub = pytest.importorskip("tensorflow_hub")
    path, net = tiny_module
    module = hub.load(str(path))
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    expected = _reference(net)(x * 255.0).numpy()
    np.testing.assert_allclose(module(x).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(HubLayer(str(path))(x).numpy(), expected, atol=1e-5)
    assert len(module.trainable_variables) < len(module.variables)  # BatchNorm statistics are not trainable


def test_hub_spec_infers_input_and_feature_size(tiny_module):
    path, _ = tiny_module
    spec = hub_backbone(path)
    assert (spec.input_size, spec.feature_dim, spec.preprocessing) == (32, 64, "unit")
    assert tk.get_backbone(str(path)).feature_dim == 64  # a folder is a handle too


def test_variable_names_are_accepted_by_optimizers(tiny_module):
    layer = HubLayer(str(tiny_module[0]), trainable=True)
    assert layer.weights and all(":" not in w.name and "/" not in w.name for w in layer.weights)


def _hub_model(path):
    model = tk.build_model(str(path), num_outputs=3, weights="imagenet")
    return model, model.get_layer("backbone").get_layer("hub_module")


def test_frozen_module_stays_bit_identical_while_the_head_learns(tiny_module):
    model, hub_layer = _hub_model(tiny_module[0])
    before = [w.numpy().copy() for w in hub_layer.weights]
    x, y = _learnable()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0]
    for old, new in zip(before, hub_layer.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_trainable_module_fine_tunes_its_own_variables(tiny_module):
    model, hub_layer = _hub_model(tiny_module[0])
    tk.UnfreezeAll().apply(model, str(tiny_module[0]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    trainable = {w.name for w in hub_layer.trainable_weights}
    before = {w.name: w.numpy().copy() for w in hub_layer.weights}
    x, y = _learnable()
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0]
    for w in hub_layer.weights:
        changed = not np.array_equal(before[w.name], w.numpy())
        assert changed == (w.name in trainable), w.name  # statistics stay: BatchNorm in inference mode
    module_variable = hub_layer.module.trainable_variables[0]
    assert not np.array_equal(before[hub_layer.trainable_weights[0].name], module_variable.numpy())

    tk.UnfreezeAll(train_batchnorm=True).apply(model, str(tiny_module[0]))
    stats = {w.name: w.numpy().copy() for w in hub_layer.non_trainable_weights}
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert any(not np.array_equal(stats[w.name], w.numpy()) for w in hub_layer.non_trainable_weights)


def test_save_and_load_with_identical_predictions(tiny_module, tmp_path):
    model, _ = _hub_model(tiny_module[0])
    tk.UnfreezeAll().apply(model, str(tiny_module[0]))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = _learnable(16)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "hub.keras")
    with pytest.raises(tk.WeightsUnavailableError, match=r"FineTuner.load\(run_dir\).*safe_mode=False"):
        keras.saving.load_model(tmp_path / "hub.keras")  # a bare .keras file names a SavedModel to run
    loaded = keras.saving.load_model(tmp_path / "hub.keras", safe_mode=False)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.fixture
def registered_tiny(tiny_module):
    """``hub:tiny`` in the registry for one test, and gone afterwards."""
    spec = register_hub_backbone("tiny", tiny_module[0], overwrite=True)
    yield spec
    unregister_backbone(spec.name)
    assert spec.name not in tk.list_backbones(family="hub")  # nothing left for the tests after this one


def test_finetuner_with_a_registered_hub_backbone(registered_tiny, tiny_module, tmp_path):
    assert registered_tiny.handle == str(tiny_module[0]) and registered_tiny.family == "hub"
    data = tk.load_folder(write_image_folder(tmp_path / "data", per_class=8), image_size=32, batch_size=8)
    tuner = tk.FineTuner("hub:tiny", weights="imagenet", seed=0,
                         head_phase=tk.Phase(epochs=4, learning_rate=1e-2, policy=tk.FreezeAll()),
                         fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-4, policy=tk.UnfreezeTop(2)))
    tuner.fit(data, verbose=0)  # UnfreezeTop(2) on a one-block module unfreezes the module
    tuner.save(tmp_path / "run")
    loaded = tk.FineTuner.load(tmp_path / "run")
    assert loaded.settings.spec is registered_tiny
    paths = list(data.validation_files.paths)
    np.testing.assert_array_equal(tuner.predict(paths).probabilities, loaded.predict(paths).probabilities)


@dataclass(frozen=True)
class HubRun:
    run: Path
    module: Path
    data: Path
    paths: list[str]
    probabilities: np.ndarray
    module_values: list[np.ndarray]


@pytest.fixture(scope="module")
def hub_run(tiny_module, tmp_path_factory):
    """A run trained on a Hub module given as a folder (not registered), the module itself fine-tuned."""
    root = tmp_path_factory.mktemp("hub_run")
    module = root / "module"
    shutil.copytree(tiny_module[0], module)
    data = write_image_folder(root / "data", per_class=8)
    tuner = tk.FineTuner(str(module), weights="imagenet", seed=0, keep_best=False, refit=False,
                         head_phase=tk.Phase(epochs=2, learning_rate=1e-2, policy=tk.FreezeAll()),
                         fine_tune_phase=tk.Phase(epochs=1, learning_rate=1e-3, policy=tk.UnfreezeAll()))
    tuner.fit(tk.load_folder(data, image_size=32, batch_size=8), verbose=0)
    tuner.save(root / "run")
    paths = sorted(str(p) for p in data.rglob("*") if p.is_file())
    hub_layer = tuner.model.get_layer("backbone").get_layer("hub_module")
    return HubRun(root / "run", module, data, paths, tuner.predict(paths).probabilities,
                  [v.numpy() for v in hub_layer.module.variables])


def test_a_hub_run_loads_in_safe_mode_with_identical_predictions(hub_run, monkeypatch):
    def no_deserialising(*args, **kwargs):
        raise AssertionError("a Hub run was deserialised instead of rebuilt")

    monkeypatch.setattr(keras.saving, "load_model", no_deserialising)
    loaded = tk.FineTuner.load(hub_run.run)  # safe_mode=True, the default
    np.testing.assert_array_equal(loaded.predict(hub_run.paths).probabilities, hub_run.probabilities)
    hub_layer = loaded.model.get_layer("backbone").get_layer("hub_module")
    assert hub_layer.trainable  # as saved: the last phase trained the module
    pristine = tf.saved_model.load(str(hub_run.module)).variables
    assert len(hub_layer.module.variables) == len(hub_run.module_values) == len(pristine)
    for kept, loaded_value in zip(hub_run.module_values, hub_layer.module.variables):
        np.testing.assert_array_equal(loaded_value.numpy(), kept)  # the fine-tuned values come from the run
    assert any(not np.array_equal(kept, original.numpy()) for kept, original in zip(hub_run.module_values, pristine))


def test_the_command_evaluates_and_predicts_with_a_hub_run(hub_run, capsys):
    assert main(["evaluate", str(hub_run.run), str(hub_run.data), "--json"]) == 0
    assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion_matrix"])) == len(hub_run.paths)
    image = hub_run.paths[0]
    assert main(["predict", str(hub_run.run), image, "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    names = sorted(p.name for p in hub_run.data.iterdir())
    assert {t["class"]: t["probability"] for t in top} == pytest.approx(
        dict(zip(names, hub_run.probabilities[0].tolist())), abs=1e-6)


def test_a_hub_run_whose_module_moved_names_it_and_the_fix(hub_run, tmp_path, capsys):
    moved = tmp_path / "moved_module"
    hub_run.module.rename(moved)
    try:
        with pytest.raises(tk.DataError, match="register_hub_backbone") as caught:
            tk.FineTuner.load(hub_run.run)
        assert str(hub_run.module) in str(caught.value) and "put the module back" in str(caught.value)
        assert main(["predict", str(hub_run.run), hub_run.paths[0]]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(hub_run.module) in lines[0]

        name = json.loads((hub_run.run / "transferkit.json").read_text())["backbone"]
        register_hub_backbone(name, moved)  # the other fix: say where the module is now
        try:
            loaded = tk.FineTuner.load(hub_run.run)
            np.testing.assert_array_equal(loaded.predict(hub_run.paths).probabilities, hub_run.probabilities)
        finally:
            unregister_backbone(name)
    finally:
        moved.rename(hub_run.module)
    assert tk.FineTuner.load(hub_run.run).model is not None  # put back: loads again


def test_a_run_whose_model_file_does_not_match_its_metadata_is_refused(hub_run, tmp_path):
    run = tmp_path / "edited"
    shutil.copytree(hub_run.run, run)
    meta = json.loads((run / "transferkit.json").read_text())
    meta["head"]["hidden_units"] = [8]
    (run / "transferkit.json").write_text(json.dumps(meta))
    with pytest.raises(tk.DataError, match="does not hold the model transferkit builds"):
        tk.FineTuner.load(run)


def test_a_hub_run_on_a_url_that_cannot_be_fetched_says_so(hub_run, tmp_path):
    run = tmp_path / "from_url"
    shutil.copytree(hub_run.run, run)
    url = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    meta = json.loads((run / "transferkit.json").read_text())
    meta.update(backbone=f"hub:{url}", hub_handle=url)
    (run / "transferkit.json").write_text(json.dumps(meta))
    pytest.importorskip("tensorflow_hub")
    with pytest.raises(tk.DataError, match=r"could not be fetched.*TFHUB_CACHE_DIR.*register_hub_backbone") as caught:
        tk.FineTuner.load(run)
    assert url in str(caught.value) and "\n" not in str(caught.value)


def test_format_1_layout_is_rebuilt_from_weights_alone():
    """A format-1 Hub run is rebuilt flat, like the format-1 run kept in tests/data (tiny_cnn)."""
    run = Path(__file__).parent / "data" / "format1_run"
    meta = RunMetadata.from_json((run / "transferkit.json").read_text(), where="format1_run")
    model = rebuild_model(run / "model.keras", saved_architecture(run / "model.keras"), tk.get_backbone("tiny_cnn"),
                          meta)
    pixels = np.random.default_rng(7).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    expected = keras.saving.load_model(run / "model.keras", compile=False).predict(pixels, verbose=0)
    np.testing.assert_array_equal(model.predict(pixels, verbose=0), expected)


def test_a_relative_folder_is_recorded_as_an_absolute_handle(tiny_module, monkeypatch):
    monkeypatch.chdir(tiny_module[0].parent)
    spec = hub_backbone(tiny_module[0].name, input_size=32, feature_dim=64)
    assert os.path.isabs(spec.handle) and os.path.samefile(spec.handle, tiny_module[0])
    assert spec.name == f"hub:{tiny_module[0].name}"


def test_missing_handles_name_the_problem(tmp_path):
    with pytest.raises(tk.WeightsUnavailableError, match="saved_model.pb"):
        HubLayer(str(tmp_path))
    with pytest.raises(tk.WeightsUnavailableError, match="unpack it into a folder"):
        HubLayer("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")


@needs_shared
def test_real_mobilenet_exported_as_hub_module_gives_the_same_features(tmp_path):
    spec = tk.get_backbone("mobilenet")
    net = build_backbone(spec, weights=str(SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"),
                            image_size=128)
    export_hub_module(net, tmp_path / "mobilenet", backbone=spec)
    x = np.random.default_rng(0).uniform(0, 1, (2, 128, 128, 3)).astype("float32")
    expected = keras.layers.GlobalAveragePooling2D()(net(Preprocess("tf")(x * 255.0))).numpy()
    np.testing.assert_allclose(HubLayer(str(tmp_path / "mobilenet"))(x).numpy(), expected, atol=1e-4)


def test_plain_savedmodel_with_a_serving_signature(tmp_path):
    net = build_backbone(tk.get_backbone("tiny_cnn"), weights="imagenet")
    pooled = keras.Sequential([keras.Input((32, 32, 3)), net, keras.layers.GlobalAveragePooling2D()])
    pooled.export(str(tmp_path / "exported"), verbose=False)  # Keras' own SavedModel export, no Hub API
    layer = HubLayer(str(tmp_path / "exported"), signature="serving_default")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(layer(x).numpy(), pooled(x).numpy(), atol=1e-5)
    assert len(layer.weights) == len(pooled.weights)
    with pytest.raises(tk.ConfigError, match="no signature 'serve_me'"):
        HubLayer(str(tmp_path / "exported"), signature="serve_me")
