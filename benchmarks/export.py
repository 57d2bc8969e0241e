"""Every export format and quantization of a fine-tuned MobileNet v1 (or EfficientNet-Lite0), checked on
held-back images.

    .venv/bin/python benchmarks/export.py [--datasets stamps5 fashion] [--backbones mobilenet lite0]
                                          [--formats saved_model hub onnx tflite] [--json out.json]

For each dataset and backbone: split off held-back images (stamps5: a third of each class, 224 px;
Fashion-MNIST: 50 training images per class and 30 other test images per class, 96 px), train with the
command (`transferkit train TRAIN --backbone mobilenet --weights <real weights> --image-size S --out RUN`;
lite0: `--backbone ../shared/weights/efficientnet_lite0_timm`, the folder's own ImageNet weights),
then `transferkit.export.export_run` for SavedModel, Hub module, ONNX and TFLite float32, float16,
dynamic, int8 and int8-mixed (both calibrated on the training images), each verified on the
held-back images in its own runtime (``--formats`` picks some). Prints a Markdown table: file size, latency per image at
batch 1 (from the export report: median of 20) and at batch 32 (median of 5 batches) on this CPU,
in process, beside the Keras model's; accuracy of the export and of the Keras model on the
held-back images, top-1 agreement with the Keras model, and each TFLite file's size as a share of the
float32 TFLite file's (when float32 TFLite is among the formats).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import (
    BACKBONES,
    FASHION_NAMES,
    LITE0,
    SHARED,
    backbone_args,
    print_report,
    shared_missing,
    stratified_folds,
)
from PIL import Image

VARIANTS = (("saved_model", "none"), ("hub", "none"), ("onnx", "none"), ("tflite", "none"), ("tflite", "float16"),
            ("tflite", "dynamic"), ("tflite", "int8"), ("tflite", "int8-mixed"))
BATCH = 32


def _per_image_ms(call, batch: np.ndarray) -> float:
    """Median milliseconds per image of ``call(batch)`` over 5 calls, after one warm-up call."""
    from transferkit.export._verify import latency  # the reports' own timing, for figures side by side

    return latency(call, batch, runs=5, warmup=1) / len(batch)


def _keras_batch(run: Path, test: Path, size: int) -> tuple[np.ndarray, float]:
    """The first held-back images as one batch of raw pixels, and the Keras model's ms per image on it."""
    import tensorflow as tf

    import transferkit as tk
    from transferkit.data import load_image

    model = tk.FineTuner.load(run).model
    call = tf.function(lambda x: model(x, training=False))
    batch = np.stack([load_image(p, image_size=size) for p in sorted(test.glob("*/*"))[:BATCH]]).astype(np.float32)
    return batch, _per_image_ms(lambda x: call(tf.constant(x)).numpy(), batch)


def _batch_call(fmt: str, path: Path, batch: np.ndarray):
    """A function running a batch of raw pixels through the export in its own runtime, whole."""
    import tensorflow as tf

    if fmt == "saved_model":
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda x: signature(images=tf.constant(x))["probabilities"].numpy()
    if fmt == "hub":
        import tensorflow_hub as hub

        module = hub.load(str(path))
        return lambda x: module(tf.constant(x / 255.0, tf.float32)).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], list(batch.shape))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(given["index"], x.astype(given["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(taken["index"])

    return run


def _stamps(root: Path) -> tuple[Path, Path, int]:
    source = SHARED / "data" / "stamps5"
    files = sorted(p for p in source.glob("*/*") if p.is_file())
    labels = np.array([p.parent.name for p in files])
    held = set(stratified_folds(labels, 3, seed=0)[0].tolist())
    for i, path in enumerate(files):
        target = root / ("test" if i in held else "train") / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root / "train", root / "test", 224


def _fashion(root: Path) -> tuple[Path, Path, int]:
    folder = SHARED / "data" / "fashion-mnist"
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(0)
    for c, name in enumerate(FASHION_NAMES):
        chosen = rng.choice(np.flatnonzero(labels == c), 80, replace=False)
        for split, indices in (("train", chosen[:50]), ("test", chosen[50:])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i], "L").save(root / split / name / f"{i}.png")
    return root / "train", root / "test", 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["stamps5", "fashion"], choices=["stamps5", "fashion"])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet"], choices=list(BACKBONES))
    formats = list(dict.fromkeys(fmt for fmt, _ in VARIANTS))
    parser.add_argument("--formats", nargs="+", default=formats, choices=formats)
    parser.add_argument("--json")
    args = parser.parse_args()
    if shared_missing(*([LITE0] if "lite0" in args.backbones else [])):
        raise SystemExit(2)
    from transferkit.export import export_run

    rows = []
    for name, backbone in ((name, backbone) for name in args.datasets for backbone in args.backbones):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            train, test, size = (_stamps if name == "stamps5" else _fashion)(root)
            run = root / "run"
            subprocess.run([sys.executable, "-m", "transferkit.cli", "train", str(train), *backbone_args(backbone),
                            "--image-size", str(size), "--out", str(run)], check=True, capture_output=True)
            batch, keras_batch_ms = _keras_batch(run, test, size)
            float_bytes = None
            for fmt, quantize in (variant for variant in VARIANTS if variant[0] in args.formats):
                suffix = {"saved_model": "", "hub": "", "onnx": ".onnx", "tflite": ".tflite"}[fmt]
                out = root / "exports" / f"{fmt}_{quantize}{suffix}"
                out.parent.mkdir(exist_ok=True)
                report = export_run(run, out, format=fmt, quantize=quantize, check=test,
                                    calibration=train if quantize.startswith("int8") else None)
                batch_ms = _per_image_ms(_batch_call(fmt, out, batch), batch)
                if (fmt, quantize) == ("tflite", "none"):
                    float_bytes = report.size_bytes
                share = f"{report.size_bytes / float_bytes:.1%}" if fmt == "tflite" and float_bytes else ""
                rows.append({
                    "dataset": name, "backbone": backbone, "format": fmt, "quantize": quantize,
                    "size (MB)": f"{report.size_bytes / 1e6:.2f}", "share of float32 TFLite": share,
                    "ms/image (batch 1)": f"{report.latency_ms:.2f}",
                    "Keras ms/image": f"{report.keras_latency_ms:.2f}",
                    f"ms/image (batch {BATCH})": f"{batch_ms:.2f}",
                    f"Keras ms/image (batch {BATCH})": f"{keras_batch_ms:.2f}",
                    "accuracy": f"{report.accuracy:.3f}", "Keras accuracy": f"{report.keras_accuracy:.3f}",
                    "top-1 agreement": f"{report.agreement:.2%}", "images": report.images,
                })
                print(report.describe(), flush=True)
    print_report(rows, list(rows[0]), args.json, rows)


if __name__ == "__main__":
    main()
