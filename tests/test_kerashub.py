"""KerasHub backbones: tiny random presets written by the tests, through the whole toolbox.

These machines cannot download presets, so each family is built small with random weights and
saved as a local preset folder (``save_to_preset``), which is exactly what a user copies onto an
offline machine. The real EfficientNet-Lite0 weights are tested in test_kerashub_real.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import transferkit as tk  # noqa: E402
from transferkit.backbones import Preprocess, build_backbone, layer_groups  # noqa: E402
from transferkit.backbones._preprocessing import affine_mode, builtin_preprocessor  # noqa: E402
from transferkit.cli import main  # noqa: E402

SIZE = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _converter(mean, std):
    return keras_hub.layers.ImageConverter(
        image_size=(SIZE, SIZE), scale=[1 / (255.0 * s) for s in std], offset=[-m / s for m, s in zip(mean, std)])


def _save(folder: Path, backbone, converter) -> str:
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """Three families saved as local presets: a ViT, a DINOv2 (ImageNet mean/std) and a ResNet."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("presets")
    vit = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=3, num_heads=2,
                                       hidden_dim=16, mlp_dim=32)
    dino = keras_hub.models.DINOV2Backbone(patch_size=8, num_layers=3, hidden_dim=16, num_heads=2,
                                           intermediate_dim=32, image_shape=(SIZE, SIZE, 3))
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    return {
        "vit": _save(root / "vit", vit, keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5,
                                                                         offset=-1.0)),
        "dinov2": _save(root / "dinov2", dino, _converter(IMAGENET_MEAN, IMAGENET_STD)),
        "resnet": _save(root / "resnet", resnet, _converter(CLIP_MEAN, CLIP_STD)),
    }


def _learnable(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    colours = np.array([(220, 30, 30), (30, 200, 40), (30, 40, 220)], dtype=np.float32)
    x = np.clip(colours[y][:, None, None, :] + rng.normal(0, 30, (n, SIZE, SIZE, 3)), 0, 255).astype("float32")
    return x, y


def test_a_preset_folder_is_a_backbone_with_the_preset_s_own_contract(presets):
    vit, dino, resnet = (tk.get_backbone(presets[k]) for k in ("vit", "dinov2", "resnet"))
    assert (vit.family, vit.source, vit.input_size, vit.preprocessing) == ("vit", "keras_hub", SIZE, "tf")
    assert vit.feature_dim == 16  # the class token
    assert (dino.family, dino.preprocessing, dino.feature_dim) == ("dinov2", "torch", 32)  # class token + patch mean
    assert resnet.family == "resnet" and resnet.feature_dim == 32
    assert resnet.preprocessing.startswith("affine:")  # CLIP's mean and std are no named contract
    assert vit.weight_sizes == (SIZE,) and resnet.weight_sizes is None  # learnt position embeddings fit one size
    assert tk.get_backbone(presets["vit"]) is vit  # resolved once per process
    assert Path(vit.name).is_absolute()  # a saved run must find the folder from anywhere


def test_each_family_pools_the_way_its_authors_probe(presets):
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    probes = {"vit": lambda t: t[:, 0], "dinov2": lambda t: np.concatenate([t[:, 0], t[:, 1:].mean(1)], 1)}
    for name, take in probes.items():
        spec = tk.get_backbone(presets[name])
        raw = keras_hub.models.Backbone.from_preset(presets[name])
        tokens = keras.ops.convert_to_numpy(raw(Preprocess(spec.preprocessing)(x)))
        pooled = keras.ops.convert_to_numpy(build_backbone(spec, weights="imagenet")(Preprocess(spec.preprocessing)(x)))
        np.testing.assert_allclose(pooled, take(tokens), rtol=1e-5, atol=1e-5)
    spec = tk.get_backbone(presets["resnet"])
    assert len(build_backbone(spec, weights="imagenet", image_size=64).output_shape) == 4  # the head averages it


def test_a_transformer_s_blocks_are_groups_and_unfreeze_top_trains_only_the_last(presets):
    spec = tk.get_backbone(presets["dinov2"])
    model = tk.build_model(spec, num_outputs=3, weights="imagenet")
    groups = layer_groups(model.get_layer("backbone"), spec.groups)
    assert [g for g in groups if g.startswith("block_")] == ["block_1", "block_2", "block_3"]
    summary = tk.UnfreezeTop(1).apply(model, spec)
    backbone_paths = {"/".join(w.path.split("/")[:2]) for w in model.get_layer("backbone").trainable_weights}
    assert backbone_paths == {"dinov2_backbone_encoder/layers_2", "dinov2_backbone_layernorm/gamma",
                              "dinov2_backbone_layernorm/beta"}
    assert 0 < summary.trainable_params < summary.total_params
    tk.FreezeAll().apply(model, spec)
    assert not model.get_layer("backbone").trainable_weights
    tk.UnfreezeFrom("network/dinov2_backbone_encoder/layers_1").apply(model, spec)
    trained = {w.path.split("/")[1] for w in model.get_layer("backbone").trainable_weights
               if w.path.startswith("dinov2_backbone_encoder/")}
    assert trained == {"layers_1", "layers_2"}


def test_batchnorm_stays_in_inference_mode_when_a_cnn_preset_fine_tunes(presets):
    spec = tk.get_backbone(presets["resnet"])
    model = tk.build_model(spec, num_outputs=3, weights="imagenet", image_size=SIZE)
    tk.UnfreezeTop(1).apply(model, spec)
    backbone = model.get_layer("backbone")
    trained = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert trained and all(layer.name.startswith("stack1_") for layer in trained)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in backbone.layers)


