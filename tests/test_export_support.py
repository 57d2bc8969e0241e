"""What the export tests share: a tiny trained run and its photos, and exports made once per session.

The run is trained once per test session, whichever export test file asks first, and each export
is made once; the test files only read them.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASS_COLORS, NetworkBlocked
from PIL import Image

import transferkit as tk
from transferkit.cli import main
from transferkit.data import load_image
from transferkit.export import ExportReport, export_run

SIZE = 32  # tiny_cnn's input size, which the run keeps
SHAPES = [(24, 40), (40, 24), (30, 30), (64, 48), (20, 36), (90, 60)]  # (height, width): pad mode really pads
CLASSES = ["blue", "green", "red"]

_made: dict[tuple[str, str], Any] = {}  # (session folder, what) → the run's folders or an export


def noisy(color: tuple[int, int, int], shape: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color, np.float64) + rng.normal(0, 25, (*shape, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_photos(root: Path, *, per_class: int, seed: int) -> Path:
    """root/<class>/ images whose colour gives the class away, in several aspect ratios (so that
    "pad" really pads), as JPEG and PNG; the first of each class is stored sideways with an EXIF
    orientation (6: rotate 90° clockwise) that turns it upright."""
    for c, (name, color) in enumerate(CLASS_COLORS.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = noisy(color, SHAPES[i % len(SHAPES)], seed=seed + 100 * c + i)
            if i == 0:
                exif = Image.Exif()
                exif[0x0112] = 6
                image.transpose(Image.Transpose.ROTATE_90).save(folder / f"{i}.jpg", exif=exif.tobytes(), quality=90)
            else:
                image.save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=90)
    return root


def trained_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny run (about 0.9 accuracy on the check images) and its data; trained offline, once."""
    key = (str(tmp_path_factory.getbasetemp()), "folders")
    if key in _made:
        return _made[key]
    root = tmp_path_factory.mktemp("export")
    data = write_photos(root / "data", per_class=8, seed=0)
    check = write_photos(root / "check", per_class=6, seed=5000)  # images the run never saw

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlocked("network access is blocked in tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setenv("KERAS_HOME", str(root / "keras_home"))
        assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "15",
                     "--learning-rate", "0.03", "--fine-tune-epochs", "0", "--refit", "never", "--seed", "0",
                     "--out", str(root / "run")]) == 0
    _made[key] = {"run": root / "run", "data": data, "check": check, "root": root}
    return _made[key]


def made_once(folders: dict[str, Path], name: str, out: Path, **options: Any) -> tuple[Path, ExportReport]:
    """``export_run(run, out, **options)``, made the first time a test asks for ``name``."""
    key = (str(folders["root"]), name)
    if key not in _made:
        _made[key] = out, export_run(folders["run"], out, **options)
    return _made[key]


def saved_model_export(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    return made_once(folders, "saved_model", folders["root"] / "serving" / "tiny" / "1", check=folders["check"])


def hub_export(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    return made_once(folders, "hub", folders["root"] / "hub" / "tiny_classifier", format="hub",
                     check=folders["check"])


def tflite_export(folders: dict[str, Path], quantize: str) -> tuple[Path, ExportReport]:
    """A TFLite variant in a folder of its own; int8 calibrated on 12 training images."""
    calibration = {"calibration": folders["data"], "calibration_images": 12} if quantize == "int8" else {}
    return made_once(folders, f"tflite_{quantize}", folders["root"] / "deploy" / quantize / f"tiny_{quantize}.tflite",
                     format="tflite", quantize=quantize, check=folders["check"], **calibration)


def onnx_export(folders: dict[str, Path]) -> tuple[Path, ExportReport]:
    needs_onnx()
    return made_once(folders, "onnx", folders["root"] / "deploy" / "onnx" / "tiny.onnx", format="onnx",
                     check=folders["check"])


def needs_onnx() -> None:
    for name in ("onnxruntime", "tf2onnx", "onnx"):
        pytest.importorskip(name, reason='ONNX export needs pip install "transferkit[onnx]"')


def check_pixels(check: Path) -> tuple[list[Path], np.ndarray]:
    """The check folder's files and their pixels as transferkit's loader reads them."""
    files = tk.scan_folder(check)
    paths = [Path(p) for p in files.paths]
    pixels = np.stack([load_image(p, image_size=SIZE) for p in paths]).astype(np.float32)
    return paths, pixels


def keras_outputs(run: Path, pixels: np.ndarray) -> np.ndarray:
    return tk.TrainedRun.load(run).model(pixels, training=False).numpy()
