"""Exports loaded back in their own runtimes predict as the run does, with the labels and image
settings written beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_COLORS
from PIL import Image
from test_export_support import (
    SHAPES,
    SIZE,
    check_pixels,
    hub_export,
    noisy,
    onnx_export,
    saved_model_export,
    tflite_export,
    trained_folders,
)

import transferkit as tk
from transferkit.export import export_format, load_exported

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_folders(tmp_path_factory)


def _new_images(folder: Path) -> Path:
    """Images no export was checked on: other sizes, JPEG, PNG and a PNG with transparent corners."""
    folder.mkdir()
    for c, (name, color) in enumerate(CLASS_COLORS.items()):
        image = noisy(color, SHAPES[(2 * c + 1) % len(SHAPES)], seed=9000 + c)
        image.save(folder / f"{name}.jpg", quality=90)
        rgba = np.array(image.convert("RGBA").resize((50, 34)))
        rgba[:6, :6, 3] = 0
        Image.fromarray(rgba, "RGBA").save(folder / f"{name}_alpha.png")
    return folder


EXPORTS = {
    "saved_model": saved_model_export,
    "hub": hub_export,
    "onnx": onnx_export,
    "tflite_none": lambda folders: tflite_export(folders, "none"),
    "tflite_int8": lambda folders: tflite_export(folders, "int8"),
}


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_an_exported_file_predicts_as_the_run_does(folders, tmp_path, kind):
    out, report = EXPORTS[kind](folders)
    exported = load_exported(out)
    assert exported.format == export_format(out) == report.format
    assert exported.class_names == ("blue", "green", "red") and exported.image_size == SIZE
    assert (exported.resize, exported.background) == ("pad", (255, 255, 255))
    run = tk.FineTuner.load(folders["run"])

    # on the check images: the outputs the report measured
    found, expected = exported.predict(folders["check"]), run.predict(folders["check"])
    assert found.paths == expected.paths and found.class_names == expected.class_names
    assert np.mean(found.indices == expected.indices) == pytest.approx(report.agreement)
    assert np.abs(found.probabilities - expected.probabilities).max() <= report.max_abs_diff + 1e-6
    _, pixels = check_pixels(folders["check"])
    np.testing.assert_allclose(exported.predict(pixels, batch_size=5).probabilities, found.probabilities, atol=1e-6)

    # on images none of them was checked on
    new = _new_images(tmp_path / "new")
    found, expected = exported.predict(new), run.predict(new)
    assert found.paths == expected.paths and len(found.paths) == 6
    difference = np.abs(found.probabilities - expected.probabilities).max()
    if report.quantize == "int8":  # about what its report says: 17 of 18 agree, probabilities within ~0.03
        assert np.mean(found.indices == expected.indices) >= 5 / 6 and difference < 0.1
    else:
        assert (found.indices == expected.indices).all() and difference < 1e-5


def test_an_export_needs_the_labels_and_image_settings_written_with_it(folders, tmp_path):
    out, _ = tflite_export(folders, "none")
    assert export_format(out) == "tflite" and export_format(folders["run"]) is None
    with pytest.raises(tk.DataError, match=r"is not an export.*It is a run folder: use FineTuner.load"):
        load_exported(folders["run"])
    with pytest.raises(tk.DataError, match="does not exist"):
        load_exported(tmp_path / "missing.onnx")
    with pytest.raises(tk.ConfigError, match=r"exported from a run with resize='pad'.*Received: resize='crop'"):
        load_exported(out, resize="crop")

    alone = tmp_path / "alone.tflite"  # copied without its report and labels.txt
    alone.write_bytes(out.read_bytes())
    with pytest.raises(tk.DataError, match=r"does not record how images are fitted.*Pass resize= and background="):
        load_exported(alone)
    settings = {"resize": "pad", "background": (255, 255, 255)}
    with pytest.raises(tk.DataError, match="There is no labels.txt beside"):
        load_exported(alone, **settings)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(tk.DataError, match="name 2 classes, but it gives 3 outputs"):
        load_exported(alone, **settings)
    (tmp_path / "labels.txt").write_text((out.parent / "labels.txt").read_text())
    assert load_exported(alone, **settings).predict(folders["check"]).labels == \
        load_exported(out).predict(folders["check"]).labels