def test_affine_contract_is_bit_identical_in_built_in_layers():
    mode = affine_mode([1 / (255.0 * s) for s in CLIP_STD], [-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert mode.startswith("affine:")
    assert affine_mode(1 / 127.5, -1.0) == "tf" and affine_mode([1 / 255.0] * 3, 0.0) == "unit"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(Preprocess(mode)(pixels))
    plain = keras.ops.convert_to_numpy(builtin_preprocessor(mode, name="p")(pixels))
    assert np.array_equal(ours, plain)
    expected = (pixels[..., 0] / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    np.testing.assert_allclose(ours[..., 0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(tk.ConfigError, match="affine"):
        Preprocess("affine:1,2:3")


def test_weights_of_a_fixed_size_preset_at_another_size_are_refused_with_the_reason(presets):
    spec = tk.get_backbone(presets["vit"])
    with pytest.raises(tk.WeightsUnavailableError, match=f"image_size in \\[{SIZE}\\]"):
        build_backbone(spec, weights="imagenet", image_size=2 * SIZE)
    dino = build_backbone(tk.get_backbone(presets["dinov2"]), weights="imagenet", image_size=48)
    assert dino.output_shape == (None, 32)  # DINOv2 interpolates its position embeddings


def _tuner(preset):
    fast_head = dataclasses.replace(tk.HEAD_PHASE, epochs=3, learning_rate=1e-2)
    fast_tune = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=2, learning_rate=1e-3, policy=tk.UnfreezeTop(1))
    return tk.FineTuner(preset, weights="imagenet", head_phase=fast_head, fine_tune_phase=fast_tune, seed=0,
                        refit=False, image_size=SIZE)


_PLAIN_LOAD = """
import sys
sys.modules["transferkit"] = None  # this Python cannot import transferkit
import keras, keras_hub, numpy as np
model = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]))))
"""


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_a_transformer_preset_trains_saves_loads_evaluates_and_exports(presets, family, tmp_path):
    x, y = _learnable()
    data = tk.from_arrays(x, y, class_names=["red", "green", "blue"], batch_size=16, image_size=SIZE)
    tuner = _tuner(presets[family])
    tuner.fit(data)
    assert "fine_tune" in tuner.history  # both phases ran
    run = tmp_path / "run"
    tuner.save(run)
    loaded = tk.FineTuner.load(run)
    expected = tuner.predict(x[:8]).probabilities
    np.testing.assert_allclose(loaded.predict(x[:8]).probabilities, expected, rtol=1e-5, atol=1e-6)
    assert loaded.evaluate(data).accuracy == pytest.approx(tuner.evaluate(data).accuracy)

    np.save(tmp_path / "x.npy", x[:8])
    subprocess.run([sys.executable, "-c", _PLAIN_LOAD, str(run / "model.keras"), str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npy")], check=True, capture_output=True, timeout=300)
    raw = keras.ops.convert_to_numpy(loaded.model(x[:8]))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), raw, rtol=1e-5, atol=1e-6)

    from transferkit.export import export_run

    report = export_run(run, tmp_path / "saved_model", format="saved_model")
    assert report.agreement == 1.0


def test_the_command_trains_a_cnn_preset_and_exports_it_to_int8_tflite(presets, tmp_path, image_folder, capsys):
    run, preset = tmp_path / "run", tmp_path / "resnet_preset"
    shutil.copytree(presets["resnet"], preset)
    assert main(["train", str(image_folder), "--backbone", str(preset), "--out", str(run), "--image-size",
                 str(SIZE), "--epochs", "2", "--fine-tune-epochs", "1"]) == 0
    meta = json.loads((run / "transferkit.json").read_text())
    assert meta["backbone"] == str(preset) and meta["preprocessing"].startswith("affine:")
    assert main(["evaluate", str(run), str(image_folder)]) == 0
    out = tmp_path / "m.tflite"
    assert main(["export", str(run), "--format", "tflite", "--quantize", "int8", "--check", str(image_folder),
                 "--out", str(out)]) == 0
    assert out.is_file() and "top-1 agreement" in capsys.readouterr().out
    preset.rename(tmp_path / "moved")  # the run needs its preset folder for its layer groups: it says so
    with pytest.raises(tk.DataError, match="no longer there. Fix: put the preset folder"):
        tk.FineTuner.load(run)


def test_without_keras_hub_one_line_says_how_to_install(presets, tmp_path):
    code = ("import sys; sys.modules['keras_hub'] = None\n"
            "import transferkit as tk\n"
            "try:\n    tk.get_backbone(sys.argv[1])\n"
            "except tk.MissingDependencyError as e:\n    print('MISSING', e)\n")
    out = subprocess.run([sys.executable, "-c", code, presets["vit"]], capture_output=True, text=True, timeout=300)
    expected = 'KerasHub backbones need the keras-hub package. Fix: pip install "transferkit[keras-hub]"'
    assert f"MISSING {expected}" in out.stdout


def test_the_backbones_command_lists_keras_hub_presets(capsys):
    assert main(["backbones", "--filter", "dinov2"]) == 0
    out = capsys.readouterr().out
    assert "KerasHub presets" in out and "dinov2_small" in out and "download on first use" in out
